import os
import signal
import subprocess
import sys
import threading

import pytest

from certrenew.errors import Interrupted
from certrenew.system import signals
from certrenew.system.atomicfile import TEMP_PREFIX, write_atomic
from certrenew.system.runcontext import RunContext


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_become_interrupted_with_their_exit_status(signum, exit_code):
    before, context = signal.getsignal(signum), RunContext()
    with pytest.raises(Interrupted) as raised:
        with signals.handled(context):
            os.kill(os.getpid(), signum)
            context.sleep(5)
    assert raised.value.exit_code == exit_code and signal.Signals(signum).name in str(raised.value)
    assert context.cancelled and not RunContext().cancelled  # the next run in this process starts afresh
    assert signal.getsignal(signum) is before


def test_a_signal_during_a_write_is_held_until_the_file_is_complete(tmp_path, monkeypatch):
    target = tmp_path / "bundle.pem"
    target.write_bytes(b"old")
    real_replace = os.replace

    def replace_after_a_signal(src, dst):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives between fsync and rename
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace_after_a_signal)
    context = RunContext()
    with pytest.raises(Interrupted):
        with signals.handled(context):
            write_atomic(target, b"new", context=context)
    assert target.read_bytes() == b"new"
    assert not list(tmp_path.glob(TEMP_PREFIX + "*"))


def test_workers_see_the_cancellation():
    context = RunContext()
    with signals.handled(context):
        context.cancel()
        with pytest.raises(Interrupted):
            context.check()


def test_workers_still_see_the_cancellation_while_the_cli_abandons_them(monkeypatch):
    """The run has released its lock by then: a worker that missed the signal must not start a write."""
    from certrenew.cli import commands

    def interrupted(argv, context):
        os.kill(os.getpid(), signal.SIGTERM)
        context.sleep(5)

    seen = []
    monkeypatch.setattr(commands, "COMMANDS", {**commands.COMMANDS, "boom": interrupted})
    monkeypatch.setattr(signals, "exit_abandoning_workers", lambda context, code: seen.append(context.cancelled) or code)
    assert commands.main(["boom"]) == 143
    assert seen == [True]


def test_a_second_signal_does_not_cut_the_cleanup_of_the_first():
    cleaned, context = [], RunContext()
    with pytest.raises(Interrupted, match="SIGTERM"):
        with signals.handled(context):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                context.sleep(5)
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # the operator presses Ctrl-C while it unwinds
                cleaned.append("responder closed")
    assert cleaned == ["responder closed"]


def test_a_held_signal_is_raised_when_the_outermost_critical_section_ends():
    steps, context = [], RunContext()
    with pytest.raises(Interrupted):
        with signals.handled(context):
            with context.critical():
                with context.critical():
                    os.kill(os.getpid(), signal.SIGTERM)
                    steps.append("inner done")
                steps.append("outer done")  # still one write: the signal waits for it
            steps.append("after the sections")
    assert steps == ["inner done", "outer done"]


def test_a_worker_starts_no_write_once_the_run_is_cancelled(tmp_path):
    target, outcome, context = tmp_path / "meta.json", [], RunContext()

    def worker():
        try:
            write_atomic(target, b"new", context=context)
        except Interrupted:
            outcome.append("interrupted")
    with signals.handled(context):
        context.cancel()
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(timeout=10)
    assert outcome == ["interrupted"] and not target.exists()


def test_the_process_ends_only_once_a_workers_write_is_done(tmp_path):
    """exit_abandoning_workers leaves a worker blocked on the CA, never one half-way through a write."""
    done = tmp_path / "done"
    program = f"""
import threading, time
from certrenew.system import signals
from certrenew.system.runcontext import RunContext
context, entered = RunContext(), threading.Event()
def worker():
    with context.finishing():
        entered.set()
        time.sleep(0.5)
        open({str(done)!r}, "w").close()
    time.sleep(60)  # then blocked on the CA: abandoned
threading.Thread(target=worker).start()
entered.wait(10)
signals.exit_abandoning_workers(context, 143)
"""
    result = subprocess.run([sys.executable, "-c", program], timeout=30)
    assert result.returncode == 143 and done.exists()
