"""The daemon's own logic over the in-memory store: its wake-up, its failures, SIGHUP, sd_notify.
What it does against a CA and HAProxy is in tests/integration/test_cli_daemon.py."""

import datetime
import os
import random
import signal
import socket
import threading
import time

import pytest

from certrenew.cli import daemon
from certrenew.config import CertificateSpec, Settings
from certrenew.errors import UsageError
from certrenew.state.memory import MemoryBackend
from certrenew.state.store import CertificateRecord, Store
from certrenew.system import signals

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
HOUR = datetime.timedelta(hours=1)


@pytest.fixture
def hangups():
    with signals.Hangups() as installed:
        yield installed


def make(tmp_path, hangups, load=None, rng=None, **settings):
    config = (Settings.of(state_dir=tmp_path / "unused", ssl_dir=tmp_path / "ssl", lock_timeout=0, **settings),
              [CertificateSpec("a", ("a.example",))])
    return daemon.Daemon(*config, Store(MemoryBackend()), load or (lambda: config), hangups, rng)


def test_the_regular_check_comes_at_most_5_percent_early(tmp_path, hangups):
    for fraction, expected in ((0.0, HOUR), (0.999999, HOUR * 0.95)):
        rng = random.Random()
        rng.random = lambda fraction=fraction: fraction  # type: ignore[method-assign]
        subject = make(tmp_path, hangups, rng=rng)
        subject.store.save_record(CertificateRecord("a", ["a.example"], "ecdsa-p256", serial="1",
                                                    not_before=NOW, not_after=NOW + 90 * 24 * HOUR))
        assert subject.next_wake(NOW) == pytest.approx(NOW + expected, abs=datetime.timedelta(seconds=1))
    long = make(tmp_path, hangups, check_interval=24 * HOUR, rng=random.Random(1))
    long.store.save_record(CertificateRecord("a", ["a.example"], "ecdsa-p256", serial="1", not_before=NOW,
                                             not_after=NOW + 90 * 24 * HOUR))
    assert NOW + 24 * HOUR - daemon.MAX_JITTER <= long.next_wake(NOW) <= NOW + 24 * HOUR


@pytest.mark.parametrize("lifetime, jitter", [(90 * 24 * HOUR, daemon.policy.RENEWAL_JITTER),
                                              (datetime.timedelta(seconds=30), datetime.timedelta(seconds=0.3))])
def test_on_a_fleet_a_node_wakes_for_a_renewal_up_to_the_jitter_late_and_for_what_is_due_now_at_once(
        tmp_path, hangups, lifetime, jitter):
    rng = random.Random()
    rng.random = lambda: 0.999999  # type: ignore[method-assign]
    wakes = {}
    for shared in (False, True):
        subject = make(tmp_path, hangups, rng=rng, check_interval=1000 * 24 * HOUR)
        subject.store.backend.shared = shared  # type: ignore[misc]
        record = CertificateRecord("a", ["a.example"], "ecdsa-p256", serial="1", not_before=NOW,
                                   not_after=NOW + lifetime)
        subject.store.save_record(record)
        wakes[shared] = subject.next_wake(NOW)
        fresh = make(tmp_path, hangups, rng=rng)
        fresh.store.backend.shared = shared  # type: ignore[misc]
        assert fresh.next_wake(NOW) == NOW  # never issued: due now, on a fleet too
    assert wakes[False] == daemon.policy.renew_at(record)
    assert wakes[True] - wakes[False] == pytest.approx(jitter, abs=datetime.timedelta(milliseconds=1))


def test_a_failed_pass_is_counted_and_retried_soon(tmp_path, hangups, caplog):
    subject = make(tmp_path, hangups)  # the ssl dir does not exist: the pass fails as a whole
    wake = subject.run_pass(responder=None)
    assert subject.telemetry.pass_errors == 1 and subject.telemetry.last_success is False
    assert subject.telemetry.failing_passes == 1
    assert datetime.timedelta(0) < wake - datetime.datetime.now(datetime.timezone.utc) <= daemon.RETRY_AFTER_ERROR
    (line,) = [record for record in caplog.records if record.name == "certrenew.cli.daemon"]
    assert line.getMessage().startswith("pass failed: the ssl dir") and not line.exc_info


def test_an_unexpected_exception_is_logged_with_its_traceback_at_verbose(tmp_path, hangups, caplog, monkeypatch):
    subject = make(tmp_path, hangups)
    monkeypatch.setattr(daemon.renew, "run", lambda *args, **kwargs: {}["boom"])
    caplog.set_level("DEBUG", logger="certrenew.cli.daemon")
    subject.run_pass(responder=None)
    (line,) = [record for record in caplog.records if record.name == "certrenew.cli.daemon"]
    assert line.getMessage() == "pass failed: KeyError('boom')" and line.exc_info is not None
    assert subject.telemetry.pass_errors == 1


@pytest.mark.parametrize("error, said", [
    (UsageError("certrenew.toml: unknown key 'x'"), "certrenew.toml: unknown key 'x'"),
    (RecursionError("too deep"), "RecursionError('too deep')"),  # a failure nobody expected: still not the end
])
def test_a_refused_config_on_sighup_keeps_the_old_one(tmp_path, hangups, caplog, error, said):
    def broken():
        raise error

    subject = make(tmp_path, hangups, load=broken)
    before = (subject.settings, subject.specs)
    subject.reload()
    assert (subject.settings, subject.specs) == before
    assert [record.getMessage() for record in caplog.records] == [
        f"SIGHUP: config refused, carrying on with the previous one: {said}"]


def test_sighup_keeps_the_ports_and_the_store_it_started_with(tmp_path, hangups, caplog):
    subject = make(tmp_path, hangups)
    moved = Settings.of(state_dir=tmp_path / "elsewhere", ssl_dir=tmp_path / "ssl", listen="127.0.0.1:1",
                     check_interval=HOUR / 2)
    subject.load = lambda: (moved, [])
    subject.reload()
    assert subject.settings.daemon.check_interval == HOUR / 2 and subject.specs == []
    assert (subject.settings.responder.listen, subject.settings.state_dir) == (Settings().responder.listen, tmp_path / "unused")
    assert "SIGHUP: listen changed; restart the daemon to apply it" in caplog.text


def test_a_sighup_ends_the_sleep(hangups):
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGHUP)).start()
    assert hangups.sleep(30) is True
    assert hangups.sleep(0.01) is False  # seen once


def test_sd_notify_writes_to_the_notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        systemd.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        daemon.notify("READY=1")
        assert systemd.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    daemon.notify("READY=1")  # no systemd: nothing, no error


def test_a_long_start_asks_systemd_for_more_time_until_it_ends_and_not_after(tmp_path, monkeypatch):
    path = tmp_path / "notify"

    def said(systemd) -> list[bytes]:
        messages = []
        while True:
            try:
                messages.append(systemd.recv(100))
            except BlockingIOError:
                return messages

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        systemd.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        with daemon.extending_start(0.05):
            time.sleep(0.23)  # a catch-up of many certificates
        during = said(systemd)
        time.sleep(0.2)
        after = said(systemd)
    assert len(during) >= 2 and set(during) == {b"EXTEND_TIMEOUT_USEC=150000"}, during  # at once, then again
    assert after == []


@pytest.mark.parametrize("shared", [False, True])
def test_a_certificate_locked_by_another_node_is_looked_at_again_when_its_lease_could_end(tmp_path, hangups, shared):
    subject = make(tmp_path, hangups, reload_command="true")
    subject.store.backend.shared = shared  # type: ignore[misc]  # on a fleet's store, no renewal jitter past it
    (tmp_path / "ssl").mkdir()
    other = Store(subject.store.backend, holder="node-2 pid 1")  # another node, on the same store
    with other.certificate("a", 0):
        wake = subject.run_pass(responder=None)
    ttl = datetime.timedelta(seconds=subject.store.ttl)
    # Still due (no certificate yet), but another node works on it: not in STUCK_PAUSE, once its lease could end.
    assert ttl - datetime.timedelta(seconds=5) < wake - datetime.datetime.now(datetime.timezone.utc) <= ttl
    assert subject.held_elsewhere == {"a"}


def test_on_a_shared_store_a_pass_leaves_a_locked_certificate_to_its_node_without_waiting(tmp_path, hangups, caplog):
    subject = make(tmp_path, hangups, reload_command="true")
    subject.settings = subject.settings.with_options(lock_timeout=1)
    subject.store.backend.shared = True  # a fleet's store (etcd)
    (tmp_path / "ssl").mkdir()
    other = Store(subject.store.backend, holder="node-2 pid 1")
    with other.certificate("a", 0):
        subject.run_pass(responder=None)
    # Not waited for (while holding what it issued, it could wait on a node waiting on it), nor a failure.
    assert subject.held_elsewhere == {"a"} and subject.telemetry.last_success is True
    assert not [record for record in caplog.records if "waiting up to" in record.getMessage()]


def test_the_daemons_health_is_its_own_nodes_in_the_fleet(tmp_path, hangups):
    from certrenew.cli import metrics
    from certrenew.state.nodes import NodeReport, publish

    subject = make(tmp_path, hangups, node_name="web2")
    now = datetime.datetime.now(datetime.timezone.utc)
    publish(subject.store.backend, NodeReport("web1", now, 1, 900.0))
    ok, document = metrics.health(subject.status(), subject.telemetry, subject.fleet())
    assert not ok and document["lag"] == "node web2 has not reported what it serves to the store"
    publish(subject.store.backend, NodeReport("web2", now, 1, 900.0))
    assert metrics.health(subject.status(), subject.telemetry, subject.fleet())[1]["lag"] is None
