"""Ending a run cleanly on SIGINT or SIGTERM.

The main thread gets an `Interrupted` exception (like KeyboardInterrupt, for both
signals), so every `finally` and `with` on its way out runs: the responder closes its
port, temp files are removed, the lock is released. Worker threads cannot receive
signals; they see the shared `cancelled` event at their next wait or network call
(`check`, `sleep`). A signal arriving inside a `critical` section (a file being
replaced) is held until the section ends, so no write is cut half-way.
"""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HANDLED = (signal.SIGINT, signal.SIGTERM)

cancelled = threading.Event()
"""Set once a signal asked the run to stop; every thread's waits end early on it."""

_state = threading.local()


class Interrupted(BaseException):
    """A signal asked the run to stop (a BaseException, so `except Exception` does not swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process killed by it (130, 143)."""
        return 128 + self.signum


_received: list[int] = []


def _handle(signum: int, frame) -> None:
    if _received:
        return  # already unwinding: let the cleanup finish
    _received.append(signum)
    cancelled.set()
    if getattr(_state, "critical", 0):
        _state.deferred = signum
    else:
        raise Interrupted(signum)


@contextmanager
def handled() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into `Interrupted` in the main thread while the block runs."""
    previous = {signum: signal.signal(signum, _handle) for signum in HANDLED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received.clear()
        cancelled.clear()


@contextmanager
def critical() -> Iterator[None]:
    """Hold a signal that arrives during the block until the block is done, then raise it."""
    _state.critical = getattr(_state, "critical", 0) + 1
    try:
        yield
    finally:
        _state.critical -= 1
    deferred = getattr(_state, "deferred", None)
    if _state.critical == 0 and deferred is not None:
        _state.deferred = None
        raise Interrupted(deferred)


def check() -> None:
    """Raise `Interrupted` in any thread once a signal has asked the run to stop."""
    if cancelled.is_set():
        raise Interrupted(_received[0] if _received else signal.SIGTERM)


def sleep(seconds: float) -> None:
    """`time.sleep` that ends as soon as the run is cancelled."""
    if cancelled.wait(seconds):
        check()
