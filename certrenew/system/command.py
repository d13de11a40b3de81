"""Running an operator's command (a hook, the reload command, a DNS hook) safely.

It runs without a shell (its command split like a shell would; an operator who needs
one writes `sh -c '...'`), with stdin closed, in its own process group so that a timeout
kills whatever it started, and with its output captured to a temporary file so a chatty
command cannot fill memory, and one that leaves a program holding its output open is
still done when it exits.
"""

import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping

from certrenew.system.limits import kind_of

log = logging.getLogger(__name__)

OUTPUT_LIMIT = 4096
OUTPUT_LINES = 20
"""How much of a command's output (its end: bytes, then lines) is logged; its last line ends a failure's line."""
KILL_WAIT = 5.0
"""Seconds to wait for a killed command to be reaped."""


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
    found = shutil.which(program)
    if found is None:
        return f"{what}'s program {program!r} is not found on PATH or not executable"
    kind = kind_of(os.stat(found).st_mode)
    if kind:  # which() passes an executable FIFO or device, which exec() then refuses
        return f"{what}'s program {found} is {kind}, not a program"
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


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the command and everything it started (its own session, hence its own process group)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        process.wait(KILL_WAIT)
    except subprocess.TimeoutExpired:
        log.warning("command process %d did not go away after SIGKILL", process.pid)


def _tail(output) -> list[str]:
    """The last non-blank lines of a command's output, within its last OUTPUT_LIMIT bytes."""
    size = output.seek(0, os.SEEK_END)
    output.seek(max(0, size - OUTPUT_LIMIT))
    text = output.read().decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[1:] if size > OUTPUT_LIMIT else lines)[-OUTPUT_LINES:]  # the first may be cut mid-line
