"""The state dir's own lock: an flock on `<state-dir>/lock`, held shared by runs (each certificate
has its own lock, see `files`) and exclusive by what needs the whole state dir (import, revoke).

The kernel releases a flock when its holder exits, however it exits, so a crashed
or killed run never leaves a stale lock. The holder writes its pid into the file so
a run that gives up waiting can say who holds it. The state dir and the lock file must
be ours alone (see `owned`): the lock is truncated, and a root run must not truncate
whatever a planted symbolic link points to.
"""

import fcntl
import logging
import os
from pathlib import Path

from certrenew.errors import CertrenewError
from certrenew.system import flock, owned
from certrenew.system.runcontext import RunContext

log = logging.getLogger(__name__)

LOCK_FILE = "lock"
POLL = 0.1


class StateLock:
    """Hold the state dir's lock for a `with` block, waiting up to `timeout` seconds for it
    (and no longer once `context` is cancelled)."""

    def __init__(self, state_dir: Path, timeout: float, context: RunContext | None = None,
                 shared: bool = False) -> None:
        self.path = state_dir / LOCK_FILE
        self.timeout = timeout
        self.context = context or RunContext()
        self.mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        self._fd: int | None = None

    def __enter__(self) -> "StateLock":
        state_dir = self.path.parent
        owned.make_dir(state_dir, follow=True)
        try:
            fd = owned.open_file(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as error:
            raise CertrenewError(f"cannot open the lock file {self.path}: {error.strerror} (the state dir must be "
                                 "writable by the user certrenew runs as)") from error
        try:
            self._wait(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc_info) -> None:
        # Closing the descriptor releases the flock; the file stays, holding no meaning.
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None

    def _wait(self, fd: int) -> None:
        def waiting() -> None:
            if self.timeout > 0:  # at once: a silent wait of minutes looks like a hang
                log.warning("another certrenew run (pid %s) holds the lock on %s; waiting up to %g s for it "
                            "(--lock-timeout)", _holder(fd), self.path.parent, self.timeout)
        if not flock.wait_for(fd, self.mode, self.timeout, POLL, self.context.sleep, waiting):
            raise CertrenewError(
                f"another certrenew run (pid {_holder(fd)}) holds the lock on {self.path.parent}; "
                f"gave up after {self.timeout:g} s (--lock-timeout)"
            )


def _holder(fd: int) -> str:
    """The pid the holder wrote, or "unknown" if it has not written it yet."""
    pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return pid if pid.isdigit() else "unknown"
