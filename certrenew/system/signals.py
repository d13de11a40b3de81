"""Ending a run cleanly on SIGINT or SIGTERM.

The main thread gets an `Interrupted` exception (like KeyboardInterrupt, for both
signals), so every `finally` and `with` on its way out runs: the responder closes its
port, temp files are removed, the lock is released. Worker threads cannot receive
signals; they see the shared `cancelled` event at their next wait or network call
(`check`, `sleep`). A worker blocked on the CA (up to a request's timeout) is not
waited for: `exit_abandoning_workers` ends the process once no file is being written,
which is safe because every write is atomic and every step can be resumed. A signal
arriving inside a `critical` section (a file being replaced) is held until the
section ends, so no write is cut half-way; after a signal, workers start no new one.
"""

import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

HANDLED = (signal.SIGINT, signal.SIGTERM)

cancelled = threading.Event()
"""Set once a signal asked the run to stop; every thread's waits end early on it."""

_state = threading.local()
_writes = {"in_progress": 0}
"""Critical sections in progress, in any thread (guarded by _writes_lock)."""
_writes_lock = threading.Lock()
WRITE_GRACE = 2.0
"""Seconds the main thread waits for workers' writes in progress before it exits."""


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
    if threading.current_thread() is not threading.main_thread():
        check()  # a cancelled worker starts no new write: the main thread is about to exit
    _state.critical = getattr(_state, "critical", 0) + 1
    try:
        with finishing():
            yield
    finally:
        _state.critical -= 1
    deferred = getattr(_state, "deferred", None)
    if _state.critical == 0 and deferred is not None:
        _state.deferred = None
        raise Interrupted(deferred)


@contextmanager
def finishing() -> Iterator[None]:
    """A step the process must not be ended in the middle of, even after a signal (a file being
    replaced, a published DNS record being withdrawn): `exit_abandoning_workers` waits for it."""
    with _writes_lock:
        _writes["in_progress"] += 1
    try:
        yield
    finally:
        with _writes_lock:
            _writes["in_progress"] -= 1


def check() -> None:
    """Raise `Interrupted` in any thread once a signal has asked the run to stop."""
    if cancelled.is_set():
        raise Interrupted(_received[0] if _received else signal.SIGTERM)


def sleep(seconds: float) -> None:
    """`time.sleep` that ends as soon as the run is cancelled."""
    if cancelled.wait(seconds):
        check()


def exit_abandoning_workers(code: int) -> int:
    """Return `code`, or, while worker threads still run (blocked on the CA), end the process.

    The workers are left as if killed, but only once none of them is writing a file or
    withdrawing a record (`finishing`; waiting at most WRITE_GRACE seconds): the state they
    leave is what a SIGKILL leaves, which the next run resumes.
    """
    workers = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if not workers:
        return code
    end = time.monotonic() + WRITE_GRACE
    while _writes["in_progress"] and time.monotonic() < end:
        time.sleep(0.01)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Hangups:
    """SIGHUP as a wake-up for a sleeping daemon (`systemctl reload` sends it; its default kills).

    The handler only writes a byte to a pipe, which is safe whatever the main thread was
    doing when the signal came; `sleep` waits on the pipe, so a SIGHUP ends the sleep at
    once, and one that arrived during a pass ends the next sleep at once. SIGINT and SIGTERM
    (see `handled`) still end a sleep by raising `Interrupted`.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous = signal.signal(signal.SIGHUP, self._handle)

    def _handle(self, signum: int, frame) -> None:
        try:
            os.write(self._write, b"\0")
        except BlockingIOError:  # the pipe is full of hangups not yet seen: one more adds nothing
            pass

    def sleep(self, seconds: float) -> bool:
        """Wait up to `seconds`; True (and the hangups forgotten) if SIGHUP came, else False at the end."""
        end = time.monotonic() + seconds
        while True:
            ready, _, _ = select.select([self._read], [], [], max(end - time.monotonic(), 0))
            if ready:
                while True:
                    try:
                        os.read(self._read, 4096)
                    except BlockingIOError:
                        return True
            if time.monotonic() >= end:
                return False

    def __enter__(self) -> "Hangups":
        return self

    def __exit__(self, *exc_info) -> None:
        signal.signal(signal.SIGHUP, self._previous)
        os.close(self._read)
        os.close(self._write)
