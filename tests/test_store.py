import datetime
import stat

import pytest

from certrenew.errors import CertrenewError
from certrenew.store import Account, CertificateRecord, FileStore


@pytest.fixture
def store(tmp_path):
    store = FileStore(tmp_path / "state")
    store.prepare()
    return store


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_layout_is_private(store):
    store.save_account("https://ca.example/dir", Account(b"KEY", "https://ca.example/acct/1"))
    assert mode(store.root) == 0o700
    key = next(store.root.glob("accounts/*/key.pem"))
    assert mode(key) == 0o600
    assert store.load_account("https://ca.example/dir") == Account(b"KEY", "https://ca.example/acct/1")
    assert store.load_account("https://other.example/dir") is None


def test_record_round_trips(store):
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    record = CertificateRecord("a", ["a.example"], "rsa2048", serial="ab", not_before=when, not_after=when)
    store.save_record(record)
    assert store.load_record("a") == record
    assert store.names() == ["a"]


def test_pending_becomes_current_and_current_becomes_previous(store):
    record = CertificateRecord("a", ["a.example"], "ecdsa-p256")
    store.save_pending("a", b"ONE")
    store.promote_pending(record)
    store.save_pending("a", b"TWO")
    assert store.load_bundle("a") == b"ONE"
    store.promote_pending(record)
    assert (store.load_bundle("a"), store.load_bundle("a", "previous")) == (b"TWO", b"ONE")
    assert store.load_bundle("a", "pending") is None
    assert mode(store.root / "certificates" / "a" / "current.pem") == 0o600


def test_archive_moves_a_certificate_out_of_sight_and_keeps_it(store):
    store.save_record(CertificateRecord("a", ["a.example"], "ecdsa-p256"))
    store.save_pending("a", b"ONE")
    store.promote_pending(store.load_record("a"))
    backup = store.archive("a", "20260102T030405Z")
    assert backup == store.root / "removed" / "a-20260102T030405Z"
    assert (backup / "current.pem").read_bytes() == b"ONE" and mode(backup.parent) == 0o700
    assert store.names() == [] and store.load_bundle("a") is None


def test_prepare_clears_temps_of_a_killed_run(store):
    temp = store.root / "certificates" / ".certrenew-x.tmp"
    temp.write_bytes(b"half")
    store.prepare()
    assert not temp.exists()


def test_corrupt_record_is_a_clear_error(store):
    (store.root / "certificates" / "a").mkdir()
    (store.root / "certificates" / "a" / "meta.json").write_text("{not json")
    with pytest.raises(CertrenewError, match="corrupt state file"):
        store.load_record("a")


def test_a_validated_order_is_kept_until_its_certificate_is_pending(store):
    from certrenew.store import PendingOrder
    order = PendingOrder("https://ca.example/order/1", ["a.example"], "ecdsa-p256", b"-----KEY-----\n")
    assert not store.unfinished("a.example")
    store.save_order("a.example", order)
    assert store.unfinished("a.example") and store.load_order("a.example") == order
    assert mode(store.root / "certificates" / "a.example" / "order.json") == 0o600
    store.save_pending("a.example", b"BUNDLE")
    assert store.load_order("a.example") is None and store.unfinished("a.example")
