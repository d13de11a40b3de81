"""What a node says while its store is unreachable: since when, and what it serves that nears expiry.

Nothing of the store can be read then, so what is known comes from the node itself: the store's client
(`Backend.outage`: since when every request has failed) and the bundles of its own ssl dir, which HAProxy
serves. A certificate there past its renewal time cannot be renewed until the store answers: the daemon's
log, /healthz, /metrics and `status` name it with the time it has left.
"""

import datetime
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from certrenew.config import CertificateSpec
from certrenew.errors import CertrenewError, StoreUnreachable
from certrenew.renewal.policy import lifetime_renew_at, minutes
from certrenew.state.backend import Outage
from certrenew.state.store import CertificateRecord
from certrenew.system.limits import MAX_BUNDLE, read_regular

READ_BOUND = 2.0
"""Seconds a reader of `LastRead` waits for a fresh read before it takes the last one: a probe of /healthz
asked as etcd goes away answers in that time, not after the store client's patience (15 s)."""
T = TypeVar("T")


class LastRead(Generic[T]):
    """What `read` (of the store) last gave, read afresh at each call unless the store is known away, on a
    thread of its own, one read at a time, waited for at most READ_BOUND: the daemon's /healthz and /metrics
    answer at once while etcd is unreachable, and in seconds while it goes away unnoticed yet. The first read
    starts at once (the store answered a moment ago) and is waited for however long it takes: until one has
    succeeded there is nothing older to give."""

    def __init__(self, read: Callable[[], T], initial: T) -> None:
        self._read = read
        self._last = initial
        self._read_once = False
        self._error: Exception | None = None
        self._done = threading.Event()
        self._mutex = threading.Lock()
        self._start()

    def __call__(self, away: bool = False) -> T:
        """The latest read; a fresh one, waited for at most READ_BOUND, unless the store is `away` (then the
        last one at once, whatever read still waits on the store)."""
        with self._mutex:
            if not away and self._done.is_set():
                self._start()
        if not self._read_once:
            self._done.wait()
        elif not away:
            self._done.wait(READ_BOUND)
        if self._error is not None:
            raise self._error
        return self._last

    def _start(self) -> None:
        self._done.clear()
        threading.Thread(target=self._refresh, name="certrenew-status-read", daemon=True).start()

    def _refresh(self) -> None:
        """(A daemon thread: a read waiting on etcd does not hold up the daemon's exit.)"""
        try:
            self._last, self._error, self._read_once = self._read(), None, True
        except StoreUnreachable:  # the store's condition, which `StoreHealth` reports: the last read stands
            self._error = None
        except Exception as error:  # the caller's to report, as if it had read itself
            self._error = error
        finally:
            self._done.set()


@dataclass(frozen=True)
class Expiring:
    """A certificate this node serves, past its renewal time while the store cannot be reached."""

    name: str
    not_after: datetime.datetime
    left: datetime.timedelta

    def line(self) -> str:
        when = "expired" if self.left <= datetime.timedelta(0) else f"expires in {duration(self.left)}"
        return f"{self.name} {when} (at {minutes(self.not_after)} UTC): it cannot be renewed until the store answers"


@dataclass(frozen=True)
class StoreHealth:
    """Whether a node reaches its store (`outage` None), and while it does not, what nears expiry."""

    outage: Outage | None = None
    expiring: tuple[Expiring, ...] = ()

    def reason(self) -> str | None:
        """One line on the store for an operator, None while it answers."""
        if self.outage is None:
            return None
        since = utc(self.outage.since).isoformat(" ", "seconds")[:19]
        return (f"the store is unreachable since {since} UTC ({self.outage.reason}): renewals wait for it; "
                "HAProxy keeps serving what it serves")

    def to_json(self) -> dict:
        """The store's part of /healthz and of `status --json`: reachable, or since when not, why, and what
        nears expiry meanwhile."""
        if self.outage is None:
            return {"store": {"reachable": True}}

        def when(moment: datetime.datetime) -> str:
            return moment.replace(microsecond=0).isoformat()

        return {"store": {"reachable": False, "unreachable_since": when(utc(self.outage.since)),
                          "last_failure": when(utc(self.outage.last)), "error": self.outage.reason},
                "expiring": [{"name": item.name, "not_after": when(item.not_after),
                              "seconds_left": int(item.left.total_seconds())} for item in self.expiring]}

    def lines(self) -> list[str]:
        """The store's line and one per certificate nearing expiry meanwhile: none while it answers."""
        reason = self.reason()
        return [reason, *(item.line() for item in self.expiring)] if reason else []


def store_health(outage: Outage | None, ssl_dir: Path, specs: list[CertificateSpec],
                 renew_before: datetime.timedelta | None = None, now: datetime.datetime | None = None) -> StoreHealth:
    """`outage` and, during one, the certificates of `specs` the ssl dir holds past their renewal time,
    soonest to expire first. Reads the ssl dir only during an outage."""
    if outage is None:
        return StoreHealth()
    return StoreHealth(outage, tuple(expiring(ssl_dir, specs, renew_before, now)))


def expiring(ssl_dir: Path, specs: list[CertificateSpec], renew_before: datetime.timedelta | None = None,
             now: datetime.datetime | None = None) -> list[Expiring]:
    """The certificates of `specs` whose bundle in `ssl_dir` is past its renewal time (the lifetime rule: the
    store's record, with the CA's window, is out of reach), soonest to expire first; unreadable ones skipped."""
    from certrenew.pki.bundle import leaf_info  # cryptography: only during an outage

    now = now or datetime.datetime.now(datetime.timezone.utc)
    found = []
    for spec in specs:
        try:
            info = leaf_info(read_regular(ssl_dir / f"{spec.name}.pem", MAX_BUNDLE))
        except (OSError, ValueError, CertrenewError):  # none yet, or not ours to judge here
            continue
        record = CertificateRecord(spec.name, list(spec.domains), spec.key_type, not_before=info.not_before,
                                   not_after=info.not_after)
        if now >= lifetime_renew_at(record, renew_before):
            found.append(Expiring(spec.name, info.not_after, info.not_after - now))
    return sorted(found, key=lambda item: item.not_after)


def duration(delta: datetime.timedelta) -> str:
    """`delta` for a person: "2 d 3 h", "3 h 20 min", "45 s"."""
    seconds = int(delta.total_seconds())
    days, hours, mins = seconds // 86400, seconds // 3600 % 24, seconds // 60 % 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {mins} min"
    return f"{mins} min" if mins else f"{seconds} s"


def utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
