"""The state store: ACME accounts, certificate keys and chains, and their records.

A `FileStore` keeps everything under one directory (0700, keys 0600), written
atomically. Per certificate it holds bundles (chain and key in one file, so a key can
never be paired with the wrong chain): the current one, the previous one for
rollback, and a *pending* one, issued but not yet installed, so an install that fails
or is interrupted never wastes an issued certificate. Before that, from validation to
download, it holds the *order* (its URL and the new key), so a run that ends after
finalizing lets the next one download the certificate instead of ordering again.
"""

import dataclasses
import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from certrenew.atomicfile import fsync_directory, remove_stale_temps, write_atomic
from certrenew.errors import CertrenewError


@dataclass(frozen=True)
class Account:
    key_pem: bytes
    uri: str | None


@dataclass(frozen=True)
class PendingOrder:
    """A validated order and the key its CSR was made with (order.json, 0600)."""

    url: str
    domains: list[str]
    key_type: str
    key_pem: bytes

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "key_pem": self.key_pem.decode("ascii")}

    @classmethod
    def from_json(cls, data: dict) -> "PendingOrder":
        return cls(data["url"], list(data["domains"]), data["key_type"], data["key_pem"].encode("ascii"))


@dataclass
class CertificateRecord:
    """What is known about one managed certificate between runs (meta.json)."""

    name: str
    domains: list[str]
    key_type: str
    serial: str | None = None
    not_before: datetime.datetime | None = None
    not_after: datetime.datetime | None = None
    issued_at: datetime.datetime | None = None
    ari_window_start: datetime.datetime | None = None
    ari_window_end: datetime.datetime | None = None
    ari_renew_at: datetime.datetime | None = None
    """The random time picked inside the CA's suggested window (RFC 9773), kept while the window stays."""
    ari_next_check: datetime.datetime | None = None
    """When to ask the CA for renewal information again (its Retry-After); None: the CA has no ARI."""
    last_attempt: datetime.datetime | None = None
    last_error: str | None = None
    failures: int = 0
    next_attempt: datetime.datetime | None = None
    """After a failure: no new attempt before this time, so a broken name does not hammer the CA."""
    failed_settings: str | None = None
    """The certificate's settings at the last failure: a run with other settings is not held back."""

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        for key, value in data.items():
            if isinstance(value, datetime.datetime):
                data[key] = value.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict) -> "CertificateRecord":
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in fields}
        for key, value in values.items():
            if value is not None and fields[key] == datetime.datetime | None:
                values[key] = datetime.datetime.fromisoformat(value)
        return cls(**values)


class FileStore:
    """State under a local directory; one subdirectory per certificate name."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def prepare(self) -> None:
        """Create the layout with private permissions and clear temps of a killed run."""
        for directory in (self.root, self.root / "accounts", self.root / "certificates"):
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as error:
                raise CertrenewError(f"cannot create state directory {directory}: {error.strerror}") from None
        os.chmod(self.root, 0o700)
        # Temps live beside the files they replace, at most two levels down.
        for directory in [self.root, *self.root.glob("*/"), *self.root.glob("*/*/")]:
            remove_stale_temps(directory)

    # Accounts, one per ACME directory URL.

    def _account_dir(self, directory_url: str) -> Path:
        parts = urlsplit(directory_url)
        digest = hashlib.sha256(directory_url.encode()).hexdigest()[:12]
        return self.root / "accounts" / f"{parts.hostname or 'ca'}-{digest}"

    def load_account(self, directory_url: str) -> Account | None:
        directory = self._account_dir(directory_url)
        if not (directory / "key.pem").exists():
            return None
        uri = None
        if (directory / "account.json").exists():
            uri = json.loads((directory / "account.json").read_text()).get("uri")
        return Account((directory / "key.pem").read_bytes(), uri)

    def save_account(self, directory_url: str, account: Account) -> None:
        directory = self._account_dir(directory_url)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(directory / "key.pem", account.key_pem)
        data = {"directory": directory_url, "uri": account.uri}
        write_atomic(directory / "account.json", json.dumps(data, indent=2).encode() + b"\n")

    # Certificates.

    def _cert_dir(self, name: str) -> Path:
        return self.root / "certificates" / name

    def names(self) -> list[str]:
        base = self.root / "certificates"
        return sorted(p.name for p in base.iterdir() if (p / "meta.json").exists()) if base.exists() else []

    def archive(self, name: str, label: str) -> Path:
        """Move everything kept for `name` to `removed/<name>-<label>/`, out of every run's sight
        but not lost (it holds the key, should the operator need it back); return where."""
        source = self._cert_dir(name)
        target = self.root / "removed" / f"{name}-{label}"
        target.parent.mkdir(mode=0o700, exist_ok=True)
        os.rename(source, target)
        fsync_directory(source.parent)
        fsync_directory(target.parent)
        return target

    def load_record(self, name: str) -> CertificateRecord | None:
        return self._load_json(name, "meta.json", CertificateRecord.from_json)

    def save_record(self, record: CertificateRecord) -> None:
        self._save_json(record.name, "meta.json", record.to_json())

    def _load_json(self, name: str, file: str, parse):
        path = self._cert_dir(name) / file
        if not path.exists():
            return None
        try:
            return parse(json.loads(path.read_text()))
        except (ValueError, TypeError, KeyError) as error:
            raise CertrenewError(f"corrupt state file {path}: {error}") from None

    def _save_json(self, name: str, file: str, data: dict) -> None:
        directory = self._cert_dir(name)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(directory / file, json.dumps(data, indent=2).encode() + b"\n")

    def load_bundle(self, name: str, slot: str = "current") -> bytes | None:
        """The HAProxy bundle (chain and key) in `slot`: "current", "previous" or "pending"."""
        path = self._cert_dir(name) / f"{slot}.pem"
        return path.read_bytes() if path.exists() else None

    def save_order(self, name: str, order: PendingOrder) -> None:
        """Keep a validated order and its key until its certificate is downloaded."""
        self._save_json(name, "order.json", order.to_json())

    def load_order(self, name: str) -> PendingOrder | None:
        return self._load_json(name, "order.json", PendingOrder.from_json)

    def discard_order(self, name: str) -> None:
        (self._cert_dir(name) / "order.json").unlink(missing_ok=True)

    def unfinished(self, name: str) -> bool:
        """Whether an earlier run left an order or a certificate that is not installed yet."""
        directory = self._cert_dir(name)
        return (directory / "pending.pem").exists() or (directory / "order.json").exists()

    def save_pending(self, name: str, bundle: bytes) -> None:
        """Keep a freshly issued certificate before it is installed anywhere; its order is done."""
        directory = self._cert_dir(name)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(directory / "pending.pem", bundle)
        self.discard_order(name)

    def discard_pending(self, name: str) -> None:
        (self._cert_dir(name) / "pending.pem").unlink(missing_ok=True)

    def promote_pending(self, record: CertificateRecord) -> None:
        """Make the pending certificate current; the current one becomes the previous one.

        Each step is one atomic write and the pending file goes last, so a run killed
        half-way leaves the pending certificate for the next run to install again.
        """
        directory = self._cert_dir(record.name)
        pending = self.load_bundle(record.name, "pending")
        if pending is None:
            raise CertrenewError(f"no pending certificate to promote for {record.name}")
        current = self.load_bundle(record.name)
        if current is not None:
            write_atomic(directory / "previous.pem", current)
        write_atomic(directory / "current.pem", pending)
        self.save_record(record)
        self.discard_pending(record.name)
