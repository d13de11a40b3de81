"""The state store: ACME accounts, certificate keys and chains, and their records.

`Store` is what a run needs from wherever its state lives; `FileStore` keeps it under
one local directory (0700, keys 0600), written atomically, and reads and writes only
what is ours alone (see `owned`). A store for several nodes
(etcd, say, with a lease for the lock) is another class with the same methods.

Per certificate a store holds bundles (chain and key in one piece, so a key can never
be paired with the wrong chain): the current one, the previous one for rollback, and a
*pending* one, issued but not yet installed, so an install that fails or is interrupted
never wastes an issued certificate. Before that, from validation to download, it holds
the *order* (its URL and the new key), so a run that ends after finalizing lets the
next one download the certificate instead of ordering again. Each of these records the
ACME directory (the CA) it came from, so a switch of CA is seen. A pending certificate or
an order a run cannot use (unreadable, a key that does not match, refused by HAProxy) is
*set aside*: kept for the operator to look at, out of every run's way.

A store also carries HTTP-01 answers between processes: a run that finds the responder's
port held by the daemon publishes its answers here, and the daemon's responder serves them.
"""

import dataclasses
import datetime
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, TypeVar
from urllib.parse import urlsplit

from certrenew.challenge.solver import TOKEN, check_token
from certrenew.errors import CertrenewError
from certrenew.state.lock import StateLock
from certrenew.system import owned
from certrenew.system.atomicfile import fsync_directory, remove_stale_temps, write_atomic
from certrenew.system.runcontext import RunContext

VERSION = 1
"""The format of the state documents; one without "version" predates the field and is version 1."""

BUNDLE_SLOTS = ("current", "previous", "pending")
SET_ASIDE = MappingProxyType({"pending": "pending.pem", "order": "order.json"})
"""What a run can set aside, and its file in a certificate's directory."""
READ_SIZE = 16384
"""Enough for a record or a bundle in one read."""
RECHECK_AFTER = 1.0
"""Seconds a check of the top directories holds for reads without the lock (see `_check_layout`)."""
CHALLENGE_TTL = datetime.timedelta(hours=1)
"""How long a published HTTP-01 answer is served: longer than any validation takes, so one
that a killed run left behind is neither served nor kept for ever."""

T = TypeVar("T")
_JSON = json.JSONDecoder()


_STRING = (str, "a string")
_OPTIONAL_STRING = ((str, type(None)), "a string or null")


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
    directory: str | None = None
    """The CA's ACME directory URL; None in an order kept before it was recorded (taken as the current CA)."""

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "key_pem": self.key_pem.decode("ascii")}

    @classmethod
    def from_json(cls, data: dict) -> "PendingOrder":
        order = cls(data["url"], data["domains"], data["key_type"], _text("key_pem", data["key_pem"]).encode("ascii"),
                    data.get("directory"))
        _check_types(order, {"url": _STRING, "key_type": _STRING, "directory": _OPTIONAL_STRING})
        _check_domains(order.domains)
        return order


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
    directory: str | None = None
    """The ACME directory URL of the CA that issued it; None in a record kept before it was recorded
    (taken as the current CA, so an upgrade does not reissue everything)."""
    recent_issues: list[datetime.datetime] = dataclasses.field(default_factory=list)
    """When the CA issued it a certificate, within the last `policy.BUDGET_PERIOD`: its order budget."""
    issued_settings: str | None = None
    """The certificate's settings when those were issued: other settings start a fresh budget."""
    revoked: datetime.datetime | None = None
    """When `certrenew revoke` revoked this certificate at the CA: it is due at once, whatever its expiry."""

    DATETIMES: ClassVar[tuple[str, ...]] = (
        "not_before", "not_after", "issued_at", "ari_window_start", "ari_window_end", "ari_renew_at",
        "ari_next_check", "last_attempt", "next_attempt", "revoked",
    )
    """The fields kept as ISO 8601 text in JSON."""
    TYPES: ClassVar[dict[str, Any]] = {"name": _STRING, "key_type": _STRING, "serial": _OPTIONAL_STRING,
                                       "last_error": _OPTIONAL_STRING, "directory": _OPTIONAL_STRING,
                                       "failed_settings": _OPTIONAL_STRING, "issued_settings": _OPTIONAL_STRING}

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        for key in self.DATETIMES:
            if data[key] is not None:
                data[key] = data[key].isoformat()
        data["recent_issues"] = [when.isoformat() for when in self.recent_issues]
        return data

    @classmethod
    def from_json(cls, data: dict, name: str | None = None) -> "CertificateRecord":
        """The record in `data`, checked as a whole (see `check`); `name`: the certificate it must be of."""
        values = {key: data[key] for key in _RECORD_FIELDS if key in data}  # not "version", nor newer fields
        for key in cls.DATETIMES:  # inline, not a call per time: a run over 10,000 certificates reads 70,000
            value = values.get(key)
            if value is not None:
                when = values[key] = datetime.datetime.fromisoformat(value if type(value) is str
                                                                     else _text(key, value))
                if when.tzinfo is None:
                    raise ValueError(f"{key}: {value!r} has no time zone")
        issues = values.get("recent_issues", [])
        if not isinstance(issues, list):  # null too: the budget and every later save iterate it
            raise ValueError(f"recent_issues: expected a list of times, not {issues!r}")
        if issues:  # at most ORDER_BUDGET, and none in most records
            values["recent_issues"] = [_datetime("recent_issues", value) for value in issues]
        record = cls(**values)
        record.check(name)
        return record

    def check(self, name: str | None = None) -> None:
        """ValueError unless the fields make one consistent record, of certificate `name` if given.

        Every rule the renewal decision relies on is checked here, once, when a record is read:
        a record that passes cannot fail the decision, `status` or the metrics later.
        """
        _check_types(self, self.TYPES)
        _check_domains(self.domains)
        if name is not None and self.name != name:
            raise ValueError(f"name: {self.name!r}, but this is the record of {name!r}")
        if type(self.failures) is not int or self.failures < 0:
            raise ValueError(f"failures: expected a whole number, not {self.failures!r}")
        for start, first, end, last in (("not_before", self.not_before, "not_after", self.not_after),
                                        ("ari_window_start", self.ari_window_start, "ari_window_end",
                                         self.ari_window_end)):
            if (first is None) != (last is None):
                raise ValueError(f"{start} and {end} go together, but only one of them is set")
            if first is not None and last is not None and first > last:
                raise ValueError(f"{start} {first.isoformat()} is after {end} {last.isoformat()}")


_RECORD_FIELDS = tuple(field.name for field in dataclasses.fields(CertificateRecord))


def _datetime(key: str, value: Any) -> datetime.datetime:
    """A time as kept in JSON: ISO 8601 text with its time zone."""
    when = datetime.datetime.fromisoformat(_text(key, value))
    if when.tzinfo is None:
        raise ValueError(f"{key}: {value!r} has no time zone")
    return when


def encode(document: dict) -> bytes:
    """A state document as stored: JSON with the format version."""
    return json.dumps({"version": VERSION, **document}, indent=2).encode() + b"\n"


def decode(raw: bytes, parse: Callable[[dict], T], where: str) -> T:
    """Parse a stored state document; any fault is a CertrenewError naming `where` (a file, a key)."""
    try:
        # raw_decode skips json.loads' layers (a tenth of reading a record); check the rest by hand.
        text = raw.decode()
        data, end = _JSON.raw_decode(text, len(text) - len(text.lstrip()))
        if text[end:].strip():
            raise ValueError(f"extra data after the document, at character {end}")
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, not {type(data).__name__}")
    except ValueError as error:
        raise CertrenewError(f"corrupt state file {where}: {error}") from error
    version = data.get("version", VERSION)
    if version != VERSION:
        raise CertrenewError(f"state file {where} has format version {version!r}; this certrenew reads "
                             f"version {VERSION} (was it written by a newer one?)")
    try:
        return parse(data)
    except KeyError as error:
        raise CertrenewError(f"corrupt state file {where}: {error} is missing") from error
    except (ValueError, TypeError, AttributeError) as error:
        raise CertrenewError(f"corrupt state file {where}: {error}") from error


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string, not {value!r}")
    return value


def _check_types(item: object, types: dict[str, Any]) -> None:
    for key, (kind, described) in types.items():
        value = getattr(item, key)
        if not isinstance(value, kind):
            raise ValueError(f"{key}: expected {described}, not {value!r}")


def _check_domains(domains: Any) -> None:
    if not isinstance(domains, list) or not all(isinstance(domain, str) for domain in domains):
        raise ValueError(f"domains: expected a list of names, not {domains!r}")


class Store(Protocol):
    """Where runs keep their state. Writes happen only while holding `lock`; reads need no lock."""

    def lock(self, timeout: float, context: RunContext | None = None) -> AbstractContextManager[object]:
        """Hold the store for one run (`context`), waiting up to `timeout` seconds for another run to let go;
        raise CertrenewError naming the holder if it does not."""

    def names(self) -> list[str]:
        """Every certificate the store holds something for (a record, an order, a bundle), sorted."""

    def load_account(self, directory_url: str) -> Account | None:
        """The ACME account for the CA at `directory_url`, one per CA."""

    def save_account(self, directory_url: str, account: Account) -> None: ...

    def load_record(self, name: str) -> CertificateRecord | None:
        """The record of certificate `name`; CertrenewError naming it if it cannot be read."""

    def save_record(self, record: CertificateRecord) -> None: ...

    def load_bundle(self, name: str, slot: str = "current") -> bytes | None:
        """The HAProxy bundle (chain and key) in `slot`: "current", "previous" or "pending"."""

    def save_order(self, name: str, order: PendingOrder) -> None:
        """Keep a validated order and its key until its certificate is downloaded."""

    def load_order(self, name: str) -> PendingOrder | None: ...

    def discard_order(self, name: str) -> None: ...

    def unfinished(self, name: str) -> bool:
        """Whether an earlier run left an order or a certificate that is not installed yet."""

    def save_pending(self, name: str, bundle: bytes, directory: str | None = None) -> None:
        """Keep a freshly issued certificate, from the CA at `directory`, before it is installed
        anywhere; its order is done."""

    def pending_directory(self, name: str) -> str | None:
        """The CA the pending certificate came from; None if not recorded (taken as the current CA)."""

    def discard_pending(self, name: str) -> None: ...

    def set_aside(self, name: str, kind: str) -> str:
        """Move the pending certificate (`kind` "pending") or the order ("order") out of every run's
        way, kept for the operator to inspect; return where it is now."""

    def promote_pending(self, record: CertificateRecord) -> None:
        """Make the pending certificate current, the current one previous, and store `record`;
        a run that stops half-way leaves the pending certificate for the next run to install."""

    def publish_challenge(self, token: str, domain: str, validation: str) -> None:
        """Make the HTTP-01 key authorization `validation` of `domain` available to every responder
        serving this store, for CHALLENGE_TTL. Needs no lock: each token is an entry of its own."""

    def find_challenge(self, token: str) -> tuple[str, str] | None:
        """(domain, key authorization) published for `token` and not expired, or None."""

    def withdraw_challenge(self, token: str) -> None:
        """Forget what was published for `token`; nothing if it is gone already."""


class FileStore:
    """State under a local directory; one subdirectory per certificate name.

    Hot paths use plain string paths and one open per file: a run over ten thousand
    certificates reads one small meta.json for each (see docs/performance.md).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._accounts, self._certificates = (os.path.join(self.root, top) for top in ("accounts", "certificates"))
        self._locked = False
        self._context: RunContext | None = None
        self._checked_at = -RECHECK_AFTER
        """When (time.monotonic) a read without the lock last checked the top directories."""

    @contextmanager
    def lock(self, timeout: float, context: RunContext | None = None) -> Iterator[None]:
        """An exclusive flock on `<root>/lock` (see `certrenew.state.lock`); once held, ready the layout.
        The writes made under it are `context`'s: a signal does not cut them, a cancelled worker starts none."""
        with StateLock(self.root, timeout, context):
            self._context = context
            self._prepare()
            self._locked = True
            try:
                yield
            finally:
                self._locked, self._context = False, None

    def _prepare(self) -> None:
        """Create the layout with private permissions and clear temps of a killed run.

        Only the lock holder may clear temps: another run's could be in flight. Those
        in a certificate's own directory are cleared by the next write there, so a run
        does not list ten thousand directories to find none.
        """
        owned.make_dir(self.root, follow=True)  # the lock made it, or checked it
        for directory in (self.root / "accounts", self.root / "certificates"):
            owned.make_dir(directory)
        for directory in [self.root, self.root / "accounts", self.root / "certificates",
                          *self.root.glob("accounts/*/")]:
            remove_stale_temps(directory)

    def _check_layout(self) -> None:
        """Before a read: the state dir and its top directories are ours.

        Checked when the lock is taken (`_prepare`), and without it at most every RECHECK_AFTER
        seconds: `status` over ten thousand certificates checks once, and a daemon's /metrics
        and /healthz between passes, in a process that lives for months, check at each request.
        """
        now = time.monotonic()
        if self._locked or now - self._checked_at < RECHECK_AFTER:
            return
        if owned.check_dir(self.root, follow=True):
            for directory in (self._accounts, self._certificates):
                owned.check_dir(directory)
        self._checked_at = now

    # Accounts, one per ACME directory URL.

    def _account_dir(self, directory_url: str) -> Path:
        parts = urlsplit(directory_url)
        digest = hashlib.sha256(directory_url.encode()).hexdigest()[:12]
        return self.root / "accounts" / f"{parts.hostname or 'ca'}-{digest}"

    def load_account(self, directory_url: str) -> Account | None:
        directory = self._account_dir(directory_url)
        self._check_layout()
        if not owned.check_dir(directory):
            return None
        key_pem = _read(directory / "key.pem")
        if key_pem is None:
            return None
        raw = _read(directory / "account.json")
        uri = None if raw is None else decode(raw, _account_uri, str(directory / "account.json"))
        return Account(key_pem, uri)

    def save_account(self, directory_url: str, account: Account) -> None:
        directory = self._account_dir(directory_url)
        owned.make_dir(directory)
        write_atomic(directory / "key.pem", account.key_pem, context=self._context)
        write_atomic(directory / "account.json", encode({"directory": directory_url, "uri": account.uri}),
                     context=self._context)

    # Certificates.

    def _path(self, name: str, file: str) -> str:
        return f"{self._certificates}/{name}/{file}"

    def _read(self, name: str, file: str) -> bytes | None:
        """A file of certificate `name`, or None; read only from a directory and a file that are ours alone."""
        self._check_layout()
        if not owned.check_dir(f"{self._certificates}/{name}"):
            return None
        return _read(self._path(name, file))

    def _writable_dir(self, name: str) -> Path:
        """The certificate's directory, created if need be, cleared of temps a killed run left."""
        directory = self.root / "certificates" / name
        owned.make_dir(directory)
        remove_stale_temps(directory)
        return directory

    def names(self) -> list[str]:
        self._check_layout()
        try:
            entries = os.listdir(self._certificates)
        except FileNotFoundError:
            return []
        return sorted(name for name in entries if not name.startswith("."))  # temps start with a dot

    def archive(self, name: str, label: str) -> Path:
        """Move everything kept for `name` to `removed/<name>-<label>/`, out of every run's sight
        but not lost (it holds the key, should the operator need it back); return where."""
        source = self.root / "certificates" / name
        target = self.root / "removed" / f"{name}-{label}"
        owned.make_dir(target.parent)
        os.rename(source, target)
        fsync_directory(source.parent)
        fsync_directory(target.parent)
        return target

    def load_record(self, name: str) -> CertificateRecord | None:
        try:
            return self._load_json(name, "meta.json", functools.partial(CertificateRecord.from_json, name=name))
        except CertrenewError as error:
            raise CertrenewError(f"{error}; repair it, or move it away and the next run orders {name} anew") from error

    def save_record(self, record: CertificateRecord) -> None:
        self._save_json(record.name, "meta.json", record.to_json())

    def _load_json(self, name: str, file: str, parse: Callable[[dict], T]) -> T | None:
        raw = self._read(name, file)
        return None if raw is None else decode(raw, parse, self._path(name, file))

    def _save_json(self, name: str, file: str, document: dict) -> None:
        write_atomic(self._writable_dir(name) / file, encode(document), context=self._context)

    def load_bundle(self, name: str, slot: str = "current") -> bytes | None:
        if slot not in BUNDLE_SLOTS:
            raise ValueError(f"no bundle slot {slot!r}")
        return self._read(name, f"{slot}.pem")

    def save_order(self, name: str, order: PendingOrder) -> None:
        self._save_json(name, "order.json", order.to_json())

    def load_order(self, name: str) -> PendingOrder | None:
        return self._load_json(name, "order.json", PendingOrder.from_json)

    def discard_order(self, name: str) -> None:
        _remove(self._path(name, "order.json"))

    def unfinished(self, name: str) -> bool:
        return _exists(self._path(name, "pending.pem")) or _exists(self._path(name, "order.json"))

    def save_pending(self, name: str, bundle: bytes, directory: str | None = None) -> None:
        # Its CA first: a pending.pem never goes with another one's pending.json.
        self._save_json(name, "pending.json", {"directory": directory})
        write_atomic(self._writable_dir(name) / "pending.pem", bundle, context=self._context)
        self.discard_order(name)

    def pending_directory(self, name: str) -> str | None:
        return self._load_json(name, "pending.json", _directory)

    def discard_pending(self, name: str) -> None:
        _remove(self._path(name, "pending.pem"))
        _remove(self._path(name, "pending.json"))

    def set_aside(self, name: str, kind: str) -> str:
        directory = self._writable_dir(name)
        rejected = directory / "rejected"
        owned.make_dir(rejected)
        stamp = _utc_now().strftime("%Y%m%dT%H%M%S.%fZ")
        source, target = directory / SET_ASIDE[kind], rejected / f"{stamp}-{SET_ASIDE[kind]}"
        try:
            os.rename(source, target)
            fsync_directory(rejected)
            if kind == "pending":
                _remove(self._path(name, "pending.json"))
            fsync_directory(directory)
        except OSError as error:
            raise CertrenewError(f"cannot set aside {source}: {error.strerror or error}") from error
        return str(target)

    def promote_pending(self, record: CertificateRecord) -> None:
        # Each step is one atomic write and the pending file goes last.
        pending = self.load_bundle(record.name, "pending")
        if pending is None:
            raise CertrenewError(f"no pending certificate to promote for {record.name}")
        directory = self._writable_dir(record.name)
        current = self.load_bundle(record.name)
        if current is not None:
            write_atomic(directory / "previous.pem", current, context=self._context)
        write_atomic(directory / "current.pem", pending, context=self._context)
        self.save_record(record)
        self.discard_pending(record.name)

    # HTTP-01 answers published for another process's responder: challenges/<token>.json.

    def _challenge_path(self, token: str) -> str:
        return f"{self.root}/challenges/{check_token(token)}.json"

    def publish_challenge(self, token: str, domain: str, validation: str) -> None:
        directory = self.root / "challenges"
        owned.make_dir(self.root, follow=True)
        owned.make_dir(directory)
        _remove_expired(directory)
        document = {"domain": domain, "validation": validation, "published": _utc_now().isoformat()}
        # Not fsynced: an answer is worth nothing after a crash, and a run publishes one per name.
        write_atomic(Path(self._challenge_path(token)), encode(document), sync=False, context=self._context)

    def find_challenge(self, token: str) -> tuple[str, str] | None:
        self._check_layout()
        if not TOKEN.fullmatch(token) or not owned.check_dir(self.root / "challenges"):
            return None
        path = self._challenge_path(token)
        raw = _read(path)
        return None if raw is None else decode(raw, _challenge, path)

    def withdraw_challenge(self, token: str) -> None:
        _remove(self._challenge_path(token))


def _challenge(data: dict) -> tuple[str, str] | None:
    """A published answer as (domain, key authorization), or None once it has expired."""
    published = datetime.datetime.fromisoformat(_text("published", data["published"]))
    if published.tzinfo is None or _utc_now() - published > CHALLENGE_TTL:
        return None
    return _text("domain", data["domain"]), _text("validation", data["validation"])


def _remove_expired(directory: Path) -> None:
    """Delete answers (and temps) a killed run left behind, by their age on disk: none is read."""
    oldest = time.time() - CHALLENGE_TTL.total_seconds()
    for entry in os.scandir(directory):
        try:
            if entry.name.endswith((".json", ".tmp")) and entry.stat(follow_symlinks=False).st_mtime < oldest:
                os.unlink(entry.path)
        except FileNotFoundError:
            pass


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _account_uri(data: dict) -> str | None:
    uri = data.get("uri")
    if uri is not None:
        _text("uri", uri)
    return uri


def _directory(data: dict) -> str | None:
    directory = data.get("directory")
    if directory is not None:
        _text("directory", directory)
    return directory


def _read(path: str | Path) -> bytes | None:
    """The file's bytes, or None if it does not exist; refused unless ours alone (see `owned`).

    Open, fstat, read, close: `open()` adds another fstat and an lseek per file, a sixth
    of a no-op run over 10,000 certificates; and no separate exists().
    """
    try:
        fd = owned.open_file(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise CertrenewError(f"cannot read {path}: {error.strerror}") from error
    try:
        chunks = []
        while chunk := os.read(fd, READ_SIZE):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _exists(path: str) -> bool:
    """Whether `path` exists; access(2) answers "no" without an exception, a third cheaper than stat."""
    return os.access(path, os.F_OK)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
