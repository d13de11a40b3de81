"""Operators' hooks: their commands, run around a run with work and after each certificate HAProxy serves.

A hook runs as every operator's command does (see `command`: no shell, stdin closed,
its own process group killed at the timeout, output to a file). A hook never undoes anything: a certificate HAProxy
already serves stays served whatever its deploy hook does, and the failure is reported
as one line that names the hook.
"""

import datetime
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from certrenew.errors import UsageError
from certrenew.system.command import missing_program, run_command, split_command

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Served:
    """A certificate HAProxy serves since this run: what a deploy hook is told about it."""

    name: str
    action: str
    """"issued", "renewed" or "installed" (one a previous run issued): a `policy.Action`."""
    domains: tuple[str, ...]
    bundle: Path
    serial: str
    not_after: datetime.datetime

    def environment(self) -> dict[str, str]:
        return {
            "CERTRENEW_NAME": self.name,
            "CERTRENEW_DOMAINS": " ".join(self.domains),
            "CERTRENEW_BUNDLE": str(self.bundle),
            "CERTRENEW_SERIAL": self.serial,
            "CERTRENEW_NOT_AFTER": self.not_after.isoformat(),
            "CERTRENEW_ACTION": self.action,
        }


def check_executable(role: str, command: str | None) -> None:
    """Refuse, before a run touches anything, a hook whose program is missing or not executable."""
    problem = command and missing_program(command, f"the {role}")
    if problem:
        raise UsageError(f"{problem} (set --{role.replace(' ', '-')})")


def run_hook(role: str, command: str | None, timeout: float,
             environment: Mapping[str, str] | None = None) -> str | None:
    """Run one hook; return None if it succeeded, else the one line (also logged) that says what went wrong.

    `role` names it in every line ("pre-hook", "post-hook", "deploy hook for NAME").
    """
    if command is None:
        return None
    argv = split_command(command)
    log.debug("running the %s: %s", role, command)
    try:
        status, said = run_command(argv, timeout, environment)
    except OSError as error:
        return _failed(f"{role} {command!r} could not start: {error.strerror}: {argv[0]}")
    for line in said:
        log.info("%s: %s", role, line)
    if status is None:
        return _failed(f"{role} {command!r} did not finish within {timeout:g} s and was killed")
    if status != 0:
        what = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
        return _failed(f"{role} {command!r} {what}" + (f": {said[-1]}" if said else ""))
    return None


def _failed(line: str) -> str:
    """Log a hook's failure where the operator looks (it never stops the run's other work) and return it."""
    log.warning("%s", line)
    return line


def run_deploy(command: str | None, served: Iterable[Served], timeout: float) -> list[str]:
    """Run the deploy hook once for each certificate, in order; return a line for each that failed."""
    failures = (run_hook(f"deploy hook for {item.name}", command, timeout, item.environment())
                for item in served)
    return [failure for failure in failures if failure]
