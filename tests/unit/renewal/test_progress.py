"""Progress over many certificates: a bar on a terminal, plain lines in a pipe or a timer's journal."""

import fcntl
import io
import logging
import os
import pty
import select
import struct
import termios
import threading

from certrenew.renewal import progress
from certrenew.renewal.renew import Outcome, Report


def test_not_on_a_terminal_each_certificate_is_one_plain_line(caplog):
    caplog.set_level(logging.INFO)
    shown = progress.for_stream(io.StringIO(), quiet=False)
    assert type(shown) is progress.Progress
    shown.start(3)
    for name, what in (("alpha", "ordered"), ("beta", "failed"), ("gamma", "unchanged")):
        shown.advance(name, what)
    shown.close()
    assert caplog.messages == ["alpha: ordered (1 of 3 done, 0 failed, 2 remaining)",
                               "beta: failed (2 of 3 done, 1 failed, 1 remaining)",
                               "gamma: unchanged (3 of 3 done, 1 failed, 0 remaining)"]


def test_one_certificate_needs_no_progress(caplog):
    caplog.set_level(logging.INFO)
    shown = progress.Progress()
    shown.start(1)
    shown.advance("alpha", "ordered")
    assert caplog.messages == []


def test_on_a_terminal_a_bar_counts_done_and_failed():
    threads = set(threading.enumerate())  # an earlier test's thread may end meanwhile: only new ones count
    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 wide
    with os.fdopen(secondary, "w") as terminal:
        assert type(progress.for_stream(terminal, quiet=True)) is progress.Progress  # -q: no bar
        bar = progress.for_stream(terminal, quiet=False)
        assert type(bar) is progress.Bar
        bar.start(3)
        bar.advance("alpha", "ordered")
        bar.advance("beta", "failed")
        bar._bar.refresh()
        drawn = _read(main)
        bar.close()
    os.close(main)
    assert set(threading.enumerate()) <= threads  # tqdm's monitor thread is off
    assert "certrenew:  67%" in drawn and "2/3" in drawn and "failed=1" in drawn and "\r" in drawn


def _read(fd: int) -> str:
    chunks = []
    while select.select([fd], [], [], 0.5)[0]:
        chunks.append(os.read(fd, 65536))
    return b"".join(chunks).decode(errors="replace")


def test_the_summary_counts_every_kind_of_outcome():
    outcomes = [Outcome("a", "renewed", ""), Outcome("b", "unchanged", ""), Outcome("c", "unchanged", ""),
                Outcome("d", "failed", "x"), Outcome("e", "issued", ""), Outcome("f", "deferred", "y"),
                Outcome("g", "installed", "")]
    assert Report(outcomes).summary() == \
        "7 certificates: 1 issued, 1 renewed, 1 installed, 2 unchanged, 1 deferred, 1 failed"
    assert Report(outcomes[:3], ["deploy hook for a 'x' exited with status 1"]).summary() == \
        "3 certificates: 1 renewed, 2 unchanged; 1 hook failed"
    assert Report(outcomes[1:3]).failed is False and Report(outcomes[1:3], ["post-hook ..."]).failed is True
