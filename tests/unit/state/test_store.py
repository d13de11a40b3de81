import datetime
import json
import os
import stat
from pathlib import Path

import pytest

import certrenew.state.files as files_module
import certrenew.state.store as store_module
from certrenew.errors import CertrenewError
from certrenew.state.memory import MemoryBackend
from certrenew.state.store import Account, CertificateRecord, FileStore, PendingOrder, Store

WHEN = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
ORDER = PendingOrder("https://ca.example/order/1", ["a.example"], "ecdsa-p256", b"-----KEY-----\n")


@pytest.fixture(params=["file", "memory"])
def store(request, tmp_path):
    """Each store, held as a run holds it: the contract below holds for both."""
    store = FileStore(tmp_path / "state") if request.param == "file" else Store(MemoryBackend())
    with store.lock(timeout=0):
        yield store


@pytest.fixture
def files(tmp_path):
    store = FileStore(tmp_path / "state")
    with store.lock(timeout=0):
        yield store


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


# The contract every store keeps.

def test_an_account_per_ca(store):
    store.save_account("https://ca.example/dir", Account(b"KEY", "https://ca.example/acct/1"))
    assert store.load_account("https://ca.example/dir") == Account(b"KEY", "https://ca.example/acct/1")
    assert store.load_account("https://other.example/dir") is None


def test_an_account_key_made_meanwhile_elsewhere_stays_the_ca_s_one_account(store):
    """A run whose account lock lapsed (paused past its lease), or `haproxy-config --create-account` beside a
    run, makes a key after another made one: the first stays (HAProxy answers with its thumbprint), and the
    late one is handed the stored account to use instead of writing its own over it."""
    first = store.save_account("https://ca.example/dir", Account(b"FIRST KEY", None))
    late = store.save_account("https://ca.example/dir", Account(b"LATE KEY", None))
    assert store.load_account("https://ca.example/dir") == Account(b"FIRST KEY", None)
    assert first == late == Account(b"FIRST KEY", None)
    registered = store.save_account("https://ca.example/dir", Account(b"FIRST KEY", "https://ca.example/acct/1"))
    assert store.load_account("https://ca.example/dir") == registered == Account(b"FIRST KEY",
                                                                                  "https://ca.example/acct/1")


def test_record_round_trips_with_every_time(store):
    record = CertificateRecord("a", ["a.example", "www.a.example"], "rsa2048", serial="ab", last_error="boom",
                               failures=2, recent_issues=[WHEN, WHEN],
                               **{key: WHEN for key in CertificateRecord.DATETIMES})
    assert store.load_record("a") is None
    store.save_record(record)
    assert store.load_record("a") == record
    assert store.load_record("a") is not store.load_record("a")  # a copy: changing it changes nothing stored
    assert store.names() == ["a"]


def test_pending_becomes_current_and_current_becomes_previous(store):
    record = CertificateRecord("a", ["a.example"], "ecdsa-p256")
    with pytest.raises(CertrenewError, match="no pending certificate"):
        store.promote_pending(record)
    store.save_pending("a", b"ONE")
    assert store.unfinished("a")
    store.promote_pending(record)
    assert not store.unfinished("a")
    store.save_pending("a", b"TWO")
    assert store.load_bundle("a") == b"ONE"
    store.promote_pending(record)
    assert (store.load_bundle("a"), store.load_bundle("a", "previous")) == (b"TWO", b"ONE")
    assert store.load_bundle("a", "pending") is None and store.load_record("a") == record



def failing_write_of(monkeypatch, file: str) -> list[str]:
    """Make the FileStore's writing of `file`'s data fail (a full disk); return the names it was asked to write."""
    from certrenew.state import files as store_module
    real, asked = store_module.stage, []

    def stage(path, *args, **kwargs):
        asked.append(Path(path).name)
        if Path(path).name == file:
            raise OSError(28, "No space left on device")
        return real(path, *args, **kwargs)
    monkeypatch.setattr(store_module, "stage", stage)
    return asked


def test_a_promotion_cut_short_keeps_the_pending_certificate(files, monkeypatch):
    """A promotion whose files cannot all be written (a full disk) does nothing: the certificate the CA
    issued stays pending, for the next run to install, never current without its record."""
    files.save_pending("a", b"ONE")
    for step in ("current.pem", "meta.json"):
        asked = failing_write_of(monkeypatch, step)
        with pytest.raises(CertrenewError, match="No space left on device"):
            files.promote_pending(CertificateRecord("a", ["a.example"], "ecdsa-p256"))
        assert step in asked  # the fault really happened
        monkeypatch.undo()
        assert files.load_bundle("a", "pending") == b"ONE" and files.load_bundle("a") is None
        assert files.load_record("a") is None
        assert not [path for path in files.root.rglob("*") if path.is_file() and path.name.startswith(".")]  # no temp
    files.promote_pending(CertificateRecord("a", ["a.example"], "ecdsa-p256"))  # once the disk has room
    assert files.load_bundle("a", "pending") is None and files.load_bundle("a") == b"ONE"
    assert files.load_record("a") == CertificateRecord("a", ["a.example"], "ecdsa-p256")


def test_a_pending_certificate_is_never_saved_without_its_ca(files, monkeypatch):
    asked = failing_write_of(monkeypatch, "pending.json")
    with pytest.raises(CertrenewError, match="No space left on device"):
        files.save_pending("a", b"ONE", "https://ca.example/dir")
    assert asked[0] == "pending.json"  # the fault really happened, before any file of the write was replaced
    monkeypatch.undo()
    assert files.load_bundle("a", "pending") is None and not files.unfinished("a")
    assert not (files.root / "certificates" / "a").exists()  # not even its directory: the write did nothing
    files.save_pending("a", b"ONE", "https://ca.example/dir")
    assert files.load_bundle("a", "pending") == b"ONE" and files.pending_directory("a") == "https://ca.example/dir"


def test_a_discarded_pending_certificate_is_gone(store):
    store.save_pending("a", b"ONE")
    store.discard_pending("a")
    store.discard_pending("a")  # already gone: no error
    assert store.load_bundle("a", "pending") is None and not store.unfinished("a")


def test_archive_moves_a_certificate_out_of_sight_and_keeps_it(files):
    files.save_record(CertificateRecord("a", ["a.example"], "ecdsa-p256"))
    files.save_pending("a", b"ONE")
    files.promote_pending(files.load_record("a"))
    backup = files.archive("a", "20260102T030405Z")
    backup = Path(backup)
    assert backup == files.root / "removed" / "a-20260102T030405Z"
    assert (backup / "current.pem").read_bytes() == b"ONE" and mode(backup.parent) == 0o700
    assert files.names() == [] and files.load_bundle("a") is None


def test_a_certificate_with_many_bundles_set_aside_is_archived_whole_in_steps(store, monkeypatch):
    """More than one write moves (store.MOVE_BATCH, within an etcd transaction): copies first, then removals
    (a state dir from before SET_ASIDE_KEPT may hold that many)."""
    monkeypatch.setattr(store_module, "SET_ASIDE_KEPT", 2 * store_module.MOVE_BATCH)
    store.save_pending("a", b"SERVED")
    store.promote_pending(CertificateRecord("a", ["a.example"], "ecdsa-p256"))
    for _ in range(store_module.MOVE_BATCH):
        store.save_pending("a", b"REFUSED")
        store.set_aside("a", "pending")
    kept = {key.split("/", 2)[2]: entry.value for key, entry in store.backend.list("certificates/a/").items()}
    assert len(kept) > store_module.MOVE_BATCH
    store.archive("a", "20260102T030405Z")
    assert store.backend.list("certificates/a/") == {} and store.names() == []
    assert {key.split("/", 2)[2]: entry.value
            for key, entry in store.backend.list("removed/a-20260102T030405Z/").items()} == kept


def test_only_the_newest_items_set_aside_are_kept(store, monkeypatch):
    """A CA handing out a broken certificate at every attempt would otherwise fill the disk, or etcd, with them."""
    stamps = iter(WHEN + datetime.timedelta(seconds=second) for second in range(100))
    monkeypatch.setattr(store_module, "_utc_now", lambda: next(stamps))
    for index in range(store_module.SET_ASIDE_KEPT + 3):
        store.save_pending("a", f"REFUSED {index}".encode())
        store.set_aside("a", "pending")
    store.save_order("a", ORDER)
    store.set_aside("a", "order")
    kept = sorted(key.rsplit("/", 1)[1] for key in store.backend.list("certificates/a/rejected/"))
    assert len(kept) == store_module.SET_ASIDE_KEPT and kept[-1].endswith("-order.json"), kept
    values = [store.backend.get(f"certificates/a/rejected/{name}").value for name in kept[:-1]]
    assert values == [f"REFUSED {index}".encode() for index in range(4, store_module.SET_ASIDE_KEPT + 3)]


def test_a_validated_order_is_kept_until_its_certificate_is_pending(store):
    assert not store.unfinished("a.example")
    store.save_order("a.example", ORDER)
    assert store.unfinished("a.example") and store.load_order("a.example") == ORDER
    store.save_pending("a.example", b"BUNDLE")
    assert store.load_order("a.example") is None and store.unfinished("a.example")
    store.save_order("b.example", ORDER)
    store.discard_order("b.example")
    assert store.load_order("b.example") is None and not store.unfinished("b.example")


def test_names_are_every_certificate_with_state(store):
    store.save_record(CertificateRecord("b", ["b.example"], "ecdsa-p256"))
    store.save_order("a", ORDER)
    assert store.names() == ["a", "b"]


def test_one_run_holds_the_store_at_a_time(store):
    # The fixture holds the lock, as a run does: a second run gives up.
    with pytest.raises(CertrenewError, match="gave up after 0.2 s"):
        with store.lock(timeout=0.2):
            pass


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_the_lock_is_released_when_the_run_ends_however_it_ends(kind, tmp_path):
    store = FileStore(tmp_path / "state") if kind == "file" else Store(MemoryBackend())
    with pytest.raises(RuntimeError):
        with store.lock(timeout=0):
            raise RuntimeError("the run failed")
    with store.lock(timeout=0):
        pass


# The file store: layout, permissions, temps, and the files on disk.

def test_layout_is_private(files):
    files.save_account("https://ca.example/dir", Account(b"KEY", "https://ca.example/acct/1"))
    files.save_pending("a", b"BUNDLE")
    assert mode(files.root) == 0o700
    assert mode(next(files.root.glob("accounts/*/key.pem"))) == 0o600
    assert mode(files.root / "certificates" / "a" / "pending.pem") == 0o600


def test_every_state_file_carries_its_format_version(files):
    files.save_account("https://ca.example/dir", Account(b"KEY", None))
    files.save_record(CertificateRecord("a", ["a.example"], "ecdsa-p256", not_after=WHEN))
    files.save_order("a", ORDER)
    written = [*files.root.glob("accounts/*/account.json"), *files.root.glob("certificates/a/*.json")]
    assert len(written) == 3
    assert all(json.loads(path.read_text())["version"] == 1 for path in written)


def test_a_file_without_a_version_is_read_as_version_1(files):
    (files.root / "certificates" / "a").mkdir()
    old = {"name": "a", "domains": ["a.example"], "key_type": "ecdsa-p256", "not_before": WHEN.isoformat(),
           "not_after": WHEN.isoformat()}
    (files.root / "certificates" / "a" / "meta.json").write_text(json.dumps(old))
    assert files.load_record("a") == CertificateRecord("a", ["a.example"], "ecdsa-p256", not_before=WHEN,
                                                       not_after=WHEN)


@pytest.mark.parametrize("content, error", [
    ("{not json", r"corrupt state file .*/certificates/a/meta.json: Expecting property name"),
    ("[]", r"corrupt state file .*/certificates/a/meta.json: expected a JSON object, not list"),
    ('{"name": "a", "key_type": "rsa2048"}', r"corrupt state file .*/a/meta.json: .*missing 1 required positional argument: 'domains'"),
    ('{"name": "a", "domains": "a.example", "key_type": "rsa2048"}', r"meta.json: domains: expected a list"),
    ('{"name": "a", "domains": [], "key_type": "rsa2048", "failures": "2"}',
     r"meta.json: failures: expected a whole number, not '2'"),
    ('{"name": "a", "domains": [], "key_type": "rsa2048", "not_after": 5}', r"meta.json: not_after: expected a string"),
    ('{"name": "a", "domains": [], "key_type": "rsa2048", "not_after": "soon"}', r"meta.json: Invalid isoformat"),
    ('{"name": "a", "domains": [], "key_type": "rsa2048", "not_after": "2026-01-02T03:04:05"}',
     r"meta.json: not_after: '2026-01-02T03:04:05' has no time zone"),
    ('{"version": 2, "name": "a"}', r"state file .*/a/meta.json has format version 2; this certrenew reads version 1"),
    ('{"name": "a", "domains": [], "key_type": "rsa2048"}\n{"name": "b"', r"meta.json: extra data after the document"),
    # Each field well-typed, the whole inconsistent: refused when read, not when the decision trips on it.
    ('{"name": "a", "domains": [], "key_type": "rsa2048", "not_before": null, "not_after": "2026-01-02T03:04:05+00:00"}',
     r"meta.json: not_before and not_after go together, but only one of them is set; repair it, or move it "
     r"away and the next run orders a anew"),
    ('{"name": "a", "domains": [], "key_type": "rsa2048", "not_before": "2026-02-01T00:00:00+00:00", '
     '"not_after": "2026-01-01T00:00:00+00:00"}', r"meta.json: not_before 2026-02-01T00:00:00\+00:00 is after not_after"),
    ('{"name": "a", "domains": [], "key_type": "rsa2048", "ari_window_start": "2026-01-01T00:00:00+00:00"}',
     r"meta.json: ari_window_start and ari_window_end go together"),
    ('{"name": "a", "domains": [], "key_type": "rsa2048", "failures": -1}', r"meta.json: failures: expected a whole number"),
    ('{"name": "a", "domains": [], "key_type": "rsa2048", "failures": true}', r"meta.json: failures: expected a whole number"),
    ('{"name": "b", "domains": [], "key_type": "rsa2048"}', r"meta.json: name: 'b', but this is the record of 'a'"),
    ('{"name": "a", "domains": [], "key_type": "rsa2048", "recent_issues": "2026-01-01T00:00:00+00:00"}',
     r"meta.json: recent_issues: expected a list of times"),
    ('{"name": "a", "domains": [], "key_type": "rsa2048", "recent_issues": null}',
     r"meta.json: recent_issues: expected a list of times, not None"),
    ('{"name": "a", "domains": [], "key_type": "rsa2048", "recent_issues": 0}',
     r"meta.json: recent_issues: expected a list of times, not 0"),
    ('{"name": "a", "domains": [], "key_type": "rsa2048", "recent_issues": ["2026-01-01"]}',
     r"meta.json: recent_issues: '2026-01-01' has no time zone"),
])
def test_a_bad_record_is_a_clear_error_naming_its_file(files, content, error):
    (files.root / "certificates" / "a").mkdir()
    (files.root / "certificates" / "a" / "meta.json").write_text(content)
    with pytest.raises(CertrenewError, match=error):
        files.load_record("a")


def test_a_record_of_a_newer_certrenew_s_extra_field_is_read_without_it(files):
    """Same format version, one more field: forward-compatible, as the version would change otherwise."""
    files.save_record(CertificateRecord("a", ["a.example"], "rsa2048"))
    path = files.root / "certificates" / "a" / "meta.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "ari_explanation": "https://ca.example/why"}))
    assert files.load_record("a") == CertificateRecord("a", ["a.example"], "rsa2048")


def test_a_bad_order_or_account_is_a_clear_error_naming_its_file(files):
    files.save_order("a", ORDER)
    path = files.root / "certificates" / "a" / "order.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "key_pem": None}))
    with pytest.raises(CertrenewError, match=r"corrupt state file .*/a/order.json: key_pem: expected a string"):
        files.load_order("a")
    files.save_account("https://ca.example/dir", Account(b"KEY", None))
    [account] = files.root.glob("accounts/*/account.json")
    account.write_text('{"uri": 7}')
    with pytest.raises(CertrenewError, match=r"corrupt state file .*/account.json: uri: expected a string"):
        files.load_account("https://ca.example/dir")


def test_the_lock_clears_temps_of_a_killed_run(tmp_path):
    store = FileStore(tmp_path / "state")
    with store.lock(timeout=0):
        store.save_account("https://ca.example/dir", Account(b"KEY", None))
    temps = [tmp_path / "state" / "certificates" / ".certrenew-x.tmp",
             next((tmp_path / "state" / "accounts").iterdir()) / ".certrenew-y.tmp"]
    for temp in temps:
        temp.write_bytes(b"half")
    with store.lock(timeout=0):
        assert not any(temp.exists() for temp in temps)
        assert store.names() == []


def test_a_write_clears_temps_a_killed_run_left_beside_it(files):
    files.save_pending("a", b"ONE")
    temp = files.root / "certificates" / "a" / ".certrenew-x.tmp"
    temp.write_bytes(b"half")
    assert files.names() == ["a"] and files.load_bundle("a", "pending") == b"ONE"
    files.promote_pending(CertificateRecord("a", ["a.example"], "ecdsa-p256"))
    assert not temp.exists()


def test_status_reads_need_no_state_dir(tmp_path):
    store = FileStore(tmp_path / "none")
    assert store.names() == [] and store.load_record("a") is None and not store.unfinished("a")
    assert not (tmp_path / "none").exists()


# Set aside, and the CA recorded (the contract).

def test_an_unusable_pending_certificate_or_order_is_set_aside_not_lost(store):
    store.save_pending("a", b"GARBAGE", "https://ca.example/dir")
    where = store.set_aside("a", "pending")
    assert "a/rejected/" in where and "pending" in where
    assert store.load_bundle("a", "pending") is None and store.pending_directory("a") is None
    assert not store.unfinished("a")
    store.save_order("a", ORDER)
    other = store.set_aside("a", "order")
    assert other != where and store.load_order("a") is None and not store.unfinished("a")


def test_the_ca_is_recorded_with_the_record_the_order_and_the_pending_certificate(store):
    ca = "https://acme-staging.example/dir"
    store.save_record(CertificateRecord("a", ["a.example"], "ecdsa-p256", directory=ca))
    assert store.load_record("a").directory == ca
    order = PendingOrder(ORDER.url, ORDER.domains, ORDER.key_type, ORDER.key_pem, ca)
    store.save_order("a", order)
    assert store.load_order("a") == order
    store.save_pending("a", b"ONE", ca)
    assert store.pending_directory("a") == ca
    store.promote_pending(store.load_record("a"))
    assert store.pending_directory("a") is None


def test_state_kept_before_the_ca_was_recorded_reads_as_no_ca(files):
    files.save_order("a", ORDER)
    path = files.root / "certificates" / "a" / "order.json"
    document = json.loads(path.read_text())
    del document["directory"]
    path.write_text(json.dumps(document))
    assert files.load_order("a") == ORDER and ORDER.directory is None
    (files.root / "certificates" / "a" / "pending.pem").write_bytes(b"OLD")
    assert files.pending_directory("a") is None and files.load_bundle("a", "pending") == b"OLD"


def test_a_set_aside_file_is_kept_under_the_state_dir(files):
    files.save_pending("a", b"GARBAGE")
    where = Path(files.set_aside("a", "pending"))
    assert where.parent == files.root / "certificates" / "a" / "rejected" and where.read_bytes() == b"GARBAGE"
    assert mode(where.parent) == 0o700 and files.names() == ["a"]


def test_a_file_that_cannot_be_set_aside_is_one_error_naming_it(files):
    files.save_pending("a", b"GARBAGE")
    pending = files.root / "certificates" / "a" / "pending.pem"
    pending.unlink()  # gone meanwhile (removed by hand): os.rename fails
    with pytest.raises(CertrenewError, match=f"^cannot set aside {pending}: No such file or directory$"):
        files.set_aside("a", "pending")
    assert list((files.root / "certificates" / "a").glob("rejected/*")) == []


# The state dir is ours alone.

def test_a_planted_symlink_is_refused_and_its_target_untouched(files, tmp_path):
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    (files.root / "certificates" / "a").mkdir(mode=0o700)
    (files.root / "certificates" / "a" / "pending.pem").symlink_to(target)
    with pytest.raises(CertrenewError, match="pending.pem: it is a symbolic link"):
        files.load_bundle("a", "pending")
    assert target.read_bytes() == b"precious"


def test_a_symlinked_lock_is_refused_and_not_truncated(tmp_path):
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "lock").symlink_to(target)
    with pytest.raises(CertrenewError, match="lock: it is a symbolic link"):
        with FileStore(tmp_path / "state").lock(timeout=0):
            pass
    assert target.read_bytes() == b"precious"


@pytest.mark.parametrize("where", ["state", "state/certificates", "state/certificates/a",
                                   "state/certificates/a/meta.json"])
def test_anything_writable_by_others_is_refused(files, where):
    files.save_record(CertificateRecord("a", ["a.example"], "ecdsa-p256"))
    path = files.root.parent / where
    path.chmod(stat.S_IMODE(path.stat().st_mode) | 0o020)
    with pytest.raises(CertrenewError, match=f"refusing {path}: it is writable by group or others"):
        FileStore(files.root).load_record("a")


@pytest.mark.parametrize("where", ["state", "state/accounts", "state/certificates"])
def test_a_long_lived_store_checks_its_top_directories_again_at_a_later_read_without_the_lock(
        tmp_path, where, monkeypatch):
    from certrenew.cli import status
    from certrenew.config import CertificateSpec, Settings

    monkeypatch.setattr(files_module, "RECHECK_AFTER", 0.0)  # every read is "a second later"
    store = FileStore(tmp_path / "state")  # a daemon's: one object for months
    with store.lock(timeout=0):  # a pass
        store.save_record(CertificateRecord("a", ["a.example"], "ecdsa-p256"))
    settings, specs = Settings.of(state_dir=store.root), [CertificateSpec("a", ("a.example",))]
    [row] = status.collect(settings, specs, store)  # /metrics between passes: checked, and fine
    assert row.state == "missing" and store.find_challenge("token") is None
    path = tmp_path / where
    path.chmod(stat.S_IMODE(path.stat().st_mode) | 0o020)  # made group-writable while the daemon runs
    refused = f"refusing {path}: it is writable by group or others"
    with pytest.raises(CertrenewError, match=refused):
        status.collect(settings, specs, store)  # the next scrape
    with pytest.raises(CertrenewError, match=refused):
        store.find_challenge("token")  # the responder's look-up between passes


def test_reads_without_the_lock_check_the_top_directories_once_a_second(tmp_path, monkeypatch):
    store = FileStore(tmp_path / "state")
    with store.lock(timeout=0):
        for name in ("a", "b", "c"):
            store.save_record(CertificateRecord(name, [f"{name}.example"], "ecdsa-p256"))
    checked = []
    check_dir = store_module.owned.check_dir
    monkeypatch.setattr(store_module.owned, "check_dir",
                        lambda path, follow=False: checked.append(str(path)) or check_dir(path, follow))
    for name in ("a", "b", "c"):  # status over many certificates: one check, not one per record
        store.load_record(name)
    assert checked.count(str(store.root)) == 1


def test_an_existing_world_writable_dir_is_refused_and_not_chmod_ed(tmp_path):
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(CertrenewError, match=r"writable by group or others \(mode 1777\); run chmod go-w"):
        with FileStore(shared).lock(timeout=0):
            pass
    assert mode(shared) == 0o1777 and not (shared / "lock").exists()


def test_a_missing_state_dir_is_created_private(tmp_path):
    old = os.umask(0)
    try:
        with FileStore(tmp_path / "new" / "state").lock(timeout=0):
            pass
    finally:
        os.umask(old)
    assert mode(tmp_path / "new" / "state") == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_a_state_dir_owned_by_another_user_is_refused(tmp_path):
    (tmp_path / "state").mkdir(mode=0o700)
    os.chown(tmp_path / "state", 65534, 65534)
    with pytest.raises(CertrenewError, match="is owned by uid 65534, not uid 0"):
        with FileStore(tmp_path / "state").lock(timeout=0):
            pass
    assert not (tmp_path / "state" / "lock").exists()


# HTTP-01 answers published for another process's responder.

def test_a_published_answer_is_found_until_withdrawn(store):
    store.publish_challenge("x" * 200, "a.example", "long.thumb")  # the longest token is a file name still
    assert store.find_challenge("x" * 200) == ("a.example", "long.thumb")
    store.publish_challenge("tok_en-1", "a.example", "tok_en-1.thumb")
    assert store.find_challenge("tok_en-1") == ("a.example", "tok_en-1.thumb")
    assert store.find_challenge("other") is None
    store.withdraw_challenge("tok_en-1")
    store.withdraw_challenge("tok_en-1")  # gone already: nothing
    assert store.find_challenge("tok_en-1") is None
    assert store.challenges_published()
    store.withdraw_challenge("x" * 200)
    assert not store.challenges_published()


@pytest.mark.parametrize("token", ["../meta", "a/b", "", "tok en", "x" * 201])
def test_a_token_that_is_not_base64url_is_refused(store, token):
    with pytest.raises(CertrenewError, match="not base64url"):
        store.publish_challenge(token, "a.example", "v")
    assert store.find_challenge(token) is None


def test_answers_are_private_and_need_no_lock(tmp_path):
    store = FileStore(tmp_path / "state")  # not locked: a run by hand publishes while the daemon may hold it
    store.publish_challenge("tok", "a.example", "tok.thumb")
    path = tmp_path / "state" / "challenges" / "tok.json"
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert FileStore(tmp_path / "state").find_challenge("tok") == ("a.example", "tok.thumb")


def test_an_answer_a_killed_run_left_expires(files, monkeypatch):
    files.publish_challenge("old", "a.example", "old.thumb")
    path = files.root / "challenges" / "old.json"
    later = datetime.datetime.now(datetime.timezone.utc) + store_module.CHALLENGE_TTL + datetime.timedelta(seconds=5)
    monkeypatch.setattr(store_module, "_utc_now", lambda: later)
    assert files.find_challenge("old") is None  # not served any more
    assert not files.challenges_published()  # nor waited for by a responder that lent its port
    past = (later - datetime.timedelta(days=1)).timestamp()
    os.utime(path, (past, past))
    files.publish_challenge("new", "a.example", "new.thumb")  # and cleared by the next publication
    assert not path.exists() and files.find_challenge("new") == ("a.example", "new.thumb")


def test_a_planted_answer_link_is_refused(files, tmp_path):
    files.publish_challenge("tok", "a.example", "tok.thumb")
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    link = files.root / "challenges" / "evil.json"
    link.symlink_to(target)
    with pytest.raises(CertrenewError, match="symbolic link"):
        files.find_challenge("evil")


@pytest.mark.parametrize("where", ["certificates/a.example/meta.json", "challenges/tok.json"])
def test_a_fifo_planted_in_the_state_dir_is_refused_not_waited_on(files, where):
    import threading

    files.save_record(CertificateRecord("a.example", ["a.example"], "ecdsa-p256"))
    files.publish_challenge("other", "a.example", "other.thumb")
    path = files.root / where
    path.unlink(missing_ok=True)
    os.mkfifo(path, 0o600)  # nobody writes to it: a blocking open would wait for ever
    read = {"certificates/a.example/meta.json": lambda: files.load_record("a.example"),
            "challenges/tok.json": lambda: files.find_challenge("tok")}[where]
    outcome = []

    def attempt():
        try:
            read()
        except CertrenewError as error:
            outcome.append(str(error))
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert outcome and "not a regular file" in outcome[0]


def test_one_setting_names_the_store_and_a_malformed_one_is_refused_cleanly(tmp_path):
    from certrenew.config import Settings
    from certrenew.errors import UsageError
    from certrenew.state.store import open_store

    assert open_store(Settings(state_dir=tmp_path / "state")).root == tmp_path / "state"
    assert open_store(Settings.of(state_dir=tmp_path / "state", node_name="web2")).holder == \
        f"certrenew on web2 (pid {os.getpid()})"
    assert open_store(Settings(state_dir=tmp_path / "state", store=str(tmp_path / "other"))).root == tmp_path / "other"
    with pytest.raises(UsageError, match=r"^not an etcd store: 'etcd://127.0.0.1/certrenew'; the form is "):
        open_store(Settings(store="etcd://127.0.0.1/certrenew"))
    with pytest.raises(UsageError, match="unknown kind of store 's3'"):
        open_store(Settings(store="s3://bucket"))
