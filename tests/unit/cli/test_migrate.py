"""`certrenew migrate-state` between two state dirs: every kind of entry arrives, byte for byte."""

import pytest

from certrenew.cli.migrate import migrate
from certrenew.config import Settings
from certrenew.errors import UsageError
from certrenew.state.store import Account, CertificateRecord, FileStore, PendingOrder

KEY = b"-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n"
BUNDLE = b"-----BEGIN CERTIFICATE-----\nleaf\n-----END CERTIFICATE-----\n" + KEY


def state(root):
    store = FileStore(root)
    with store.lock(0):
        return {key: entry.value for key, entry in store.backend.list("").items()}


def test_every_entry_moves_and_a_destination_with_state_is_refused_unless_told(tmp_path):
    source, destination = tmp_path / "a", tmp_path / "b"
    store = FileStore(source)
    with store.lock(0):
        store.save_account("https://ca.example/dir", Account(KEY, "https://ca.example/acct/1"))
        for name in ("one", "two"):
            store.save_pending(name, BUNDLE, "https://ca.example/dir")
            store.promote_pending(CertificateRecord(name, [f"{name}.example"], "ecdsa-p256"))
            store.save_pending(name, BUNDLE)
            store.promote_pending(CertificateRecord(name, [f"{name}.example"], "ecdsa-p256"))
        store.save_order("one", PendingOrder("https://ca.example/order/1", ["one.example"], "ecdsa-p256", KEY))
        store.save_pending("two", BUNDLE)
        store.set_aside("two", "pending")
    settings = Settings(lock_timeout=0)

    done = migrate(settings, str(source), str(destination))
    assert (done.certificates, done.accounts) == (2, 1)
    copied = state(destination)
    assert copied == state(source) and done.entries == len(copied)
    assert {key.rsplit("/", 1)[1].rsplit("-", 1)[-1] for key in copied} == {
        "key.pem", "account.json", "current.pem", "previous.pem", "meta.json", "order.json", "pending.pem"}

    with pytest.raises(UsageError, match=f"^{destination} holds state already .*--overwrite"):
        migrate(settings, str(source), str(destination))
    assert migrate(settings, str(source), str(destination), overwrite=True).entries == done.entries
    with pytest.raises(UsageError, match="no such state dir"):
        migrate(settings, str(tmp_path / "nowhere"), str(destination))
    assert not (tmp_path / "nowhere").exists()


def test_an_overwrite_leaves_no_entry_of_the_destination_s_own_beside_a_certificate_it_copies(tmp_path):
    """A certificate arrives whole, not mixed with what the destination held of it: a pending bundle or an
    order of the destination's left beside the source's current one would be installed or resumed by the
    next run, over the certificate the source served."""
    source, destination = tmp_path / "a", tmp_path / "b"
    store, there = FileStore(source), FileStore(destination)
    with store.lock(0), there.lock(0):
        store.save_pending("one", BUNDLE)
        store.promote_pending(CertificateRecord("one", ["one.example"], "ecdsa-p256"))
        there.save_pending("one", b"the destination's own, older pending bundle")
        there.save_order("one", PendingOrder("https://ca.example/order/9", ["one.example"], "ecdsa-p256", KEY))
        there.save_pending("elsewhere", BUNDLE)  # a certificate the source does not hold: kept
    migrate(Settings(lock_timeout=0), str(source), str(destination), overwrite=True)
    copied = state(destination)
    assert {key: value for key, value in copied.items() if key.startswith("certificates/one/")} == \
        {key: value for key, value in state(source).items() if key.startswith("certificates/one/")}
    assert copied["certificates/elsewhere/pending.pem"] == BUNDLE
