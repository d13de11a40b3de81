"""The state store: ACME accounts, certificate keys and chains, and their records.

`Store` is what a run needs from wherever its state lives, written once over the small
`Backend` protocol (see `backend`): its keys are the paths of the state dir of the file
backend (`certificates/<name>/meta.json`), and any backend keeps them (a state dir, memory,
etcd). `FileStore` is a `Store` in a local state dir, with the state dir's own lock.

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
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, TypeVar
from urllib.parse import urlsplit

from certrenew.config import FleetSettings
from certrenew.config.challenges import TOKEN, check_token
from certrenew.errors import CertrenewError, UsageError
from certrenew.state.backend import ABSENT, Backend, Conflict, Entry, Holder, Lease, Outage
from certrenew.state.files import FileBackend
from certrenew.state.lock import StateLock
from certrenew.state.schedule import SCHEDULE, Schedule
from certrenew.system import owned
from certrenew.system.atomicfile import remove_stale_temps
from certrenew.system.runcontext import RunContext

VERSION = 1
"""The format of the state documents; one without "version" predates the field and is version 1."""

BUNDLE_SLOTS = ("current", "previous", "pending")
SET_ASIDE = MappingProxyType({"pending": "pending.pem", "order": "order.json"})
"""What a run can set aside, and its file in a certificate's directory."""
SET_ASIDE_KEPT = 10
"""Items set aside a certificate keeps, the newest: enough to look into a CA's or a disk's fault, while a fault
met at every attempt never fills the disk, or a fleet's etcd."""
CERTIFICATES, CHALLENGES, REMOVED = "certificates", "challenges", "removed"
LEASE_TTL = 60.0
"""Seconds a lock outlives a holder that stopped keeping it alive (paused, frozen, cut off):
then the next taker gets it. A holder that exits lets go at once."""
MOVE_BATCH = 50
"""Keys an archive moves in one write: two operations each (a copy, a removal), within the 128 of an etcd
transaction. A certificate with more (many bundles set aside) is moved in steps."""
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


@dataclass(frozen=True)
class StoredRecord:
    """A certificate's record as the store holds it, with its generation (see `Store.records`)."""

    record: CertificateRecord | None
    """None when it cannot be read: `error` says why."""
    generation: int
    """The version of the record's last write: on a store with revisions (etcd, memory) the store's revision
    of that write, what the nodes of a fleet compare with the revision they have applied (see `nodes`)."""
    error: CertrenewError | None = None


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


class Store:
    """What runs keep, over any `Backend`: accounts, records, bundles, orders, challenges.

    Each certificate's state is written under its lock (`certificate`) when one is held by this
    store: every write of it is then fenced with that lock, so a holder that lost it (paused past
    its lease) cannot overwrite its successor's state. Reads need no lock.
    """

    def __init__(self, backend: Backend, holder: str | None = None, ttl: float = LEASE_TTL) -> None:
        self.backend = backend
        self.holder = holder or HOLDER.format(node=socket.gethostname(), pid=os.getpid())
        """Who holds a lock of this store, as a waiter names it."""
        self.ttl = ttl
        self._leases: dict[str, Lease] = {}
        """The certificates whose lock this store holds, by name: their writes are fenced."""
        self._guard = threading.Lock()

    # Locks.

    def lock(self, timeout: float) -> AbstractContextManager[object]:
        """Hold the whole store (an import, a revocation), waiting up to `timeout` seconds for
        another holder to let go; CertrenewError naming it if it does not."""
        return self.backend.lock("store", ttl=self.ttl, wait=timeout, holder=self.holder)

    def run_lock(self, timeout: float) -> AbstractContextManager[None]:
        """Taken by a run before it starts: it waits for whoever holds the whole store (`lock`), and
        lets go at once, as other runs go on beside it (each certificate under its own lock)."""
        with self.lock(timeout):
            return nullcontext()

    @contextmanager
    def certificate(self, name: str, wait: float) -> Iterator[Lease]:
        """Hold certificate `name`'s lock, waiting up to `wait` seconds; its writes are fenced meanwhile."""
        with self.backend.lock(f"{CERTIFICATES}/{name}", ttl=self.ttl, wait=wait, holder=self.holder) as lease:
            with self._guard:
                self._leases[name] = lease
            try:
                yield lease
            finally:
                with self._guard:
                    self._leases.pop(name, None)

    def account_lock(self, directory_url: str, wait: float) -> AbstractContextManager[Lease]:
        """A short lock for creating the account of the CA at `directory_url`: one per CA, whoever creates it."""
        return self.backend.lock(_account_key(directory_url), ttl=self.ttl, wait=wait, holder=self.holder)

    def _write(self, name: str, changes: dict[str, bytes | None], expect: dict[str, int] | None = None) -> None:
        """Write certificate `name`'s keys at once, fenced by its lock if this store holds it."""
        with self._guard:
            fence = self._leases.get(name)
        self.backend.write(changes, expect=expect, fence=fence)

    def names(self) -> list[str]:
        """Every certificate the store holds something for (a record, an order, a bundle), sorted.

        Listed below the sealing (see `sealed`), whose values are not needed: a bundle that does not unseal is
        its certificate's error when read, not every certificate's, and no bundle is decrypted to be counted.
        """
        listed = getattr(self.backend, "inner", self.backend)
        return sorted({key.split("/")[1] for key in listed.list(f"{CERTIFICATES}/")})

    # Accounts, one per ACME directory URL.

    def load_account(self, directory_url: str) -> Account | None:
        """The ACME account for the CA at `directory_url`, one per CA."""
        directory = _account_key(directory_url)
        key_pem = self.backend.get(f"{directory}/key.pem")
        if key_pem is None:
            return None
        raw = self.backend.get(f"{directory}/account.json")
        uri = None if raw is None else decode(raw.value, _account_uri,
                                              self.backend.where(f"{directory}/account.json"))
        return Account(key_pem.value, uri)

    def save_account(self, directory_url: str, account: Account) -> Account:
        """Keep `account` as the CA's, unless the store holds another key for it: the account the store holds.

        The first key stays (create-if-absent): one made late (its maker's account lock lapsed while it was
        paused, or `haproxy-config` beside a run) must not replace the fleet's account, whose thumbprint
        HAProxy may answer with; its maker uses the stored one instead. The same key's URI is updated.
        """
        directory = _account_key(directory_url)
        key = f"{directory}/key.pem"
        stored = self.backend.get(key)
        if stored is not None and stored.value != account.key_pem:
            return self.load_account(directory_url) or account
        changes: dict[str, bytes | None] = {f"{directory}/account.json": encode({"directory": directory_url,
                                                                                "uri": account.uri})}
        if stored is None:
            changes[key] = account.key_pem
        try:
            self.backend.write(changes, expect={key: stored.version if stored else ABSENT})
        except Conflict:  # made (or registered) meanwhile by another
            return self.load_account(directory_url) or account
        return account

    # Certificates.

    def _get(self, name: str, file: str) -> bytes | None:
        entry = self.backend.get(_key(name, file))
        return None if entry is None else entry.value

    def _load_json(self, name: str, file: str, parse: Callable[[dict], T]) -> T | None:
        raw = self._get(name, file)
        return None if raw is None else decode(raw, parse, self.backend.where(_key(name, file)))

    def archive(self, name: str, label: str) -> str:
        """Move everything kept for `name` to `removed/<name>-<label>/`, out of every run's sight
        but not lost (it holds the key, should the operator need it back); return where."""
        prefix, target = f"{CERTIFICATES}/{name}/", f"{REMOVED}/{name}-{label}"
        kept = self.backend.list(prefix)
        keys = sorted(kept)
        batches = [keys[start:start + MOVE_BATCH] for start in range(0, len(keys), MOVE_BATCH)] or [[]]
        copies: list[dict[str, bytes | None]] = [{f"{target}/{key[len(prefix):]}": kept[key].value for key in batch}
                                                 for batch in batches]
        removals = [{key: kept[key].version for key in batch} for batch in batches]
        if len(batches) == 1:  # most: one write
            self._write(name, {**copies[0], **dict.fromkeys(removals[0])}, removals[0])
        else:  # copies first: stopped between, both are kept, never neither
            for copy in copies:
                self._write(name, copy)
            for removal in removals:
                self._write(name, dict.fromkeys(removal), removal)
        return self.backend.where(target)

    def load_record(self, name: str) -> CertificateRecord | None:
        """The record of certificate `name`; CertrenewError naming it if it cannot be read."""
        raw = self._get(name, "meta.json")
        return None if raw is None else self._record(name, raw)

    def _record(self, name: str, raw: bytes) -> CertificateRecord:
        try:
            return decode(raw, functools.partial(CertificateRecord.from_json, name=name),
                          self.backend.where(_key(name, "meta.json")))
        except CertrenewError as error:
            raise CertrenewError(f"{error}; repair it, or move it away and the next run orders {name} anew") from error

    def records(self) -> dict[str, StoredRecord]:
        """Every certificate's record with its generation, by name, sorted, in one listing of the records
        alone: no bundle is read (nor, on a fleet, decrypted), and no get is made per certificate."""
        found = {}
        for key, entry in sorted(self.backend.list(f"{CERTIFICATES}/", "/meta.json").items()):
            name = key.split("/")[1]
            if key == _key(name, "meta.json"):  # not a record kept in a certificate's `rejected/`
                found[name] = self._stored(name, entry)
        return found

    def _stored(self, name: str, entry: Entry) -> StoredRecord:
        try:
            return StoredRecord(self._record(name, entry.value), entry.version)
        except CertrenewError as error:
            return StoredRecord(None, entry.version, error)

    def locks(self) -> dict[str, Holder]:
        """Who holds each certificate's lock now, by certificate name: read, never taken (see `Backend.locks`)."""
        prefix = f"{CERTIFICATES}/"
        return {key[len(prefix):]: holder for key, holder in self.backend.locks(prefix).items()}

    def save_record(self, record: CertificateRecord) -> None:
        self._write(record.name, {_key(record.name, "meta.json"): encode(record.to_json())})

    def load_bundle(self, name: str, slot: str = "current") -> bytes | None:
        """The HAProxy bundle (chain and key) in `slot`: "current", "previous" or "pending"."""
        if slot not in BUNDLE_SLOTS:
            raise ValueError(f"no bundle slot {slot!r}")
        return self._get(name, f"{slot}.pem")

    def save_order(self, name: str, order: PendingOrder) -> None:
        """Keep a validated order and its key until its certificate is downloaded."""
        self._write(name, {_key(name, "order.json"): encode(order.to_json())})

    def load_order(self, name: str) -> PendingOrder | None:
        return self._load_json(name, "order.json", PendingOrder.from_json)

    def discard_order(self, name: str) -> None:
        self._write(name, {_key(name, "order.json"): None})

    def schedule(self, settings: list) -> Schedule | None:
        """What the last run found not due (see `schedule`), made with these `settings`; None where the
        store cannot tell cheaply that a certificate's state is unchanged (here: each key has its own version)."""
        return None

    def unfinished(self, name: str) -> bool:
        """Whether an earlier run left an order or a certificate that is not installed yet."""
        return self.backend.get(_key(name, "pending.pem")) is not None or \
            self.backend.get(_key(name, "order.json")) is not None

    def save_pending(self, name: str, bundle: bytes, directory: str | None = None,
                     record: CertificateRecord | None = None) -> None:
        """Keep a freshly issued certificate, from the CA at `directory`, before it is installed
        anywhere; its order is done. One write: a pending certificate never goes without its CA,
        nor without `record` when given (the issue counted against the budget)."""
        changes = {_key(name, "pending.json"): encode({"directory": directory}), _key(name, "pending.pem"): bundle,
                   _key(name, "order.json"): None}
        if record is not None:
            changes[_key(name, "meta.json")] = encode(record.to_json())
        self._write(name, changes)

    def pending_directory(self, name: str) -> str | None:
        """The CA the pending certificate came from; None if not recorded (taken as the current CA)."""
        return self._load_json(name, "pending.json", _directory)

    def discard_pending(self, name: str) -> None:
        self._write(name, {_key(name, "pending.pem"): None, _key(name, "pending.json"): None})

    def set_aside(self, name: str, kind: str) -> str:
        """Move the pending certificate (`kind` "pending") or the order ("order") out of every run's
        way, kept for the operator to inspect under the certificate's `rejected/`; return where.
        The oldest there go, beyond the newest SET_ASIDE_KEPT."""
        source = _key(name, SET_ASIDE[kind])
        entry = self.backend.get(source)
        if entry is None:
            raise CertrenewError(f"cannot set aside {self.backend.where(source)}: No such file or directory")
        stamp = _utc_now().strftime("%Y%m%dT%H%M%S.%fZ")
        target = _key(name, f"rejected/{stamp}-{SET_ASIDE[kind]}")
        earlier = sorted(self.backend.list(_key(name, "rejected/")))  # named by time: oldest first
        changes: dict[str, bytes | None] = dict.fromkeys(earlier[:max(0, len(earlier) + 1 - SET_ASIDE_KEPT)])
        changes.update({target: entry.value, source: None})
        if kind == "pending":
            changes[_key(name, "pending.json")] = None
        self._write(name, changes, {source: entry.version})
        return self.backend.where(target)

    def promote_pending(self, record: CertificateRecord) -> None:
        """Make the pending certificate current, the current one previous, and store `record`, in
        one write: a run that stops half-way leaves the pending certificate for the next run to install."""
        name = record.name
        pending = self.backend.get(_key(name, "pending.pem"))
        if pending is None:
            raise CertrenewError(f"no pending certificate to promote for {name}")
        current = self.load_bundle(name)
        changes: dict[str, bytes | None] = {_key(name, "current.pem"): pending.value}
        if current is not None:
            changes[_key(name, "previous.pem")] = current
        changes.update({_key(name, "meta.json"): encode(record.to_json()), _key(name, "pending.pem"): None,
                        _key(name, "pending.json"): None})
        self._write(name, changes, {_key(name, "pending.pem"): pending.version})

    # HTTP-01 answers published for another process's responder: challenges/<token>.json.

    @property
    def shared(self) -> bool:
        """Whether other nodes use this store too: see `Backend.shared`."""
        return self.backend.shared

    @property
    def outage(self) -> Outage | None:
        """Since when the store has been unreachable, None while it answers: see `Backend.outage`."""
        return self.backend.outage

    def publish_challenge(self, token: str, domain: str, validation: str) -> None:
        """Make the HTTP-01 key authorization `validation` of `domain` available to every responder
        serving this store, for CHALLENGE_TTL. Needs no lock: each token is an entry of its own."""
        key = f"{CHALLENGES}/{check_token(token)}.json"
        expired = [found for found, entry in self.backend.list(f"{CHALLENGES}/").items()
                   if _expired(entry.value)]
        document = {"domain": domain, "validation": validation, "published": _utc_now().isoformat()}
        self.backend.write({**dict.fromkeys(expired), key: encode(document)})

    def find_challenge(self, token: str) -> tuple[str, str] | None:
        """(domain, key authorization) published for `token` and not expired, or None."""
        if not TOKEN.fullmatch(token):
            return None
        return self.read_challenge(token, self.backend.get(f"{CHALLENGES}/{token}.json"))

    def read_challenge(self, token: str, entry: Entry | None) -> tuple[str, str] | None:
        """(domain, key authorization) in `entry`, what was published for `token`, unless expired; None for none."""
        where = self.backend.where(f"{CHALLENGES}/{token}.json")
        return None if entry is None else decode(entry.value, _challenge, where)

    def withdraw_challenge(self, token: str) -> None:
        """Forget what was published for `token`; nothing if it is gone already."""
        self.backend.write({f"{CHALLENGES}/{check_token(token)}.json": None})

    def challenges_published(self) -> bool:
        """Whether any answer not expired is published, by any process."""
        return not all(_expired(entry.value) for entry in self.backend.list(f"{CHALLENGES}/").values())


class FileStore(Store):
    """A `Store` in a local state dir (see `files`), with the state dir's own lock, `<root>/lock`.

    That lock is an flock, as certrenew's before the backends took it: a run holds it shared for
    its whole length (runs go on beside each other, each certificate under its own lock) and an
    import or a revocation holds it exclusive. So a run waits for an older certrenew's whole run.
    """

    def __init__(self, root: Path, holder: str | None = None, ttl: float = LEASE_TTL,
                 context: RunContext | None = None) -> None:
        """`context`: the run whose cancellation ends its waits for a lock, and whose writes no signal cuts."""
        self.root = Path(root)
        self.files = FileBackend(self.root, context)
        super().__init__(self.files, holder, ttl)

    def lock(self, timeout: float) -> AbstractContextManager[object]:
        return self._state_lock(timeout, shared=False)

    def run_lock(self, timeout: float) -> AbstractContextManager[None]:
        return self._state_lock(timeout, shared=True)

    @contextmanager
    def _state_lock(self, timeout: float, shared: bool) -> Iterator[None]:
        with StateLock(self.root, timeout, self.files.context, shared):
            self._prepare()
            yield

    def _prepare(self) -> None:
        """Create the layout with private permissions and clear temps of a killed run (only a
        run that is gone: see `remove_stale_temps`). Those in a certificate's own directory are
        cleared by the next write there, so a run does not list ten thousand directories to find none."""
        owned.make_dir(self.root, follow=True)  # the lock made it, or checked it
        for directory in (self.root / "accounts", self.root / CERTIFICATES):
            owned.make_dir(directory)
        for directory in [self.root, self.root / "accounts", self.root / CERTIFICATES,
                          *self.root.glob("accounts/*/")]:
            remove_stale_temps(directory)

    def schedule(self, settings: list) -> Schedule:
        return Schedule(self.root / SCHEDULE, lambda name: self.files.statuses(_key(name, "meta.json")), settings)

    def unfinished(self, name: str) -> bool:
        return self.files.exists(f"{CERTIFICATES}/{name}", "pending.pem", "order.json")

    def records(self) -> dict[str, StoredRecord]:
        """The names listed, then each record read: a directory has no range read, and walking every
        certificate's directory costs twice as much (10,000 certificates: 0.5 s of CPU against 0.25 s)."""
        found = {}
        for name in self.names():
            try:
                entry = self.files.get(_key(name, "meta.json"))
            except CertrenewError as error:  # that certificate's fault alone
                found[name] = StoredRecord(None, 0, error)
                continue
            if entry is not None:
                found[name] = self._stored(name, entry)
        return found

    def names(self) -> list[str]:
        """Listed as the directory's names, not read: `status` over ten thousand certificates reads no bundle."""
        self.files.check_layout()
        try:
            entries = os.listdir(self.root / CERTIFICATES)
        except FileNotFoundError:
            return []
        return sorted(name for name in entries if not name.startswith("."))  # temps start with a dot


class StoreSettings(Protocol):
    """What `open_store` reads of the settings."""

    @property
    def store(self) -> str | None: ...

    @property
    def state_dir(self) -> Path: ...

    @property
    def lock_ttl(self) -> float: ...

    @property
    def fleet(self) -> FleetSettings: ...


MAX_PASSWORD = 4096


def open_store(settings: StoreSettings, context: RunContext | None = None) -> Store:
    """The store the settings name: `store` (--store, CERTRENEW_STORE, TOML `store`), else the state dir.

    The one place a store is built from a setting: every command reads and writes the same one.
    An etcd store keeps the whole state (see `etcd`); the node keeps none of it in its state dir.
    """
    where = settings.store
    holder = HOLDER.format(node=this_node(settings.fleet), pid=os.getpid())
    if where and "://" in where:
        scheme = where.split("://", 1)[0]
        if scheme == "etcd":
            return Store(_etcd(where, settings.fleet, context), holder, settings.lock_ttl)
        raise UsageError(f"--store {where}: unknown kind of store {scheme!r} (a directory, or etcd://HOST:PORT/PREFIX)")
    return FileStore(Path(where) if where else settings.state_dir, holder, settings.lock_ttl, context)


HOLDER = "certrenew on {node} (pid {pid})"
"""How a process names itself as a lock's holder: its node, so the fleet's view can say which node holds what."""
_HOLDER = re.compile(r"certrenew on (?P<node>.+) \(pid [0-9]+\)")


def this_node(fleet: FleetSettings) -> str:
    """This node's name in the fleet's locks and reports: --node-name, else the host name."""
    return fleet.node_name or socket.gethostname()


def holder_node(holder: str) -> str | None:
    """The node a lock's holder (see HOLDER) runs on; None for a holder named otherwise."""
    match = _HOLDER.fullmatch(holder)
    return match["node"] if match else None


def _etcd(url: str, fleet: FleetSettings, context: RunContext | None) -> Backend:
    """The etcd backend at `url`, reached as `fleet` says (TLS, a user), once it answered, its private
    keys sealed with the fleet's key file (see `sealed`)."""
    from certrenew.state.etcd import from_url  # requests' session: not for a run on a state dir
    from certrenew.state.etcd_client import Tls
    from certrenew.state.sealed import MAKE_KEY, SealedBackend, read_key_file

    tls = Tls(fleet.store_ca_bundle, fleet.store_cert, fleet.store_key) \
        if fleet.store_ca_bundle or fleet.store_cert else None
    password = None
    if fleet.store_password_file is not None:
        password = owned.read_secret(fleet.store_password_file, "the etcd password file (--store-password-file)",
                                     MAX_PASSWORD).decode(errors="replace").rstrip("\r\n")
    backend = from_url(url, tls=tls, username=fleet.store_user, password=password, context=context)
    if fleet.store_key_file is None:
        raise UsageError(f"an etcd store needs the fleet's key file, which encrypts the private keys kept there "
                         f"(--store-key-file; make one with `{MAKE_KEY}` and give every node the same)")
    key = read_key_file(fleet.store_key_file)
    backend.check()
    sealed = SealedBackend(backend, key, is_secret, fleet.store_key_file)
    sealed.check_key()
    return sealed


def is_secret(key: str) -> bool:
    """Whether the value at `key` holds a private key: an account's key, a bundle, an order (its new key),
    and their copies set aside or archived. What a shared store encrypts."""
    return key.endswith((".pem", "order.json"))


def _key(name: str, file: str) -> str:
    return f"{CERTIFICATES}/{name}/{file}"


def _account_key(directory_url: str) -> str:
    """The account's place: the CA's host name and a digest of its URL (one account per CA)."""
    digest = hashlib.sha256(directory_url.encode()).hexdigest()[:12]
    return f"accounts/{urlsplit(directory_url).hostname or 'ca'}-{digest}"


def _expired(raw: bytes) -> bool:
    """Whether a published answer is past CHALLENGE_TTL (or unreadable: nobody can serve it)."""
    try:
        return decode(raw, _challenge, "") is None
    except CertrenewError:
        return True


def _challenge(data: dict) -> tuple[str, str] | None:
    """A published answer as (domain, key authorization), or None once it has expired."""
    published = datetime.datetime.fromisoformat(_text("published", data["published"]))
    if published.tzinfo is None or _utc_now() - published > CHALLENGE_TTL:
        return None
    return _text("domain", data["domain"]), _text("validation", data["validation"])


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
