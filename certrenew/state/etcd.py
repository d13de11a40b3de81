"""A `Backend` on an etcd v3 cluster (≥ 3.4): one state shared by a fleet of nodes.

Everything lives under one prefix: values at `PREFIX/data/<key>`, locks at `PREFIX/locks/<key>`
(so listing the data never shows a lock). A version is the key's mod_revision; a write is one
transaction whose compares are the expected versions and, under a lock, that the lock key still
has the create_revision that is the lock's fencing token. A lock is a put-if-absent of its key on
a lease that a thread keeps alive; revisions only grow, so each holder's token is larger than the
last one's. A waiter watches the lock key for its deletion (a release, an expired lease). A write that got no answer (a leader killed mid-write) is re-read before it is sent
again, so nothing is applied twice (see `EtcdClient.call`).
"""

import datetime
import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from certrenew.errors import CertrenewError, ConfigurationError, Interrupted, UsageError
from certrenew.state.backend import ABSENT, Busy, Changes, Conflict, Entry, Fenced, Holder, Lease, Outage, check_key
from certrenew.state.etcd_client import EtcdClient, Tls, b64, unb64
from certrenew.system.runcontext import RunContext

log = logging.getLogger(__name__)

MAX_OPS = 128
"""etcd's default limit of operations in one transaction (--max-txn-ops)."""
PAGE = 2000
"""Keys per range request of a list: fewer pages cost less (measured: 30,000 keys in 2.1 s by 500, 1.3 s
by 2,000, no better by 5,000); a page of 2,000 bundles of about 5 KB is about 10 MB."""
WATCH = 1.0
"""How long a waiting lock watches for its holder to let go before it looks again (and sees
whether the run was cancelled meanwhile)."""
URL = re.compile(r"etcd://(?P<endpoints>[^/]+)/(?P<prefix>[A-Za-z0-9_.@=+,:/-]*[A-Za-z0-9_@=+,:-])/?")
ENDPOINT = re.compile(r"[A-Za-z0-9.-]+:[0-9]{1,5}|\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}")


def _range_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with `prefix` (etcd's prefix range)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


class EtcdLease:
    """A lock held on a lease of `ttl` seconds that a thread renews every third of it."""

    def __init__(self, backend: "EtcdBackend", key: str, ttl: float) -> None:
        self.key = key
        self.token = 0
        self._backend = backend
        self._ttl = ttl
        self.id = int(backend._client.call("/v3/lease/grant", {"TTL": max(1, math.ceil(ttl))})["ID"])
        self._lost = False
        self._stop = threading.Event()
        self._keeper = threading.Thread(target=self._keep, name=f"etcd-lease-{key}", daemon=True)
        self._keeper.start()

    def _keep(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self._ttl / 3):
            try:
                answer = self._backend._client.call("/v3/lease/keepalive", {"ID": str(self.id)},
                                                     patience=self._ttl / 3)
            except (CertrenewError, Interrupted) as error:  # cancelled: held until the `with` block ends
                if time.monotonic() - renewed < self._ttl:
                    continue
                log.warning("the lease of the lock on %s could not be renewed: %s", self.key, error)
                self._lost = True
                return
            if int(answer.get("TTL", 0)) <= 0:
                log.warning("the lease of the lock on %s expired", self.key)
                self._lost = True
                return
            renewed = time.monotonic()

    def check(self) -> None:
        if not self._lost:
            found = self._backend._read(self._backend._lock_key(self.key))
            self._lost = found is None or int(found.get("create_revision", 0)) != self.token
        if self._lost:
            raise Fenced(f"the lock on {self.key} (token {self.token}) is no longer held: its lease expired "
                         "or another holder took it over")

    def suspend(self) -> None:
        """Stop keeping the lease alive, as a holder paused past its TTL does (for tests)."""
        self._stop.set()
        self._keeper.join()

    def release(self) -> None:
        """Revoke the lease (once; a lost one is gone already), which deletes the lock key."""
        if self._stop.is_set():
            return
        self.suspend()
        if self._lost:
            return
        try:
            self._backend._client.call("/v3/lease/revoke", {"ID": str(self.id)}, patience=self._ttl)
        except CertrenewError as error:  # the lease then ends by itself, at most a TTL later
            log.warning("the lock on %s was not released (%s); it expires within %g s", self.key, error, self._ttl)


class EtcdBackend:
    """Keys and versioned values under `prefix` on the etcd cluster `client` talks to."""

    shared = True

    def __init__(self, client: EtcdClient, prefix: str, *, page: int = PAGE) -> None:
        self._client = client
        self.prefix = prefix.strip("/")
        self._page = page
        self._held: set[EtcdLease] = set()
        self._mutex = threading.Lock()
        self._listed: dict[tuple[str, str], dict[str, Entry]] = {}
        """The entries of the last `list` of each prefix and suffix (see `list`)."""

    @property
    def outage(self) -> Outage | None:
        return self._client.outage

    def _data_key(self, key: str) -> bytes:
        return f"{self.prefix}/data/{key}".encode()

    def _lock_key(self, key: str) -> bytes:
        return f"{self.prefix}/locks/{check_key(key)}".encode()

    def _read(self, full: bytes) -> dict[str, Any] | None:
        kvs = self._client.call("/v3/kv/range", {"key": b64(full)}).get("kvs") or []
        return kvs[0] if kvs else None

    def get(self, key: str) -> Entry | None:
        found = self._read(self._data_key(check_key(key)))
        return Entry(unb64(found.get("value")), int(found["mod_revision"])) if found else None

    def list(self, prefix: str, suffix: str = "") -> dict[str, Entry]:
        """A keys-only range read, then, with a `suffix`, the values of those keys alone, MAX_OPS to a
        transaction, all at that read's revision: one snapshot either way. The values of the last such
        list are kept, and only the keys written since are read again: a value at a version never changes,
        and the daemon's /metrics lists every record at each scrape (10,000: one keys-only read, not 80 more)."""
        if not suffix:
            return self._snapshot(prefix)[1]
        revision, keys = self._snapshot(prefix, keys_only=True)
        with self._mutex:
            known = {key: entry for key, entry in self._listed.get((prefix, suffix), {}).items()
                     if key in keys and keys[key].version == entry.version}
        wanted = [key for key, entry in keys.items() if key.endswith(suffix) and key not in known]
        found = dict(known)
        for start in range(0, len(wanted), MAX_OPS):
            reads = [{"request_range": {"key": b64(self._data_key(key)), "revision": str(revision)}}
                     for key in wanted[start:start + MAX_OPS]]
            for key, response in zip(wanted[start:start + MAX_OPS],
                                     self._client.call("/v3/kv/txn", {"success": reads})["responses"]):
                for kv in response["response_range"].get("kvs") or []:
                    found[key] = Entry(unb64(kv.get("value")), int(kv["mod_revision"]))
        with self._mutex:
            self._listed[(prefix, suffix)] = found
        return found

    def _snapshot(self, prefix: str, keys_only: bool = False) -> tuple[int, dict[str, Entry]]:
        """Every entry under `prefix` (`keys_only`: with empty values) and the revision they were read at:
        page after page at the first page's revision, so the whole list is one snapshot."""
        start, skip = self._data_key(prefix), len(self._data_key(""))
        body: dict[str, Any] = {"key": b64(start), "range_end": b64(_range_end(start)), "limit": self._page,
                                "keys_only": keys_only}
        found: dict[str, Entry] = {}
        while True:
            answer = self._client.call("/v3/kv/range", body)
            kvs = answer.get("kvs") or []
            for kv in kvs:
                found[unb64(kv["key"])[skip:].decode()] = Entry(unb64(kv.get("value")), int(kv["mod_revision"]))
            body.setdefault("revision", answer["header"]["revision"])
            if not answer.get("more") or not kvs:
                return int(body["revision"]), found
            body["key"] = b64(unb64(kvs[-1]["key"]) + b"\0")

    def watch(self, prefix: str, after: int, timeout: float) -> Changes:
        """A watch of the prefix from `after` on (one request, a stream of about 1.5 ms per event on loopback);
        a snapshot when there is nothing to watch from."""
        if after:
            start, skip = self._data_key(prefix), len(self._data_key(""))
            events = self._client.watch(start, after, timeout, range_end=_range_end(start))
            if events is not None:
                entries: dict[str, Entry | None] = {}
                for event in events:
                    kv = event["kv"]
                    after = max(after, int(kv["mod_revision"]))
                    entries[unb64(kv["key"])[skip:].decode()] = (
                        None if event.get("type") == "DELETE" else Entry(unb64(kv.get("value")), int(kv["mod_revision"])))
                return Changes(after, entries)
            log.info("etcd compacted its history past revision %d: reading %s afresh", after, prefix)
        revision, found = self._snapshot(prefix)
        return Changes(revision, dict(found), complete=True)

    def write(self, changes: Mapping[str, bytes | None], *, expect: Mapping[str, int] | None = None,
              fence: Lease | None = None) -> int:
        for key in changes:
            check_key(key)
        expect = dict(expect or {})
        if len(changes) > MAX_OPS or len(expect) + (fence is not None) > MAX_OPS:
            raise UsageError(f"a write of {len(changes)} keys expecting {len(expect)} versions is more than the "
                             f"{MAX_OPS} operations of one etcd transaction: split it")
        compares, checks = [], []
        if fence is not None:
            lock = b64(self._lock_key(fence.key))
            compares.append({"key": lock, "target": "CREATE", "result": "EQUAL", "create_revision": str(fence.token)})
            checks.append({"request_range": {"key": lock}})
        for key, version in expect.items():
            full = b64(self._data_key(key))
            compares.append({"key": full, "target": "MOD", "result": "EQUAL", "mod_revision": str(version)}
                            if version != ABSENT else
                            {"key": full, "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
            checks.append({"request_range": {"key": full}})
        operations = [{"request_delete_range": {"key": b64(self._data_key(key))}} if value is None else
                      {"request_put": {"key": b64(self._data_key(key)), "value": b64(value)}}
                      for key, value in changes.items()]
        answer = self._client.call("/v3/kv/txn", {"compare": compares, "success": operations, "failure": checks},
                                   recheck=lambda: self._applied(changes))
        if answer.get("succeeded"):
            return int(answer["header"]["revision"])
        ranges = [(response.get("response_range") or {}).get("kvs") or [None] for response in answer["responses"]]
        if fence is not None:
            lock = ranges.pop(0)[0]
            if lock is None or int(lock["create_revision"]) != fence.token:
                raise Fenced(f"the write of {', '.join(changes)} was refused: the lock on {fence.key} (token "
                             f"{fence.token}) is no longer held (its lease expired or another holder took it over)")
        for (key, version), (kv,) in zip(expect.items(), ranges):
            now = int(kv["mod_revision"]) if kv else ABSENT
            if now != version:
                raise Conflict(f"{key} changed meanwhile (version {now or 'none'}, expected {version or 'none'})")
        raise Conflict(f"the write of {', '.join(changes)} was refused by etcd's compares")

    def _applied(self, changes: Mapping[str, bytes | None]) -> dict[str, Any] | None:
        """etcd's answer to a write of `changes` if it was applied (all its keys hold its values, written
        by one transaction), else None: what decides whether a write that got no answer is sent again."""
        reads = [{"request_range": {"key": b64(self._data_key(key))}} for key in changes]
        answer = self._client.call("/v3/kv/txn", {"success": reads})
        revisions = set()
        for (key, value), response in zip(changes.items(), answer["responses"]):
            kvs = response["response_range"].get("kvs") or []
            if (unb64(kvs[0].get("value")) if kvs else None) != value:
                return None
            if kvs:
                revisions.add(int(kvs[0]["mod_revision"]))
        if len(revisions) > 1:
            return None
        log.info("a write that got no answer from etcd was applied; not sending it again")
        return {"succeeded": True, "header": {"revision": str(revisions.pop() if revisions
                                                              else answer["header"]["revision"])}}

    @contextmanager
    def lock(self, key: str, *, ttl: float, wait: float, holder: str) -> Iterator[EtcdLease]:
        lease = EtcdLease(self, key, ttl)
        try:
            lease.token = self._acquire(lease, holder, time.monotonic() + wait, wait)
        except BaseException:
            lease.release()
            raise
        with self._mutex:
            self._held.add(lease)
        try:
            yield lease
        finally:
            with self._mutex:
                self._held.discard(lease)
            lease.release()

    def _acquire(self, lease: EtcdLease, holder: str, end: float, wait: float) -> int:
        """Put the lock key if absent, on `lease`; its token is the key's create_revision."""
        full = b64(self._lock_key(lease.key))
        value = json.dumps({"holder": holder, "since": datetime.datetime.now(datetime.timezone.utc).isoformat()})
        body = {"compare": [{"key": full, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                "success": [{"request_put": {"key": full, "value": b64(value), "lease": str(lease.id)}}],
                "failure": [{"request_range": {"key": full}}]}
        said = False
        while True:
            answer = self._client.call("/v3/kv/txn", body)
            if answer.get("succeeded"):
                return int(answer["header"]["revision"])
            kvs = answer["responses"][0]["response_range"].get("kvs") or []
            if kvs and int(kvs[0].get("lease", 0)) == lease.id:  # ours: a first try that got no answer
                return int(kvs[0]["create_revision"])
            current = _holder(unb64(kvs[0].get("value")))[0] if kvs else "another process"
            if time.monotonic() >= end:
                raise Busy(f"{current} holds the lock on {lease.key}; gave up after {wait:g} s")
            if not said and wait > 0:
                log.warning("%s holds the lock on %s; waiting up to %g s for it", current, lease.key, wait)
                said = True
            self._client.context.check()
            self._client.deleted(self._lock_key(lease.key), int(answer["header"]["revision"]),
                                 min(WATCH, max(end - time.monotonic(), 0.001)))

    def locks(self, prefix: str) -> dict[str, Holder]:
        """One range read of the lock keys, then each holder's lease asked for the time it has left (a
        lock is held for the few seconds of work on its certificate: few are held at any moment)."""
        start, skip = f"{self.prefix}/locks/{prefix}".encode(), len(f"{self.prefix}/locks/")
        body = {"key": b64(start), "range_end": b64(_range_end(start))}
        held = {}
        for kv in self._client.call("/v3/kv/range", body).get("kvs") or []:
            left = int(self._client.call("/v3/lease/timetolive", {"ID": str(kv.get("lease", 0))}).get("TTL", -1))
            if left >= 0:  # else the lease ended between the two reads
                holder, since = _holder(unb64(kv.get("value")))
                held[unb64(kv["key"])[skip:].decode()] = Holder(holder, int(kv["create_revision"]), since, float(left))
        return held

    def check(self) -> None:
        """Ask etcd once, so wrong credentials (UsageError) or an etcd not there (Unavailable) fail in
        one line before a command does anything, not as a failure of each certificate."""
        start = self._data_key("")
        try:
            self._client.call("/v3/kv/range", {"key": b64(start), "range_end": b64(_range_end(start)), "limit": 1,
                                               "keys_only": True})
        except ConfigurationError as error:
            raise UsageError(str(error)) from error

    def where(self, key: str) -> str:
        return f"etcd://{','.join(self._client.endpoints)}/{self._data_key(key).decode()}"

    def close(self) -> None:
        with self._mutex:
            held, self._held = self._held, set()
        for lease in held:
            lease.release()
        self._client.close()


def _holder(value: bytes) -> tuple[str, datetime.datetime | None]:
    """Who holds a lock, and since when, from the lock key's value: JSON, or (written by a certrenew before
    `locks`) the holder's name alone."""
    try:
        found = json.loads(value)
        return str(found["holder"]), datetime.datetime.fromisoformat(found["since"])
    except (ValueError, TypeError, KeyError):
        return value.decode(errors="replace"), None


def from_url(url: str, *, tls: Tls | None = None, username: str | None = None, password: str | None = None,
             context: RunContext | None = None) -> EtcdBackend:
    """The backend at `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`, or UsageError naming the right form."""
    match = URL.fullmatch(url)
    endpoints = match["endpoints"].split(",") if match else []
    if not match or not all(ENDPOINT.fullmatch(endpoint) for endpoint in endpoints):
        raise UsageError(f"not an etcd store: {url!r}; the form is etcd://HOST:PORT[,HOST:PORT...]/PREFIX")
    client = EtcdClient(endpoints, tls=tls, username=username, password=password, context=context)
    return EtcdBackend(client, match["prefix"])

