"""A run's progress over many certificates: a bar on a terminal, plain lines everywhere else.

A timer's journal or a pipe gets one log line per certificate, never a bar's carriage
returns. The bar is tqdm's, imported only once a run on a terminal has work, so a run
with nothing to do stays cheap.
"""

import logging
import threading
from contextlib import ExitStack
from typing import TextIO

log = logging.getLogger(__name__)


class Progress:
    """Plain lines: one per certificate done, with how many are done, failed and remaining.

    Safe to use from the worker threads that order certificates. A run of one
    certificate says nothing here: its own outcome line is its progress.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = self.done = self.failed = 0

    def start(self, total: int) -> None:
        self.total, self.done, self.failed = total, 0, 0

    def advance(self, name: str, what: str) -> None:
        """One certificate is done: `what` happened to it ("ordered", "unchanged" or "failed")."""
        with self._lock:
            self.done += 1
            self.failed += what == "failed"
            if self.total > 1:
                self._show(name, what)

    def close(self) -> None:
        pass

    def _show(self, name: str, what: str) -> None:
        log.info("%s: %s (%d of %d done, %d failed, %d remaining)", name, what, self.done, self.total, self.failed,
                 self.total - self.done, extra={"certificate": name})


class Bar(Progress):
    """A progress bar on a terminal; log lines meanwhile print above it instead of through it."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._cleanup = ExitStack()

    def start(self, total: int) -> None:
        super().start(total)
        if total <= 1:
            return
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        # No monitor thread: the bar moves at every certificate, and a daemon would keep the thread for good.
        bar_class = type("tqdm", (tqdm,), {"monitor_interval": 0})
        self._cleanup.enter_context(logging_redirect_tqdm(tqdm_class=bar_class))
        self._bar = self._cleanup.enter_context(bar_class(total=total, file=self.stream, desc="certrenew", unit="cert",
                                                          leave=False, dynamic_ncols=True, postfix={"failed": 0}))

    def _show(self, name: str, what: str) -> None:
        self._bar.set_postfix(failed=self.failed, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._cleanup.close()


def for_stream(stream: TextIO, quiet: bool) -> Progress:
    """A bar where a person watches (`stream` is a terminal and the run is not quiet), else plain lines."""
    return Bar(stream) if not quiet and stream.isatty() else Progress()
