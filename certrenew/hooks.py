"""Operators' hooks: their commands, run around a run with work and after each certificate HAProxy serves.

A hook runs without a shell (its command split like a shell would; an operator who
needs one writes `sh -c '...'`), with stdin closed, in its own process group so that a
timeout kills whatever it started, and with its output captured to a temporary file
so a chatty hook cannot fill memory. A hook never undoes anything: a certificate HAProxy
already serves stays served whatever its deploy hook does, and the failure is reported
as one line that names the hook.
"""

import datetime
import logging
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from certrenew.errors import UsageError
from certrenew.haproxy import missing_program, split_command

log = logging.getLogger(__name__)

OUTPUT_LIMIT = 4096
OUTPUT_LINES = 20
"""How much of a hook's output (its end: bytes, then lines) is logged; its last line ends a failure's line."""
KILL_WAIT = 5.0
"""Seconds to wait for a killed hook to be reaped."""


@dataclass(frozen=True)
class Served:
    """A certificate HAProxy serves since this run: what a deploy hook is told about it."""

    name: str
    action: str
    """"issued", "renewed" or "installed" (one a previous run issued)."""
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


def run_command(argv: list[str], timeout: float,
                environment: Mapping[str, str] | None = None) -> tuple[int | None, list[str]]:
    """Run an operator's command as the module doc says: (its exit status, None if killed at the timeout;
    the last lines it wrote). OSError if it cannot start.

    Its output goes to a file, not a pipe, and the wait is for the command itself: a program
    it left running in a session of its own (ssh's ControlPersist, a daemon) may keep its
    output open for ever, and a pipe would be read until that ends.
    """
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(environment or {})}, start_new_session=True)
        try:
            status = process.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            status = None
        finally:
            if process.poll() is None:  # interrupted (a signal), not timed out: leave nothing behind
                _kill_group(process)
        return status, _tail(output)


def _failed(line: str) -> str:
    """Log a hook's failure where the operator looks (it never stops the run's other work) and return it."""
    log.warning("%s", line)
    return line


def run_deploy(command: str | None, served: Iterable[Served], timeout: float) -> list[str]:
    """Run the deploy hook once for each certificate, in order; return a line for each that failed."""
    failures = (run_hook(f"deploy hook for {item.name}", command, timeout, item.environment())
                for item in served)
    return [failure for failure in failures if failure]


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the hook and everything it started (its own session, hence its own process group)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        process.wait(KILL_WAIT)
    except subprocess.TimeoutExpired:
        log.warning("hook process %d did not go away after SIGKILL", process.pid)


def _tail(output) -> list[str]:
    """The last non-blank lines of a hook's output, within its last OUTPUT_LIMIT bytes."""
    size = output.seek(0, os.SEEK_END)
    output.seek(max(0, size - OUTPUT_LIMIT))
    text = output.read().decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[1:] if size > OUTPUT_LIMIT else lines)[-OUTPUT_LINES:]  # the first may be cut mid-line
