"""A `Store` in memory: proves the seam, and lets a run be tested without a state dir.

Records, orders and accounts are kept as the encoded documents a remote store (etcd,
say) would keep, so their round trip through `encode`/`decode` is exercised too.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from certrenew.challenge.solver import check_token
from certrenew.errors import CertrenewError
from certrenew.state.store import BUNDLE_SLOTS, Account, CertificateRecord, PendingOrder, decode, encode


class MemoryStore:
    def __init__(self) -> None:
        self.documents: dict[tuple[str, str], bytes] = {}
        """(certificate name, "record", "order" or "pending") -> encoded document."""
        self.bundles: dict[tuple[str, str], bytes] = {}
        """(certificate name, slot) -> bundle."""
        self.accounts: dict[str, Account] = {}
        self.rejected: dict[str, bytes] = {}
        """Where a set-aside pending certificate or order went -> its content."""
        self.challenges: dict[str, tuple[str, str]] = {}
        """Published HTTP-01 answers: token -> (domain, key authorization); they do not expire here."""
        self._lock = threading.Lock()

    @contextmanager
    def lock(self, timeout: float, context=None) -> Iterator[None]:
        if not self._lock.acquire(timeout=timeout):
            raise CertrenewError(f"another run holds the in-memory store; gave up after {timeout:g} s")
        try:
            yield
        finally:
            self._lock.release()

    def names(self) -> list[str]:
        return sorted({name for name, _ in self.documents} | {name for name, _ in self.bundles})

    def load_account(self, directory_url: str) -> Account | None:
        return self.accounts.get(directory_url)

    def save_account(self, directory_url: str, account: Account) -> None:
        self.accounts[directory_url] = account

    def load_record(self, name: str) -> CertificateRecord | None:
        return self._load(name, "record", CertificateRecord.from_json)

    def save_record(self, record: CertificateRecord) -> None:
        self.documents[record.name, "record"] = encode(record.to_json())

    def load_bundle(self, name: str, slot: str = "current") -> bytes | None:
        if slot not in BUNDLE_SLOTS:
            raise ValueError(f"no bundle slot {slot!r}")
        return self.bundles.get((name, slot))

    def save_order(self, name: str, order: PendingOrder) -> None:
        self.documents[name, "order"] = encode(order.to_json())

    def load_order(self, name: str) -> PendingOrder | None:
        return self._load(name, "order", PendingOrder.from_json)

    def discard_order(self, name: str) -> None:
        self.documents.pop((name, "order"), None)

    def unfinished(self, name: str) -> bool:
        return (name, "pending") in self.bundles or (name, "order") in self.documents

    def save_pending(self, name: str, bundle: bytes, directory: str | None = None) -> None:
        self.documents[name, "pending"] = encode({"directory": directory})
        self.bundles[name, "pending"] = bundle
        self.discard_order(name)

    def pending_directory(self, name: str) -> str | None:
        return self._load(name, "pending", lambda data: data.get("directory"))

    def discard_pending(self, name: str) -> None:
        self.bundles.pop((name, "pending"), None)
        self.documents.pop((name, "pending"), None)

    def set_aside(self, name: str, kind: str) -> str:
        where = f"memory:{name}/rejected/{len(self.rejected)}-{kind}"
        if kind == "pending":
            self.rejected[where] = self.bundles.pop((name, "pending"))
            self.documents.pop((name, "pending"), None)
        else:
            self.rejected[where] = self.documents.pop((name, kind))
        return where

    def promote_pending(self, record: CertificateRecord) -> None:
        pending = self.bundles.get((record.name, "pending"))
        if pending is None:
            raise CertrenewError(f"no pending certificate to promote for {record.name}")
        if (record.name, "current") in self.bundles:
            self.bundles[record.name, "previous"] = self.bundles[record.name, "current"]
        self.bundles[record.name, "current"] = pending
        self.save_record(record)
        self.discard_pending(record.name)

    def publish_challenge(self, token: str, domain: str, validation: str) -> None:
        self.challenges[check_token(token)] = (domain, validation)

    def find_challenge(self, token: str) -> tuple[str, str] | None:
        return self.challenges.get(token)

    def withdraw_challenge(self, token: str) -> None:
        self.challenges.pop(token, None)

    def _load(self, name: str, kind: str, parse):
        raw = self.documents.get((name, kind))
        return None if raw is None else decode(raw, parse, f"memory:{name}/{kind}")
