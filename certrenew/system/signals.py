"""Ending a run cleanly on SIGINT or SIGTERM.

The signal handler only cancels the `RunContext` it was installed for. In the main thread
it then raises `Interrupted` (like KeyboardInterrupt, for both signals), so every `finally`
and `with` on its way out runs: the responder closes its port, temp files are removed, the
lock is released. Worker threads cannot receive signals; they see the cancelled context at
their next wait or network call (`check`, `sleep`). A worker blocked on the CA (up to a
request's timeout) is not waited for: `exit_abandoning_workers` ends the process once no
file is being written, which is safe because every write is atomic and every step can be
resumed. A signal arriving inside a `critical` section (a file being replaced) is held until
the section ends, so no write is cut half-way; after a signal, workers start no new one.
"""

import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from certrenew.errors import Interrupted
from certrenew.system.runcontext import RunContext

HANDLED = (signal.SIGINT, signal.SIGTERM)
WRITE_GRACE = 2.0
"""Seconds the main thread waits for workers' writes in progress before it exits."""

@contextmanager
def handled(context: RunContext) -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM cancel `context` and raise `Interrupted` in the main thread."""
    def handle(signum: int, frame) -> None:
        if context.cancelled:
            return  # already unwinding: let the cleanup finish
        context.cancel(signum)
        if not context.hold(signum):
            raise Interrupted(signum)

    previous = {signum: signal.signal(signum, handle) for signum in HANDLED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_abandoning_workers(context: RunContext, code: int) -> int:
    """Return `code`, or, while worker threads still run (blocked on the CA), end the process.

    The workers are left as if killed, but only once none of them is writing a file or
    withdrawing a record (`finishing`; waiting at most WRITE_GRACE seconds): the state they
    leave is what a SIGKILL leaves, which the next run resumes.
    """
    workers = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if not workers:
        return code
    end = time.monotonic() + WRITE_GRACE
    while context.writes_in_progress and time.monotonic() < end:
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
