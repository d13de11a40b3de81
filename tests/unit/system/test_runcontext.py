"""A run's cancellation belongs to that run: a library host may run two at once and stop one."""

import threading

import pytest

from certrenew.config import CertificateSpec, Settings
from certrenew.errors import Interrupted
from certrenew.renewal import renew
from certrenew.state.store import CertificateRecord, FileStore
from certrenew.system.runcontext import RunContext
from tests.unit.renewal.test_renew import DAY, NOW


def test_two_runs_in_one_process_are_cancelled_apart(tmp_path):
    """Both runs wait for the state dir's lock; cancelling one ends it, the other goes on and finishes."""
    state = tmp_path / "state"
    settings = Settings.of(state_dir=state, ssl_dir=tmp_path, lock_timeout=60, reload_command="true")
    spec = CertificateSpec("a", ("a.example",))
    holder = FileStore(state)
    runs = {name: (RunContext(), threading.Event()) for name in ("cancelled", "finishing")}
    ends: dict[str, object] = {}

    def run(name: str) -> None:
        context, waiting = runs[name]
        sleep = context.sleep
        context.sleep = lambda seconds: (waiting.set(), sleep(seconds))  # type: ignore[method-assign]
        try:
            ends[name] = renew.run(settings, [spec], FileStore(state, context=context), context=context)
        except Interrupted as interrupted:
            ends[name] = interrupted

    with holder.lock(0):
        holder.save_record(CertificateRecord("a", ["a.example"], "ecdsa-p256", serial="1f",
                                             not_before=NOW - DAY, not_after=NOW + 89 * DAY))
        threads = {name: threading.Thread(target=run, args=(name,)) for name in runs}
        for thread in threads.values():
            thread.start()
        assert all(waiting.wait(10) for _, waiting in runs.values()), "a run never waited for the lock"
        runs["cancelled"][0].cancel()
        threads["cancelled"].join(10)
        assert isinstance(ends.get("cancelled"), Interrupted)
        assert threads["finishing"].is_alive() and not runs["finishing"][0].cancelled
    threads["finishing"].join(30)
    report = ends["finishing"]
    assert isinstance(report, renew.Report) and [outcome.action for outcome in report] == ["unchanged"]


def test_a_cancelled_context_ends_a_sleep_and_every_later_check():
    context = RunContext()
    threading.Timer(0.1, context.cancel).start()
    with pytest.raises(Interrupted, match="SIGTERM"):
        context.sleep(60)
    with pytest.raises(Interrupted):
        context.check()
    RunContext().check()  # another run's context is not cancelled
