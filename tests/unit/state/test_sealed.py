"""The private keys of a shared store, sealed before they reach its backend (certrenew.state.sealed)."""

import base64
import os
from pathlib import Path

import pytest

from certrenew.errors import CertrenewError, UsageError
from certrenew.state.memory import MemoryBackend
from certrenew.state.sealed import SealedBackend, read_key_file
from certrenew.state.store import Account, CertificateRecord, PendingOrder, Store, is_secret

KEY = b"-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n"
BUNDLE = b"-----BEGIN CERTIFICATE-----\nleaf\n-----END CERTIFICATE-----\n" + KEY


def sealed(raw: MemoryBackend, key: bytes = b"k" * 32) -> SealedBackend:
    return SealedBackend(raw, key, is_secret, Path("key-file"))


def test_every_private_key_is_sealed_in_the_backend_and_read_back_in_the_clear():
    raw = MemoryBackend()
    store = Store(sealed(raw))
    store.save_account("https://ca.example/dir", Account(KEY, "https://ca.example/acct/1"))
    store.save_order("a", PendingOrder("https://ca.example/order/1", ["a.example"], "ecdsa-p256", KEY))
    store.save_pending("a", BUNDLE)
    store.promote_pending(CertificateRecord("a", ["a.example"], "ecdsa-p256"))
    store.save_pending("a", BUNDLE)
    store.set_aside("a", "pending")
    store.save_order("a", PendingOrder("https://ca.example/order/2", ["a.example"], "ecdsa-p256", KEY))
    store.set_aside("a", "order")
    store.save_pending("a", BUNDLE)
    store.archive("a", "gone")

    values = raw.list("")
    kinds = {key.rsplit("/", 1)[1].rsplit("-", 1)[-1] for key in values if is_secret(key)}
    assert kinds == {"key.pem", "current.pem", "pending.pem", "order.json"}, sorted(values)
    for key, entry in values.items():
        assert b"PRIVATE KEY" not in entry.value, key
    assert store.load_account("https://ca.example/dir") == Account(KEY, "https://ca.example/acct/1")
    moved = {key: entry.value for key, entry in sealed(raw).list("removed/").items()}
    assert moved["removed/a-gone/current.pem"] == BUNDLE and moved["removed/a-gone/pending.pem"] == BUNDLE


def test_a_value_moved_to_another_key_or_written_in_the_clear_is_refused():
    raw = MemoryBackend()
    backend = sealed(raw)
    backend.write({"certificates/a/current.pem": BUNDLE})
    raw.write({"certificates/b/current.pem": raw.get("certificates/a/current.pem").value})
    with pytest.raises(UsageError, match="certificates/b/current.pem does not decrypt with the store key file"):
        backend.get("certificates/b/current.pem")
    raw.write({"certificates/c/current.pem": BUNDLE})
    with pytest.raises(CertrenewError, match="certificates/c/current.pem is not encrypted"):
        backend.get("certificates/c/current.pem")
    with pytest.raises(UsageError, match="does not decrypt"):
        sealed(raw, b"x" * 32).get("certificates/a/current.pem")


def test_the_first_key_is_the_stores_and_another_is_refused():
    raw = MemoryBackend()
    sealed(raw).check_key()
    sealed(raw).check_key()
    with pytest.raises(UsageError, match="^the store key file key-file is not the key this store's private keys"):
        sealed(raw, b"x" * 32).check_key()


def test_a_key_file_holds_32_bytes_in_base64(tmp_path):
    path = tmp_path / "key"
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    path.chmod(0o600)
    assert len(read_key_file(path)) == 32
    path.write_text("c2hvcnQ=\n")
    with pytest.raises(UsageError, match=r"does not hold 32 random bytes in base64; make one with `head -c 32"):
        read_key_file(path)
    path.chmod(0o644)
    with pytest.raises(UsageError, match="is open to others"):
        read_key_file(path)


def test_a_watch_reads_what_changed_in_the_clear():
    raw = MemoryBackend()
    first = sealed(raw).watch("certificates/", 0, 0)
    Store(sealed(raw)).save_pending("a", BUNDLE)
    changes = sealed(raw).watch("certificates/", first.revision, 1)
    assert changes.entries["certificates/a/pending.pem"].value == BUNDLE
    assert KEY not in raw.get("certificates/a/pending.pem").value and sealed(raw).shared is raw.shared is False


def test_a_value_that_does_not_unseal_fails_its_certificate_not_the_listing_of_every_one():
    """`status` and /metrics list the certificates: one bundle refused (in the clear, or sealed with another key)
    is that certificate's error, not every certificate's."""
    raw = MemoryBackend()
    store = Store(sealed(raw))
    for name in ("a", "b"):
        store.save_pending(name, BUNDLE)
        store.promote_pending(CertificateRecord(name, [f"{name}.example"], "ecdsa-p256"))
    raw.write({"certificates/b/current.pem": BUNDLE})  # planted in the clear by someone without the key
    assert store.names() == ["a", "b"]
    assert store.load_bundle("a") == BUNDLE
    with pytest.raises(CertrenewError, match="current.pem is not encrypted"):
        store.load_bundle("b")
