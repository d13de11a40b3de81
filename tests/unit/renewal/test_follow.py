"""The follower's logic over the in-memory store: what a node installs, leaves, removes and reports of what
the fleet's store holds. HAProxy here is a reload command that counts its calls; the real three-node fleet
on etcd is tests/integration/test_fleet_follow.py."""

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from certrenew.cli import daemon, metrics
from certrenew.cli.status import CertificateStatus, State
from certrenew.config import CertificateSpec, HaproxySettings, Settings
from certrenew.errors import StoreUnreachable
from certrenew.pki.bundle import build_bundle, leaf_info
from certrenew.pki.keys import generate_key, key_to_pem
from certrenew.pki.placeholder import PLACEHOLDER_FILE
from certrenew.renewal import follow
from certrenew.renewal.follow import Follower
from certrenew.state.backend import Changes, Entry
from certrenew.state.memory import MemoryBackend
from certrenew.state.nodes import reports
from certrenew.state.store import Store
from certrenew.system import signals
from tests.harness.lab import poll

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


@pytest.fixture
def hangups():
    with signals.Hangups() as installed:
        yield installed


def bundle(name: str, issued: datetime.datetime = NOW, key=None) -> bytes:
    """A self-signed bundle for `name`, issued (notBefore) at `issued`; signed with `key` (else its own)."""
    own = generate_key("ecdsa-p256")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(own.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(issued)
            .not_valid_after(issued + 90 * DAY)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(own, hashes.SHA256()))
    return build_bundle(cert.public_bytes(serialization.Encoding.PEM), key_to_pem(key or own))


@pytest.fixture
def node(tmp_path):
    """A node's follower over a store shared in memory; its reload command counts the reloads in a file."""
    ssl_dir, reloads = tmp_path / "ssl", tmp_path / "reloads"
    ssl_dir.mkdir()
    store = Store(MemoryBackend())
    haproxy = HaproxySettings(ssl_dir=ssl_dir, reload_command=f"sh -c 'echo >> {reloads}'")
    follower = Follower(haproxy, store, "node2", 900.0)
    follower.reloads = lambda: len(reloads.read_text().splitlines()) if reloads.exists() else 0
    return follower


def promote(store: Store, name: str, content: bytes) -> int:
    """What the issuing node's `promote_pending` writes of a certificate: its current bundle and its record."""
    return store.backend.write({f"certificates/{name}/current.pem": content,
                                f"certificates/{name}/meta.json": b"{}"})


def served(follower: Follower, name: str) -> bytes | None:
    path = follower.installer.path_of(name)
    return path.read_bytes() if path.exists() else None


def the_report(follower: Follower):
    [report], unreadable = reports(follower.store.backend)
    assert not unreadable
    return report


def test_a_node_installs_in_one_batch_what_the_store_holds_and_its_ssl_dir_lacks_or_holds_older(node):
    a_old, a_new, b = bundle("a.example", NOW - DAY), bundle("a.example"), bundle("b.example")
    (node.installer.ssl_dir / "a.example.pem").write_bytes(a_old)
    promote(node.store, "a.example", a_new)
    revision = promote(node.store, "b.example", b)
    node.catch_up()
    assert served(node, "a.example") == a_new and served(node, "b.example") == b
    assert node.reloads() == 1  # one batch
    report = the_report(node)
    assert (report.node, report.revision, report.behind) == ("node2", revision, {})
    assert report.serves("a.example", revision) and report.serves("b.example", revision)


def test_what_the_node_serves_already_is_not_installed_again(node):
    """The issuing node installed it before it promoted it: the follower sees its own node's write."""
    content = bundle("a.example")
    (node.installer.ssl_dir / "a.example.pem").write_bytes(content)
    revision = promote(node.store, "a.example", content)
    node.apply(Changes(revision, {"certificates/a.example/current.pem": Entry(content, revision),
                                  "certificates/a.example/meta.json": Entry(b"{}", revision)}))
    assert node.reloads() == 0
    assert the_report(node).revision == revision


def test_a_newer_certificate_than_the_stores_is_left_served_and_said_to_be_behind(node):
    newer, older = bundle("a.example"), bundle("a.example", NOW - DAY)
    (node.installer.ssl_dir / "a.example.pem").write_bytes(newer)
    revision = promote(node.store, "a.example", older)
    node.catch_up()
    assert served(node, "a.example") == newer and node.reloads() == 0
    lag = the_report(node).behind["a.example"]
    assert lag.serving == leaf_info(newer).serial and "issued after the store's current" in lag.error
    assert not the_report(node).serves("a.example", revision)


def test_a_bundle_that_cannot_be_served_is_behind_and_the_others_are_installed(node):
    good = bundle("b.example")
    promote(node.store, "a.example", bundle("a.example", key=generate_key("ecdsa-p256")))  # not its key
    revision = promote(node.store, "b.example", good)
    node.catch_up()
    assert served(node, "b.example") == good and served(node, "a.example") is None
    report = the_report(node)
    assert report.serves("b.example", revision) and not report.serves("a.example", revision)
    assert report.behind["a.example"].serving is None
    assert "a key that is not its certificate's" in report.behind["a.example"].error


def test_a_certificate_the_fleet_removed_is_removed_and_the_last_leaves_the_placeholder(node):
    content = bundle("a.example")
    promote(node.store, "a.example", content)
    node.catch_up()
    node.store.archive("a.example", "20261205T120000Z")  # what revoke --delete does on another node
    revision = node.store.backend.list("removed/")["removed/a.example-20261205T120000Z/meta.json"].version
    node.apply(Changes(revision, {"certificates/a.example/current.pem": None, "certificates/a.example/meta.json": None}))
    assert served(node, "a.example") is None
    assert (node.installer.ssl_dir / PLACEHOLDER_FILE).exists()  # HAProxy can still start
    assert the_report(node).revision == revision


def test_a_resync_removes_what_the_fleet_archived_and_leaves_every_other_bundle_of_the_ssl_dir(node):
    """After a compaction (or at a reconcile) deletions come as absences: only an archived serial is the fleet's."""
    fleets, operators = bundle("a.example"), bundle("own.example")
    (node.installer.ssl_dir / "own.example.pem").write_bytes(operators)
    promote(node.store, "a.example", fleets)
    node.catch_up()
    node.store.archive("a.example", "20261205T120000Z")
    node.catch_up()  # a complete read: a.example is simply not there
    assert served(node, "a.example") is None and served(node, "own.example") == operators


def test_a_certificate_renamed_in_the_store_is_not_removed_while_an_archive_of_another_serial_exists(node):
    current = bundle("a.example")
    (node.installer.ssl_dir / "a.example.pem").write_bytes(current)
    node.store.backend.write({"removed/a.example-20200101T000000Z/current.pem": bundle("a.example", NOW - DAY)})
    node.catch_up()
    assert served(node, "a.example") == current


def test_a_daemon_catching_up_is_not_healthy_whatever_its_certificates_say():
    rows = [CertificateStatus("a", ["a.example"], State.OK, "0a", NOW + 60 * DAY, 60.0, NOW + 30 * DAY, None, 0)]
    assert metrics.health(rows, metrics.Telemetry(pass_errors=0))[0]
    ok, document = metrics.health(rows, metrics.Telemetry(pass_errors=0, catching_up=True))
    assert not ok and document["catching_up"] is True and not document["healthy"]


def test_a_node_started_while_the_store_is_away_does_not_wait_for_it_and_catches_up_once_it_answers(
        node, monkeypatch):
    """Its daemon says READY (systemd would kill one that does not), unhealthy until the thread has caught up."""
    monkeypatch.setattr(follow, "WATCH", 0.01)
    monkeypatch.setattr(follow, "RETRY_PAUSE", 0.01)
    content = bundle("a.example")
    promote(node.store, "a.example", content)
    real_watch, away = node.store.backend.watch, [True]

    def watch(prefix, after, timeout):
        if away[0]:
            raise StoreUnreachable("etcd at 127.0.0.1:2379 did not answer")
        return real_watch(prefix, after, timeout)

    monkeypatch.setattr(node.store.backend, "watch", watch)
    caught_up: list[bool] = []
    node.caught_up = lambda: caught_up.append(True)
    node.catch_up()  # returns: the store is away
    assert served(node, "a.example") is None and not caught_up
    with node:
        away[0] = False
        poll("caught up once the store answers", lambda: caught_up and served(node, "a.example") == content,
             timeout=30)
    assert caught_up == [True]  # once


def test_an_event_the_watch_missed_is_made_good_by_the_next_reconcile(node, monkeypatch):
    monkeypatch.setattr(follow, "WATCH", 0.01)  # each watch comes back at once with nothing new
    content = bundle("a.example")
    node.revision = promote(node.store, "a.example", content)  # as if applied: its event was lost
    node.reconcile_interval = 0.05
    with node:
        poll("the reconcile installing what the watch never brought", lambda: served(node, "a.example") == content,
             timeout=30)
    assert the_report(node).behind == {}


def test_a_sighup_moves_the_followers_ssl_dir_and_interval(tmp_path, hangups):
    ssl_dir = tmp_path / "elsewhere"
    settings = Settings.of(ssl_dir=tmp_path / "ssl", lock_timeout=0)
    backend = MemoryBackend()
    backend.shared = True  # as etcd is
    specs = [CertificateSpec("a", ("a.example",))]
    reread = (settings.with_options(ssl_dir=ssl_dir, reconcile_interval=datetime.timedelta(minutes=5)), specs)
    subject = daemon.Daemon(settings, specs, Store(backend), lambda: reread, hangups)
    assert subject.telemetry.catching_up and subject.follower is not None
    assert subject.follower.reconcile_interval == 900.0
    subject.reload()
    assert subject.follower.installer.ssl_dir == ssl_dir and subject.follower.reconcile_interval == 300.0
