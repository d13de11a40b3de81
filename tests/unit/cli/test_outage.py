"""What a node says while its store is unreachable: `outage`, the daemon's passes and status rows, /healthz
and /metrics, over a store that stops answering (etcd away: tests/integration/test_fleet_outage.py)."""

import datetime
import json
import logging
import threading
import time

import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from certrenew.cli import daemon, metrics, outage
from certrenew.config import CertificateSpec, Settings
from certrenew.errors import StoreUnreachable
from certrenew.state.backend import Outage
from certrenew.state.memory import MemoryBackend
from certrenew.state.store import CertificateRecord, Store
from certrenew.system import signals

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


class Away(MemoryBackend):
    """A store whose cluster stops answering when told: every request fails, as the etcd backend's do."""

    def __init__(self) -> None:
        super().__init__()
        self.away: Outage | None = None

    @property
    def outage(self) -> Outage | None:  # type: ignore[override]
        return self.away

    def _check(self) -> None:
        if self.away:
            raise StoreUnreachable("etcd at 127.0.0.1:2379 did not answer (Connection refused)")

    def get(self, key):
        self._check()
        return super().get(key)

    def list(self, prefix, suffix=""):
        self._check()
        return super().list(prefix, suffix)

    def locks(self, prefix):
        self._check()
        return super().locks(prefix)

    def write(self, changes, **kwargs):
        self._check()
        return super().write(changes, **kwargs)

    def lock(self, key, **kwargs):
        self._check()
        return super().lock(key, **kwargs)


@pytest.fixture
def hangups():
    with signals.Hangups() as installed:
        yield installed


def serve(ssl_dir, name, lifetime, left):
    """A bundle of `name` in `ssl_dir`, of `lifetime`, with `left` to run."""
    leaf = trustme.CA().issue_cert(f"{name}.example", not_before=NOW + left - lifetime, not_after=NOW + left)
    ssl_dir.mkdir(exist_ok=True)
    (ssl_dir / f"{name}.pem").write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems) +
                                          leaf.private_key_pem.bytes())


def test_only_certificates_past_their_renewal_time_are_named_soonest_first(tmp_path):
    serve(tmp_path, "fresh", 90 * DAY, 80 * DAY)
    serve(tmp_path, "late", 90 * DAY, 20 * DAY)  # past its renewal with a third left
    serve(tmp_path, "short", 6 * DAY, 2 * DAY)  # past half of a short-lived one
    specs = [CertificateSpec(name, (f"{name}.example",)) for name in ("fresh", "late", "short", "never")]
    found = outage.expiring(tmp_path, specs, now=NOW)
    assert [item.name for item in found] == ["short", "late"]
    assert found[0].line().startswith("short expires in 1 d 23 h (at ")
    assert outage.expiring(tmp_path, specs, renew_before=85 * DAY, now=NOW)[-1].name == "fresh"
    assert outage.store_health(None, tmp_path, specs) == outage.StoreHealth()  # reachable: the ssl dir is not read


def make(tmp_path, hangups):
    settings = Settings.of(state_dir=tmp_path / "unused", ssl_dir=tmp_path / "ssl", lock_timeout=0,
                           reload_command="true")
    specs = [CertificateSpec("a", ("a.example",))]
    subject = daemon.Daemon(settings, specs, Store(Away()), lambda: (settings, specs), hangups)
    serve(tmp_path / "ssl", "a", 60 * DAY, 2 * DAY)  # due: served, past its renewal time
    record = CertificateRecord("a", ["a.example"], "ecdsa-p256", serial="1", not_before=NOW - 58 * DAY,
                               not_after=NOW + 2 * DAY)
    subject.store.save_record(record)
    return subject


def test_a_pass_the_store_is_away_for_fails_no_certificate_says_why_once_and_is_tried_again_soon(
        tmp_path, hangups, caplog):
    caplog.set_level(logging.INFO, "certrenew")
    subject = make(tmp_path, hangups)
    rows = subject.status()
    subject.store.backend.away = Outage(time.time() - 60, time.time(), "127.0.0.1:2379: Connection refused")
    wakes = [subject.run_pass(responder=None) for _ in range(2)]
    for wake in wakes:
        assert wake - datetime.datetime.now(datetime.timezone.utc) <= daemon.STORE_RETRY
    # One condition of the store: no pass error, no failure of the certificate, said once.
    assert subject.telemetry.pass_errors == 0 and subject.telemetry.failing_passes == 0
    lines = [record for record in caplog.records if record.name == "certrenew.cli.daemon"]
    (warning,) = [line for line in lines if line.levelname == "WARNING"]
    assert "the store is unreachable since" in warning.getMessage()
    (error,) = [line for line in lines if line.levelname == "ERROR"]  # named once, not at every try
    assert error.getMessage().startswith("a expires in 1 d 23 h (at ") and error.certificate == "a"
    assert subject.status() == rows  # the last rows read, without waiting on the store
    health = subject.store_health()
    ok, document = metrics.health(subject.status(), subject.telemetry, store=health)
    assert not ok and not document["healthy"] and document["store"]["reachable"] is False
    assert document["reason"].startswith("the store is unreachable since ")
    assert [item["name"] for item in document["expiring"]] == ["a"] and document["store"]["unreachable_since"]
    subject.store.backend.away = None
    record = subject.store.load_record("a")
    assert record.failures == 0 and record.next_attempt is None  # nothing was counted against it: no back-off
    record.not_before, record.not_after = NOW, NOW + 60 * DAY  # (renewed meanwhile: this pass asks no CA)
    subject.store.save_record(record)
    subject.run_pass(responder=None)
    assert any(record.getMessage() == "the store answers again: renewals resume" for record in caplog.records)
    ok, document = metrics.health(subject.status(), subject.telemetry, store=subject.store_health())
    assert document["store"] == {"reachable": True} and "reason" not in document


def test_the_metrics_say_whether_the_store_answers_and_since_when_it_does_not():
    since = time.time() - 30
    away = samples(metrics.render([], store=outage.StoreHealth(Outage(since, since + 29, "refused"))))
    assert away == {"certrenew_store_up": 0.0, "certrenew_store_unreachable_since_timestamp_seconds": since}
    assert samples(metrics.render([], store=outage.StoreHealth())) == {"certrenew_store_up": 1.0}
    assert samples(metrics.render([])) == {}  # a one-shot run has no store to watch


def samples(text: bytes) -> dict:
    return {sample.name: sample.value for family in text_string_to_metric_families(text.decode())
            for sample in family.samples}


def test_a_store_no_node_reaches_ends_the_run_as_a_whole_with_nothing_counted_against_a_certificate(tmp_path):
    from certrenew.renewal import renew

    settings = Settings.of(state_dir=tmp_path / "unused", ssl_dir=tmp_path, lock_timeout=0, reload_command="true")
    store = Store(Away())
    store.save_record(CertificateRecord("a", ["a.example"], "ecdsa-p256", failures=2))
    store.backend.away = Outage(time.time(), time.time(), "refused")
    store.backend.lock = MemoryBackend.lock.__get__(store.backend)  # the run's lock taken before etcd went away
    with pytest.raises(StoreUnreachable):  # not a failed outcome per certificate
        renew.run(settings, [CertificateSpec("a", ("a.example",))], store)
    with pytest.raises(StoreUnreachable):  # not recorded with a back-off, whatever failed first
        renew._failed(store, NOW, CertificateSpec("a", ("a.example",)), "https://ca.example/dir",
                      StoreUnreachable("etcd did not answer"))
    with pytest.raises(StoreUnreachable):  # not "repair it, or move it away": nothing is wrong with it
        store.load_record("a")
    store.backend.away = None
    assert store.load_record("a").failures == 2


def test_a_read_that_hangs_on_the_store_gives_the_last_rows_and_never_starts_a_second(monkeypatch):
    monkeypatch.setattr(outage, "READ_BOUND", 0.01)
    release, calls = threading.Event(), []

    def read():
        calls.append(len(calls) + 1)
        if len(calls) > 1:  # etcd went away without a word: the client waits out its patience
            release.wait(10)
        return calls[-1]

    last = outage.LastRead(read, 0)  # the first read starts at once
    assert last(away=True) == 1  # and is waited for: there is nothing older
    assert last() == last() == 1 and calls == [1, 2]  # the second hangs: one at a time, the last rows meanwhile
    last._done = NoWait()  # the hung read still runs
    assert last(away=True) == 1  # the store known away: the last rows at once, not a wait on the hung read
    release.set()
    assert last._done.is_set() or threading.Event.wait(last._done, 10)
    assert last(away=True) == 2 and calls == [1, 2]  # and not asked at all


def test_status_with_the_store_unreachable_says_since_when_and_names_what_nears_expiry(tmp_path, monkeypatch, capsys):
    from certrenew.cli import commands

    serve(tmp_path / "ssl", "a", 6 * DAY, 2 * DAY)
    (tmp_path / "certrenew.toml").write_text('[[certificate]]\nname = "a"\ndomains = ["a.example"]\n')
    since = time.time() - 20

    def unreachable(*_args, **_kwargs):
        raise StoreUnreachable("etcd at 127.0.0.1:2379 did not answer (Connection refused)", since)

    monkeypatch.setattr(commands, "open_store", unreachable)
    monkeypatch.setenv("CERTRENEW_SSL_DIR", str(tmp_path / "ssl"))
    argv = ["status", "--config", str(tmp_path / "certrenew.toml")]
    assert commands.main(argv) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"certrenew: not healthy: the store is unreachable since "
                               f"{outage.utc(since).isoformat(' ', 'seconds')[:19]} UTC (etcd at 127.0.0.1:2379 ")
    assert lines[1].startswith("certrenew: a expires in 1 d 23 h (at ") and len(lines) == 2
    assert commands.main([*argv, "--json"]) == 1
    said = json.loads(capsys.readouterr().out)
    assert said["healthy"] is False and said["certificates"] == [] and said["store"]["reachable"] is False
    assert [item["name"] for item in said["expiring"]] == ["a"] and said["reason"] == "; ".join(
        line.removeprefix("certrenew: ").removeprefix("not healthy: ") for line in lines)


class NoWait(threading.Event):
    """An event no one may wait on."""

    def wait(self, timeout=None):
        raise AssertionError("waited on a read of the store")
