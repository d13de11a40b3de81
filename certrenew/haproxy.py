"""Talking to HAProxy as a program: check its configuration, run the reload command.

The Runtime API, which changes a running HAProxy without a reload, is in `runtime_api`.
"""

import logging
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from certrenew.errors import CertrenewError

log = logging.getLogger(__name__)

RELOAD_TIMEOUT = 120
CHECK_TIMEOUT = 60


def split_command(command: str) -> list[str]:
    """A command (the reload command, a hook) as argv, split like a shell would (it runs without one);
    ValueError if it cannot be.

    An operator who needs a shell writes one: `sh -c '...'`.
    """
    argv = shlex.split(command)  # ValueError on an unbalanced quote
    if not argv:
        raise ValueError("the command is empty")
    return argv


def missing_program(command: str, what: str = "the reload command") -> str | None:
    """Why `what` (the reload command, a hook) cannot run (its program is not found or not executable), or None."""
    program = split_command(command)[0]
    if shutil.which(program) is None:
        return f"{what}'s program {program!r} is not found on PATH or not executable"
    return None


def reload(command: str) -> None:
    """Run the reload command; fail on non-zero exit."""
    argv = split_command(command)
    log.debug("reloading HAProxy: %s", command)
    result = _run(argv, RELOAD_TIMEOUT, f"reload command {command!r}",
                  f"reload command not found: {argv[0]!r} (set --reload-command)")
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip().splitlines()
        said = f": {output[-1]}" if output else ""
        raise CertrenewError(f"reload command {command!r} failed with exit status {result.returncode}{said}")


class CheckFailed(CertrenewError):
    """`haproxy -c` refused the configuration; `output` is all it said (which files it could not load)."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


def check_config(configs: Sequence[Path]) -> None:
    """Run `haproxy -c` on the configuration (all files, as HAProxy would load them); fail with its complaint.

    A reload with a broken configuration leaves the old worker running on the old
    files at best, and a stopped HAProxy at worst. Without `configs` (no --haproxy-config)
    there is nothing to check, and the reload goes ahead unchecked.
    """
    if not configs:
        return
    argv = ["haproxy", "-c"] + [arg for config in configs for arg in ("-f", str(config))]
    log.debug("checking the HAProxy configuration: %s", " ".join(argv))
    result = _run(argv, CHECK_TIMEOUT, "haproxy -c",
                  "haproxy is not on PATH; it is needed to check --haproxy-config before a reload")
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        alerts = [line.split(" : ", 1)[-1] for line in lines if line.startswith("[ALERT]")] or lines
        said = f": {alerts[0]}" if alerts else ""
        names = ", ".join(str(config) for config in configs)
        raise CheckFailed(f"the HAProxy configuration ({names}) does not pass haproxy -c{said}",
                          result.stdout + result.stderr)


def _run(argv: list[str], timeout: float, what: str, not_found: str) -> subprocess.CompletedProcess:
    """Run `argv` without a shell or stdin, bounded by `timeout`; a missing program or a hang is an error."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout,
                              stdin=subprocess.DEVNULL)  # output that is not UTF-8 is still its words
    except FileNotFoundError:
        raise CertrenewError(not_found) from None
    except subprocess.TimeoutExpired:
        raise CertrenewError(f"{what} did not finish within {timeout} s") from None
