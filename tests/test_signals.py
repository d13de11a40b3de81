import os
import signal

import pytest

from certrenew import signals
from certrenew.atomicfile import TEMP_PREFIX, write_atomic


def test_sigterm_becomes_interrupted_with_exit_status_143():
    with pytest.raises(signals.Interrupted) as raised:
        with signals.handled():
            os.kill(os.getpid(), signal.SIGTERM)
            signals.sleep(5)
    assert raised.value.exit_code == 143 and "SIGTERM" in str(raised.value)
    assert not signals.cancelled.is_set()  # reset for the next run in this process
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_signal_during_a_write_is_held_until_the_file_is_complete(tmp_path, monkeypatch):
    target = tmp_path / "bundle.pem"
    target.write_bytes(b"old")
    real_replace = os.replace

    def replace_after_a_signal(src, dst):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives between fsync and rename
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace_after_a_signal)
    with pytest.raises(signals.Interrupted):
        with signals.handled():
            write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert not list(tmp_path.glob(TEMP_PREFIX + "*"))


def test_workers_see_the_cancellation():
    with signals.handled():
        signals.cancelled.set()
        with pytest.raises(signals.Interrupted):
            signals.check()


def test_workers_still_see_the_cancellation_while_the_cli_abandons_them(monkeypatch):
    """The run has released its lock by then: a worker that missed the signal must not start a write."""
    from certrenew import cli

    def interrupted(argv):
        signals._handle(signal.SIGTERM, None)

    seen = []
    monkeypatch.setitem(cli.COMMANDS, "boom", interrupted)
    monkeypatch.setattr(signals, "exit_abandoning_workers", lambda code: seen.append(signals.cancelled.is_set()) or code)
    assert cli.main(["boom"]) == 143
    assert seen == [True] and not signals.cancelled.is_set()
