"""`renew.run` and `status.collect` over the in-memory store: the paths that need no CA."""

import datetime
import json
import os
import re
import sys
from pathlib import Path
from time import time_ns

import pytest

from certrenew.cli import status
from certrenew.config import CertificateSpec, Settings
from certrenew.errors import CertrenewError, ConfigurationError, OverBudget, UsageError
from certrenew.pki.bundle import CertificateInfo
from certrenew.renewal import renew
from certrenew.renewal.progress import Progress
from certrenew.state import schedule as schedule_module
from certrenew.state.memory import MemoryBackend
from certrenew.state.store import CertificateRecord, FileStore, PendingOrder, Store

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)
PEM_PATH = Path("/ssl/x.pem")
CA = "https://ca.example/directory"
INFO = CertificateInfo("1f", NOW, NOW + 90 * DAY, ("x.example",), "00")


@pytest.fixture
def settings(tmp_path):
    return Settings.of(state_dir=tmp_path / "unused", ssl_dir=tmp_path, directory="https://127.0.0.1:9/none",
                    lock_timeout=0, reload_command="true")


@pytest.fixture
def no_ca(monkeypatch):
    """Reaching for the ACME stack fails the test: these runs have nothing to order."""
    monkeypatch.setitem(sys.modules, "certrenew.renewal.issue", None)


def spec(name):
    return CertificateSpec(name, (f"{name}.example",))


def issued(name, not_before=NOW - 10 * DAY, lifetime=90 * DAY, **fields):
    return CertificateRecord(name, [f"{name}.example"], "ecdsa-p256", serial="1f", not_before=not_before,
                             not_after=not_before + lifetime, **fields)


def test_nothing_due_is_unchanged_and_asks_no_ca(settings, no_ca):
    store = Store(MemoryBackend())
    store.save_record(issued("a"))
    store.save_record(issued("b", ari_next_check=NOW + DAY))
    outcomes = renew.run(settings, [spec("a"), spec("b")], store).outcomes
    assert [(o.name, o.action) for o in outcomes] == [("a", "unchanged"), ("b", "unchanged")]
    renew_at = (NOW - 10 * DAY + 60 * DAY).isoformat(" ", "minutes")[:16]
    assert outcomes[0].detail.startswith(f"not due until {renew_at} UTC (expires ")
    assert not any(outcome.failed for outcome in outcomes)


def test_a_failing_certificate_backs_off_and_its_record_is_left_alone(settings, no_ca):
    store = Store(MemoryBackend())
    failing = issued("a", not_before=NOW - 89 * DAY, failures=3, last_error="connection refused",
                     next_attempt=NOW + DAY)
    store.save_record(failing)
    [outcome] = renew.run(settings, [spec("a")], store)
    assert outcome.action == "deferred" and outcome.failed
    assert "failed 3 time(s) in a row (last: connection refused)" in outcome.detail
    assert store.load_record("a") == failing


def test_an_unreadable_record_fails_its_certificate_only(settings, no_ca):
    store = Store(MemoryBackend())
    store.save_record(issued("a"))
    store.backend.write({"certificates/b/meta.json": b'{"name": "b", "domains": ["b.example"], "key_type": 5}'})
    outcomes = renew.run(settings, [spec("a"), spec("b")], store).outcomes
    assert [(o.name, o.action) for o in outcomes] == [("a", "unchanged"), ("b", "failed")]
    assert outcomes[1].detail == ("corrupt state file memory:certificates/b/meta.json: key_type: expected a string, "
                                  "not 5; repair it, or move it away and the next run orders b anew")


def test_a_record_well_formed_but_inconsistent_fails_its_certificate_alone_in_run_and_status(settings, no_ca):
    store = Store(MemoryBackend())
    store.save_record(issued("a"))
    store.save_record(issued("c"))
    bad = {**issued("b").to_json(), "not_before": None}  # it made the decision fail an assert, and the run end
    store.backend.write({"certificates/b/meta.json": json.dumps(bad).encode()})
    outcomes = renew.run(settings, [spec("a"), spec("b"), spec("c")], store).outcomes
    assert [(o.name, o.action) for o in outcomes] == [("a", "unchanged"), ("b", "failed"), ("c", "unchanged")]
    reason = ("corrupt state file memory:certificates/b/meta.json: not_before and not_after go together, but only "
              "one of them is set; repair it, or move it away and the next run orders b anew")
    assert outcomes[1].detail == reason
    rows = status.collect(settings, [spec("a"), spec("b"), spec("c")], store, now=NOW)
    assert [(row.name, row.state, row.last_result) for row in rows] == [
        ("a", "ok", "ok"), ("b", "failing", f"failed: {reason}"), ("c", "ok", "ok")]


def test_a_fault_nobody_foresaw_while_deciding_fails_that_certificate_alone(settings, no_ca, monkeypatch):
    store = Store(MemoryBackend())
    store.save_record(issued("a"))
    store.save_record(issued("b"))
    load_record = store.load_record
    monkeypatch.setattr(store, "load_record", lambda name: 1 / 0 if name == "a" else load_record(name))
    outcomes = renew.run(settings, [spec("a"), spec("b")], store).outcomes
    assert [(o.name, o.action, o.detail) for o in outcomes] == [
        ("a", "failed", "unexpected ZeroDivisionError: division by zero (run with -v for the traceback)"),
        ("b", "unchanged", outcomes[1].detail)]


def test_a_run_waits_for_the_store_and_gives_up(settings, no_ca):
    store = Store(MemoryBackend())
    store.save_record(issued("a"))
    with store.lock(timeout=0):
        with pytest.raises(CertrenewError, match="gave up after 0 s"):
            renew.run(settings, [spec("a")], store)
    assert renew.run(settings, [spec("a")], store).outcomes[0].action == "unchanged"


def test_status_rows_from_the_store(settings):
    store = Store(MemoryBackend())
    store.save_record(issued("ok"))
    store.save_record(issued("due", not_before=NOW - 70 * DAY))
    store.save_record(issued("expired", not_before=NOW - 91 * DAY))
    store.save_record(issued("failing", not_before=NOW - 70 * DAY, failures=1, last_error="boom",
                             next_attempt=NOW + DAY))
    store.save_record(issued("gone"))
    store.save_order("ordering", store_order())  # an order, never recorded: not a row
    names = ["ok", "due", "expired", "failing", "missing"]
    rows = status.collect(settings, [spec(name) for name in names], store, now=NOW)
    assert [(row.name, row.state) for row in rows] == [
        ("ok", "ok"), ("due", "due"), ("expired", "expired"), ("failing", "failing"), ("missing", "missing"),
        ("gone", "unmanaged")]
    assert status.unhealthy(settings, rows) == "due is due, expired is expired, failing is failing, missing is missing"
    assert rows[0].days_left == pytest.approx(80) and rows[3].last_result == "failed: boom"
    assert rows[3].next_renewal == NOW + DAY  # not before the back-off ends, though due since day 60

    everything = status.collect(settings, None, store, now=NOW)
    assert [row.name for row in everything] == ["due", "expired", "failing", "gone", "ok"]
    assert "unmanaged" not in {row.state for row in everything}


def store_order():
    from certrenew.state.store import PendingOrder
    return PendingOrder("https://ca.example/order/1", ["ordering.example"], "ecdsa-p256", b"KEY")


@pytest.mark.parametrize(("error", "backs_off"), [(CertrenewError("the CA is down"), True),
                                                  (ConfigurationError("bad ACL"), False),
                                                  (UsageError("pass --agree-tos"), False)])
def test_only_the_ca_failing_starts_the_back_off(error, backs_off):
    store = Store(MemoryBackend())
    renew._failed(store, NOW, spec("a"), CA, error)
    record = store.load_record("a")
    assert record is not None and record.last_error == str(error) and record.failures == 1
    assert (record.next_attempt is not None) is backs_off


def test_a_short_lived_certificate_backs_off_for_at_most_a_twelfth_of_its_lifetime():
    store = Store(MemoryBackend())
    store.save_record(issued("a", lifetime=6 * DAY, failures=20))
    renew._failed(store, NOW, spec("a"), CA, CertrenewError("the CA is down"))
    assert store.load_record("a").next_attempt == NOW + 12 * HOUR  # a day would be a third of its 3-day margin


def test_fixing_the_directory_url_ends_a_back_off_earned_against_the_wrong_one(settings, monkeypatch):
    store, now = Store(MemoryBackend()), datetime.datetime.now(datetime.timezone.utc)  # not NOW: the run reads the clock
    wrong = "https://acme.example/wrong-path"
    renew._failed(store, now, spec("a"), wrong, CertrenewError("the CA answered 404"))
    assert store.load_record("a").next_attempt > now  # backing off
    ordered = []

    def work(_settings, _store, _now, work, outcomes, *_):  # what would be ordered, not ordered
        ordered.extend((item.name, step) for item, step in work)
        outcomes.update((item.name, renew.Outcome(item.name, "failed", "not ordered")) for item, _ in work)
        return []
    monkeypatch.setattr(renew, "_work", work)
    [outcome] = renew.run(settings.with_options(directory=wrong), [spec("a")], store)
    assert outcome.action == "deferred" and ordered == []  # the same URL: a retry, held back
    renew.run(settings, [spec("a")], store)  # the URL fixed: a new attempt, at once
    assert ordered == [("a", "issue")]


class RefusingDeployer:
    """Deploys like `Deployer.deploy` into the store, but HAProxy refuses `refused`'s bundle in any batch."""

    def __init__(self, store, refused, error=None):
        from certrenew.errors import Refused
        self.store, self.refused, self.batches = store, refused, []
        self.directory = CA
        self.error = error or Refused(f"HAProxy refused {refused}.pem: bad key; the previous certificates were put back",
                                      [refused])

    def deploy(self, batch):
        from certrenew.haproxy.install import InstallResult
        from certrenew.renewal.deploy import Installed
        self.batches.append([item.spec.name for item in batch])
        if any(item.spec.name == self.refused for item in batch):
            raise self.error
        for item in batch:
            self.store.promote_pending(issued(item.spec.name))
        return [Installed(item, INFO, InstallResult(item.spec.name, INFO, PEM_PATH, "hot update")) for item in batch]


def install_with_b_refused(store, error=None) -> dict:
    """`renew._install` of a, b and c, kept pending, where installing b fails with `error`
    (HAProxy refusing it by default): b fails, and a and c are installed in a second round."""
    from certrenew.renewal.deploy import Issued
    for name in ("a", "b", "c"):
        store.save_pending(name, f"BUNDLE {name}".encode())
    batch = [Issued(spec(name), f"BUNDLE {name}".encode(), "renewed") for name in ("a", "b", "c")]
    deployer = RefusingDeployer(store, "b", error)
    outcomes = renew._install(store, NOW, deployer, batch)
    assert deployer.batches == [["a", "b", "c"], ["a", "c"]]
    assert {name: outcome.action for name, outcome in outcomes.items()} == {"a": "renewed", "b": "failed", "c": "renewed"}
    return outcomes



def test_a_refusal_naming_no_certificate_of_the_batch_fails_the_batch_once():
    """Each round must take one certificate out, or the install loop would never end."""
    from certrenew.errors import Refused
    from certrenew.renewal.deploy import Issued
    store = Store(MemoryBackend())
    store.save_pending("a", b"BUNDLE a")
    deployer = RefusingDeployer(store, "a", Refused("HAProxy refused elsewhere.pem", ["elsewhere"]))
    deploy = deployer.deploy
    deployer.deploy = lambda batch: deploy(batch) if len(deployer.batches) < 3 else pytest.fail("installs for ever")
    outcomes = renew._install(store, NOW, deployer, [Issued(spec("a"), b"BUNDLE a", "renewed")])
    assert deployer.batches == [["a"]] and outcomes["a"].action == "failed"
    assert store.load_bundle("a", "pending") == b"BUNDLE a"  # not set aside: it was not the one refused

def test_a_bundle_haproxy_refuses_is_set_aside_and_the_rest_installed_in_the_same_run(monkeypatch):
    store = Store(MemoryBackend())
    outcomes = install_with_b_refused(store)
    assert "set aside as memory:certificates/b/rejected/" in outcomes["b"].detail
    assert [entry.value for entry in store.backend.list("certificates/b/rejected/").values()] == [b"BUNDLE b"]
    assert not store.unfinished("b")
    record = store.load_record("b")
    assert record.failures == 1 and record.next_attempt is not None  # the next attempt waits for the back-off


class UnmovableStore(Store):
    """Nothing can be set aside: its rename fails as FileStore's does, wrapped in one line."""

    def set_aside(self, name: str, kind: str) -> str:
        raise CertrenewError(f"cannot set aside memory:{name}/{kind}: Read-only file system")


def test_a_refused_certificate_that_cannot_be_set_aside_fails_alone_and_the_rest_is_installed():
    store = UnmovableStore(MemoryBackend())
    outcomes = install_with_b_refused(store)
    assert outcomes["b"].detail == ("HAProxy refused b.pem: bad key; the previous certificates were put back; and it "
                                    "could not be set aside: cannot set aside memory:b/pending: Read-only file system")
    assert store.load_bundle("b", "pending") == b"BUNDLE b"  # still there: nothing lost
    assert store.load_record("b").failures == 1


def test_a_certificate_whose_place_in_the_ssl_dir_is_blocked_fails_alone_and_stays_pending():
    from certrenew.haproxy.install import Blocked
    store = Store(MemoryBackend())
    outcomes = install_with_b_refused(store, Blocked("/ssl/b.pem is a named pipe (FIFO), not a bundle: left alone", ["b"]))
    assert outcomes["b"].detail == ("/ssl/b.pem is a named pipe (FIFO), not a bundle: left alone; "
                                    "the new certificate stays pending for the run after")
    assert store.backend.list("certificates/b/rejected/") == {} and store.load_bundle("b", "pending") == b"BUNDLE b"  # not set aside: nothing lost
    record = store.load_record("b")
    assert record.failures == 1 and record.next_attempt is None  # the operator's to fix: no back-off


def test_a_certificate_not_served_after_its_install_fails_alone_in_its_own_words_and_stays_pending():
    from certrenew.haproxy.install import NotServed
    store = Store(MemoryBackend())
    blame = "served-certificate check: 127.0.0.1:443 serves another certificate for b.example"
    outcomes = install_with_b_refused(store, NotServed(f"b.pem: {blame}", ["b"], {"b": f"{blame}; put back"}))
    assert outcomes["b"].detail == f"{blame}; put back; the new certificate stays pending for the run after"
    assert "b.example" not in outcomes["a"].detail + outcomes["c"].detail  # nobody else is blamed
    assert store.backend.list("certificates/b/rejected/") == {} and store.load_bundle("b", "pending") == b"BUNDLE b"  # kept: HAProxy took it


def test_an_unforeseen_error_fails_its_certificate_only_in_one_line(caplog):
    store = Store(MemoryBackend())

    def step(spec):
        raise KeyError("surprise")
    outcome = renew._attempt(store, NOW, spec("a"), CA, step, Progress())
    assert outcome.action == "failed"
    assert outcome.detail == "unexpected KeyError: 'surprise' (run with -v for the traceback)"
    assert store.load_record("a").failures == 1


def test_an_order_over_budget_waits_until_the_budget_frees_not_for_the_back_off(settings, no_ca):
    store = Store(MemoryBackend())
    store.save_record(issued("a", ari_window_start=NOW - DAY, ari_window_end=NOW + DAY, ari_renew_at=NOW - DAY))
    outcome = renew._failed(store, NOW, spec("a"), settings.acme.directory_url,
                            OverBudget("not ordered: its budget", NOW + 20 * HOUR))
    assert outcome.action == "failed" and store.load_record("a").next_attempt == NOW + 20 * HOUR
    [held] = renew.run(settings, [spec("a")], store)  # due by its window, held back until then
    assert held.action == "deferred" and "its budget" in held.detail
    [row] = status.collect(settings, [spec("a")], store, now=NOW)
    assert (row.state, row.next_renewal) == ("failing", NOW + 20 * HOUR)


def test_status_shows_an_unreadable_record_as_failing_with_the_reason(settings):
    store = Store(MemoryBackend())
    store.save_record(issued("ok"))
    store.backend.write({"certificates/bad/meta.json": b"{not json"})
    rows = status.collect(settings, [spec("ok"), spec("bad")], store, now=NOW)
    assert [(row.name, row.state) for row in rows] == [("ok", "ok"), ("bad", "failing")]
    assert rows[1].last_result.startswith("failed: corrupt state file memory:certificates/bad/meta.json")
    assert [row.state for row in status.collect(settings, None, store, now=NOW)] == ["failing", "ok"]


def test_a_failed_forced_attempt_shows_in_status_but_only_a_due_certificate_is_failing(settings):
    store = Store(MemoryBackend())
    store.save_record(issued("early"))  # served, and not due for 50 days: a --force that failed
    store.save_record(issued("due", not_before=NOW - 89 * DAY))

    def busy(spec):
        raise CertrenewError("port 80 is busy")
    for name in ("early", "due"):
        assert renew._attempt(store, NOW, spec(name), CA, busy, Progress()).action == "failed"
    assert [store.load_record(name).failures for name in ("early", "due")] == [1, 1]  # the faults happened
    rows = status.collect(settings, [spec("early"), spec("due")], store, now=NOW)
    assert [(row.name, row.state, row.last_result) for row in rows] == [
        ("early", "ok", "failed: port 80 is busy"), ("due", "failing", "failed: port 80 is busy")]
    assert status.unhealthy(settings, rows) == "due is failing"
    assert status.unhealthy(settings, rows[:1]) is None


@pytest.mark.parametrize("given, message", [
    (CertificateSpec("../escaped", ("escaped.example",)), "invalid certificate name '../escaped'"),
    (CertificateSpec("site", ("Site.example.",)), "site: domains Site.example. are not in normal form: give site.example"),
    (CertificateSpec("site", ("a.example", "a.example")), "site: duplicate domain 'a.example'"),
    (CertificateSpec("site", ()), "site: no domain given"),
    (CertificateSpec("site", ("2001:DB8::1",)), "site: domains 2001:DB8::1 are not in normal form: give 2001:db8::1"),
    (CertificateSpec("site", ("*.a.example",)), "site: invalid domain '*.a.example': wildcard certificates need "
                                                "the DNS-01 challenge"),
    (CertificateSpec("site", ("a.example",), challenge="tls-alpn-02"), "site: unknown challenge type 'tls-alpn-02'"),
])
def test_the_library_refuses_a_certificate_it_could_not_keep_before_writing_anything(tmp_path, given, message):
    settings = Settings.of(state_dir=tmp_path / "state", ssl_dir=tmp_path / "ssl", reload_command="true")
    (tmp_path / "ssl").mkdir()
    with pytest.raises(UsageError, match=re.escape(message)):
        renew.run(settings, [spec("fine"), given])
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["ssl"]


class FillingStore(Store):
    """Its disk is full for one certificate's record: promoting that one fails, after the others."""

    def __init__(self, full: str) -> None:
        super().__init__(MemoryBackend())
        self.full = full

    def save_record(self, record: CertificateRecord) -> None:
        if record.name == self.full:
            raise CertrenewError(f"cannot write memory:{record.name}/record: No space left on device")
        super().save_record(record)

    def promote_pending(self, record: CertificateRecord) -> None:  # the record is written with the bundles
        if record.name == self.full:
            raise CertrenewError(f"cannot write memory:{record.name}/record: No space left on device")
        super().promote_pending(record)


def pending_bundle(store, name: str) -> bytes:
    """A certificate a previous run issued and could not install: this run installs it, asking no CA."""
    import trustme

    from certrenew.pki.bundle import build_bundle
    cert = trustme.CA().issue_cert(f"{name}.example")
    bundle = build_bundle(b"".join(blob.bytes() for blob in cert.cert_chain_pems), cert.private_key_pem.bytes())
    store.save_pending(name, bundle)
    return bundle


def test_a_certificate_that_cannot_be_recorded_fails_alone_the_others_served_recorded_and_deployed(tmp_path):
    """HAProxy takes the batch (a real install into an ssl dir); recording the second fails."""
    from certrenew.pki.bundle import leaf_info
    (tmp_path / "ssl").mkdir()
    deployed = tmp_path / "deployed"
    settings = Settings.of(state_dir=tmp_path / "unused", ssl_dir=tmp_path / "ssl", directory="https://127.0.0.1:9/none",
                        reload_command="true", deploy_hook=f"sh -c 'echo $CERTRENEW_NAME >> {deployed}'",
                        lock_timeout=0, timeout=1)
    store = FillingStore("b")
    bundles = {name: pending_bundle(store, name) for name in ("a", "b", "c")}
    report = renew.run(settings, [spec("a"), spec("b"), spec("c")], store)
    outcomes = {outcome.name: outcome for outcome in report}
    assert {name: outcome.action for name, outcome in outcomes.items()} == {"a": "installed", "b": "failed",
                                                                           "c": "installed"}
    assert all((tmp_path / "ssl" / f"{name}.pem").read_bytes() == bundles[name] for name in bundles)  # all served
    serial = leaf_info(bundles["b"]).serial
    assert outcomes["b"].detail.startswith("cannot write memory:b/record: No space left on device; HAProxy serves it "
                                           f"(serial {serial}, ")
    assert "but it is not recorded as current: the next run records it" in outcomes["b"].detail
    assert outcomes["b"].served is None and outcomes["a"].served is not None
    assert deployed.read_text().split() == ["a", "c"]  # the deploy hook for what is served and recorded
    for name in ("a", "c"):
        assert store.load_bundle(name) == bundles[name] and not store.unfinished(name)
        assert store.load_record(name).serial == leaf_info(bundles[name]).serial
    assert store.load_bundle("b", "pending") == bundles["b"] and store.load_record("b") is None  # kept for the next run

    store.full = ""  # room again: the next run records it, and deploys it
    [again] = renew.run(settings, [spec("b")], store)
    assert again.action == "installed" and store.load_record("b").serial == serial, again.detail
    assert deployed.read_text().split() == ["a", "c", "b"]


def test_a_certificate_another_process_renewed_while_the_run_waited_for_its_lock_is_left_alone(settings):
    """The run decides again once it holds the lock: the other holder's renewal stands, no CA is asked."""
    import logging
    import threading

    store = Store(MemoryBackend())
    store.save_record(issued("a", not_before=NOW - 89 * DAY))  # due
    other = Store(store.backend, holder="the daemon")  # another process on the same state
    waiting = threading.Event()

    class Waits(logging.Handler):
        def emit(self, record):
            if "waiting up to" in record.getMessage():
                waiting.set()
    handler = Waits()
    logging.getLogger("certrenew.state.memory").addHandler(handler)
    try:
        with other.certificate("a", wait=0):
            runner = threading.Thread(target=lambda: outcomes.extend(
                renew.run(settings.with_options(lock_timeout=60, self_check=False), [spec("a")],
                                          store).outcomes))
            outcomes: list = []
            runner.start()
            assert waiting.wait(30), "the run never waited for the lock"
            other.save_record(issued("a"))  # renewed meanwhile
        runner.join(30)
    finally:
        logging.getLogger("certrenew.state.memory").removeHandler(handler)
    [outcome] = outcomes
    assert outcome.action == "unchanged" and outcome.detail.startswith("not due until"), outcome


def test_a_run_waits_for_a_busy_lock_only_once_it_holds_none(settings, monkeypatch):
    """Another process holds b and, once this run has issued a (whose lock a run keeps until its install),
    waits for a. Had the run waited for b meanwhile, each would wait out --lock-timeout on the other;
    it leaves b for after its install of a, then waits for it holding nothing, and renews both."""
    import threading
    import time

    from certrenew.renewal.deploy import Issued
    from certrenew.renewal.issue import Issuer
    from certrenew.renewal.policy import Action

    store = Store(MemoryBackend())
    for name in ("a", "b"):
        store.save_record(issued(name, not_before=NOW - 89 * DAY))  # both due
    other = Store(store.backend, holder="another run")
    holds_b, a_issued, other_got_a = threading.Event(), threading.Event(), threading.Event()

    def issue(self, spec):
        if spec.name == "a":
            a_issued.set()
        return Issued(spec, f"BUNDLE {spec.name}".encode(), Action.RENEWED)

    installed: list[list[str]] = []

    def install(store, now, deployer, batch):
        installed.append([item.spec.name for item in batch])
        return {item.spec.name: renew.Outcome(item.spec.name, Action.RENEWED, "installed") for item in batch}

    monkeypatch.setattr(Issuer, "issue", issue)
    monkeypatch.setattr(renew, "_install", install)

    def other_run():
        with other.certificate("b", wait=0):
            holds_b.set()
            assert a_issued.wait(10)
            with other.certificate("a", wait=10):  # what a run holding b and wanting a does
                other_got_a.set()

    runner = threading.Thread(target=other_run)
    runner.start()
    assert holds_b.wait(10)
    started = time.monotonic()
    report = renew.run(settings.with_options(lock_timeout=10, self_check=False, concurrency=2), [spec("a"), spec("b")],
                       store)
    runner.join(10)
    assert other_got_a.is_set() and time.monotonic() - started < 5, "the run and the other waited on each other"
    assert [(outcome.name, outcome.action) for outcome in report] == [("a", "renewed"), ("b", "renewed")]
    assert installed == [["a"], ["b"]]  # b waited for, and installed, after a's install let a go


def kept_token(store: FileStore, name: str) -> list[int]:
    return json.loads((store.root / "schedule.json").read_bytes())["certificates"][name][0]


def settled(store: FileStore, *names: str) -> None:
    """Give the certificates' directories and records a time a minute old, as between two timer runs (see
    `schedule.SETTLE_NS`)."""
    old = time_ns() - 60 * 10**9
    for name in names:
        os.utime(store.root / "certificates" / name / "meta.json", ns=(old, old))
        os.utime(store.root / "certificates" / name, ns=(old, old))


@pytest.fixture
def scheduled(settings, tmp_path, monkeypatch):
    """A state dir whose certificates a and b were found not due by a run a minute ago: the store, the names
    whose records later runs read, and that run's outcomes."""
    store = FileStore(tmp_path / "state")
    store.save_record(issued("a"))
    store.save_record(issued("b", ari_next_check=NOW + DAY))
    settled(store, "a", "b")
    first = renew.run(settings, [spec("a"), spec("b")], store).outcomes
    assert [(o.name, o.action) for o in first] == [("a", "unchanged"), ("b", "unchanged")]
    read: list[str] = []
    load_record = Store.load_record
    monkeypatch.setattr(Store, "load_record", lambda self, name: read.append(name) or load_record(self, name))
    return store, read, first


def test_a_no_op_run_reads_no_record_the_last_one_found_not_due(settings, no_ca, scheduled):
    store, read, first = scheduled
    again = renew.run(settings, [spec("a"), spec("b")], store).outcomes
    assert again == first and read == []
    assert renew.run(settings.with_options(renew_before=70 * DAY), [spec("a")], store).outcomes[0].detail != \
        first[0].detail and read == ["a"]  # other settings: decided again, and said so


def test_a_schedule_another_certrenew_kept_is_not_taken(settings, no_ca, scheduled, monkeypatch):
    """An upgrade may decide otherwise (a renewal rule changed): its first run reads every record."""
    store, read, first = scheduled
    monkeypatch.setattr(renew, "__version__", "99.0")
    assert renew.run(settings, [spec("a"), spec("b")], store).outcomes == first and read == ["a", "b"]


@pytest.mark.parametrize("change", ["revoked", "pending", "order", "names", "key type", "time", "renewal info"])
def test_a_certificate_changed_since_the_last_no_op_run_is_decided_again(settings, no_ca, scheduled, change,
                                                                         monkeypatch):
    store, read, _ = scheduled
    certificate, now = spec("a"), NOW
    if change == "revoked":  # by another process, a minute ago
        store.save_record(issued("a", revoked=NOW))
    elif change == "pending":
        store.save_pending("a", b"BUNDLE")
    elif change == "order":
        store.save_order("a", PendingOrder("https://ca.example/order/1", ["a.example"], "ecdsa-p256", b"KEY"))
    elif change == "names":
        certificate = CertificateSpec("a", ("a.example", "www.a.example"))
    elif change == "key type":
        certificate = CertificateSpec("a", ("a.example",), "rsa2048")
    elif change == "time":
        now = NOW + 70 * DAY  # past its renewal time
    else:
        certificate, now = spec("b"), NOW + 2 * DAY  # past the time to ask the CA's renewal information again
    written = change in ("revoked", "pending", "order")
    if written:  # trusted however recent: the write itself must have changed the certificate's version
        monkeypatch.setattr(schedule_module, "SETTLE_NS", 0)
    schedule = store.schedule(renew._schedule_settings(settings))
    step = renew._step(settings, store, certificate, now, quiet=True, schedule=schedule)
    expected = {"pending": renew.Step.RESUME, "order": renew.Step.RESUME, "renewal info": renew.Step.CHECK}
    assert step == expected.get(change, renew.Step.ISSUE)
    assert read == ([] if change in ("pending", "order") else [certificate.name])
    token, kept = schedule.token(certificate.name), kept_token(store, certificate.name)
    assert token != kept if written else token == kept  # the write changed its version; else the change alone decided


@pytest.mark.parametrize("unsafe", ["group-writable", "symbolic link"])
def test_a_record_made_unsafe_since_the_last_no_op_run_is_refused_as_a_read_refuses_it(settings, no_ca, scheduled,
                                                                                      unsafe):
    store, _, _ = scheduled
    record = store.root / "certificates" / "a" / "meta.json"
    if unsafe == "group-writable":
        record.chmod(0o664)  # a chmod leaves the modification times as they were
        refusal = "writable by group or others"
    else:
        os.symlink(record.parent / "meta.json.real", record.parent / "link")
        os.rename(record, record.parent / "meta.json.real")
        os.rename(record.parent / "link", record)
        settled(store, "a")
        os.utime(record, ns=(time_ns() - 60 * 10**9,) * 2, follow_symlinks=False)  # the link's own time, settled
        refusal = "it is a symbolic link"
    [outcome] = renew.run(settings, [spec("a")], store)
    assert outcome.action == "failed" and refusal in outcome.detail, outcome
