"""One run's cancellation, passed down to every step that waits, writes or calls out.

Nothing about a run lives at module level: a library host may run two at once in one
process and stop one of them (`cancel`) while the other goes on. The CLI makes one
context per command and has SIGINT and SIGTERM set it (`signals.handled`); the time
budget of a run's orders is the ACME `Deadline`, which reads its context.
"""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from certrenew.errors import Interrupted


class RunContext:
    """Whether a run was asked to stop, and the writes that must not be cut half-way.

    Every thread of the run sees a cancellation at its next `check` or `sleep`. A write in
    a `critical` section holds a signal until the write is done (see `signals.handled`), and
    once the run is cancelled, a worker starts no new one.
    """

    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self.signum: int = signal.SIGTERM
        """The signal that cancelled the run (SIGTERM for a host's `cancel()`): its exit status."""
        self._thread = threading.local()
        """Per thread: how deep in critical sections, and the signal held until they end."""
        self._writes = 0
        """Critical and finishing sections in progress, in any thread (guarded by _writes_lock)."""
        self._writes_lock = threading.Lock()

    def cancel(self, signum: int = signal.SIGTERM) -> None:
        """Ask the run to stop: each of its threads raises `Interrupted` at its next check."""
        if not self._cancelled.is_set():
            self.signum = signum
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def check(self) -> None:
        """Raise `Interrupted` once the run is cancelled."""
        if self._cancelled.is_set():
            raise Interrupted(self.signum)

    def sleep(self, seconds: float) -> None:
        """`time.sleep` that ends (raising `Interrupted`) as soon as the run is cancelled."""
        if self._cancelled.wait(seconds):
            self.check()

    @contextmanager
    def critical(self) -> Iterator[None]:
        """A write no signal may cut: one arriving meanwhile is held until the outermost section
        ends, then raised. A cancelled worker starts none: the main thread is about to exit."""
        if threading.current_thread() is not threading.main_thread():
            self.check()
        state = self._thread
        state.depth = getattr(state, "depth", 0) + 1
        try:
            with self.finishing():
                yield
        finally:
            state.depth -= 1
        held = getattr(state, "held", None)
        if state.depth == 0 and held is not None:
            state.held = None
            raise Interrupted(held)

    def hold(self, signum: int) -> bool:
        """Called by a signal handler (in the main thread): hold `signum` if a critical section runs;
        False if none does and it is to be raised now."""
        if not getattr(self._thread, "depth", 0):
            return False
        self._thread.held = signum
        return True

    @contextmanager
    def finishing(self) -> Iterator[None]:
        """A step the process must not be ended in the middle of, even after a signal (a file being
        replaced, a published DNS record being withdrawn): `signals.exit_abandoning_workers` waits for it."""
        with self._writes_lock:
            self._writes += 1
        try:
            yield
        finally:
            with self._writes_lock:
                self._writes -= 1

    @property
    def writes_in_progress(self) -> int:
        return self._writes
