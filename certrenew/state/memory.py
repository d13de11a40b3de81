"""A `Backend` in memory: one process's state, for tests and for a library host that keeps none.

A lease here lives as long as its `with` block, unless `suspend` stops keeping it alive (what a
process paused past its TTL does): it then expires `ttl` seconds later, and the next taker gets
a larger token. Versions are one counter over every key, as etcd's revisions are.
"""

import datetime
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from certrenew.state.backend import ABSENT, Busy, Changes, Conflict, Entry, Fenced, Holder, Lease, check_key
from certrenew.system.runcontext import RunContext

log = logging.getLogger(__name__)


@dataclass
class MemoryLease:
    key: str
    token: int
    holder: str
    ttl: float
    backend: "MemoryBackend"
    expires: float = float("inf")
    """time.monotonic() after which the lease is gone: never while it is kept alive."""
    released: bool = field(default=False)
    since: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc))

    def held(self) -> bool:
        return (not self.released and time.monotonic() < self.expires
                and self.backend._leases.get(self.key) is self)

    def check(self) -> None:
        with self.backend._mutex:
            if not self.held():
                raise Fenced(f"the lock on {self.key} (token {self.token}) is no longer held: its lease "
                             "expired or another holder took it over")

    def suspend(self) -> None:
        """Stop keeping the lease alive, as a holder paused past its TTL does (for tests)."""
        with self.backend._mutex:
            self.expires = time.monotonic() + self.ttl


class MemoryBackend:
    shared = False
    outage = None
    """Keys and versioned values in a dict, guarded by one mutex."""

    def __init__(self, context: RunContext | None = None) -> None:
        """`context`: the run whose cancellation ends a wait for a lock."""
        self.context = context or RunContext()
        self._entries: dict[str, Entry] = {}
        self._leases: dict[str, MemoryLease] = {}
        self._tokens: dict[str, int] = {}
        self._revision = 0
        self._mutex = threading.Condition()

    def get(self, key: str) -> Entry | None:
        with self._mutex:
            return self._entries.get(check_key(key))

    def list(self, prefix: str, suffix: str = "") -> dict[str, Entry]:
        with self._mutex:
            return {key: entry for key, entry in self._entries.items()
                    if key.startswith(prefix) and key.endswith(suffix)}

    def write(self, changes: Mapping[str, bytes | None], *, expect: Mapping[str, int] | None = None,
              fence: Lease | None = None) -> int:
        with self._mutex:
            for key in changes:
                check_key(key)
            if fence is not None:
                fence.check()
            for key, version in (expect or {}).items():
                entry = self._entries.get(key)
                if (entry.version if entry else ABSENT) != version:
                    raise Conflict(f"{key} changed meanwhile (version {entry.version if entry else 'none'}, "
                                   f"expected {version or 'none'})")
            self._revision += 1
            for key, value in changes.items():
                if value is None:
                    self._entries.pop(key, None)
                else:
                    self._entries[key] = Entry(bytes(value), self._revision)
            self._mutex.notify_all()
            return self._revision

    def watch(self, prefix: str, after: int, timeout: float) -> Changes:
        """Every entry under `prefix` once anything was written after `after`: no history is kept."""
        with self._mutex:
            if not self._mutex.wait_for(lambda: self._revision > after, timeout):
                return Changes(after, {})
            return Changes(self._revision, {key: entry for key, entry in self._entries.items()
                                            if key.startswith(prefix)}, complete=True)

    @contextmanager
    def lock(self, key: str, *, ttl: float, wait: float, holder: str) -> Iterator[MemoryLease]:
        check_key(key)
        end, said = time.monotonic() + wait, False
        with self._mutex:
            while (current := self._leases.get(key)) is not None and current.held():
                if not said and wait > 0:
                    log.warning("%s holds the lock on %s; waiting up to %g s for it", current.holder, key, wait)
                    said = True
                left = min(end, current.expires) - time.monotonic()
                if time.monotonic() >= end:
                    raise Busy(f"{current.holder} holds the lock on {key}; gave up after {wait:g} s")
                self.context.check()
                self._mutex.wait(min(max(left, 0.001), 0.1))
            token = self._tokens[key] = self._tokens.get(key, 0) + 1
            lease = self._leases[key] = MemoryLease(key, token, holder, ttl, self)
        try:
            yield lease
        finally:
            self._release(lease)

    def _release(self, lease: MemoryLease) -> None:
        with self._mutex:
            lease.released = True
            if self._leases.get(lease.key) is lease:
                del self._leases[lease.key]
            self._mutex.notify_all()

    def locks(self, prefix: str) -> dict[str, Holder]:
        with self._mutex:
            now = time.monotonic()
            return {key: Holder(lease.holder, lease.token, lease.since, min(lease.ttl, lease.expires - now))
                    for key, lease in self._leases.items() if key.startswith(prefix) and lease.held()}

    def where(self, key: str) -> str:
        return f"memory:{key}"

    def close(self) -> None:
        for lease in list(self._leases.values()):
            self._release(lease)
