"""The small protocol every state backend implements: a directory, memory, an etcd cluster.

Keys are `/`-separated paths of safe segments (`certificates/example.com/record`); values are
bytes. Every entry has a version that changes on each write, so a write can be made conditional
on what the writer read (compare-and-put). A lock is held per key, for a lease that its holder
keeps alive; each acquisition gets a fencing token larger than every earlier one of that key,
and a write made under a lock is refused once the lock is no longer that token's (expired,
taken over by another holder): a writer paused past its lease cannot overwrite its successor.
What the state means (records, bundles, orders) is written once, above this, in `store`.
"""

import datetime
import re
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

# The protocol's outcomes live with every other public exception; named here too, where a backend raises them.
from certrenew.errors import Busy as Busy
from certrenew.errors import Conflict as Conflict
from certrenew.errors import Fenced as Fenced
from certrenew.errors import StoreUnreachable as StoreUnreachable
from certrenew.errors import Unavailable as Unavailable

ABSENT = 0
"""The version to expect of a key that must not exist yet (create-if-absent)."""
_SEGMENT = r"[A-Za-z0-9_@=+,:-][A-Za-z0-9_.@=+,:-]*"
KEY = re.compile(rf"(?:{_SEGMENT}/)*{_SEGMENT}")
"""A key: `/`-separated file names that are never hidden (temps and the backends' own files are)."""


@dataclass(frozen=True)
class Entry:
    """A value and its version (> 0; a new one on every write of the key)."""

    value: bytes
    version: int


@dataclass(frozen=True)
class Changes:
    """What `Backend.watch` saw: the entries that changed (None: deleted) up to `revision`, to watch on from."""

    revision: int
    entries: dict[str, Entry | None]
    complete: bool = False
    """`entries` holds every key under the prefix: whatever is not in it is gone (a first read, a resync)."""


@dataclass(frozen=True)
class Outage:
    """Since when a backend has failed to reach its cluster (Unix times), and its last reason."""

    since: float
    """The first failed request since the last one answered."""
    last: float
    """The latest failed request."""
    reason: str


@dataclass(frozen=True)
class Holder:
    """Who holds a lock now, as `Backend.locks` reads it without taking it."""

    holder: str
    """As the holder named itself (`lock`'s `holder`: node and pid)."""
    token: int
    since: datetime.datetime | None
    """When it took the lock; None where the backend did not record it (a lease taken by an older certrenew)."""
    left: float | None
    """Seconds its lease has left unless renewed: about the TTL while its holder keeps it alive, running
    down while the holder is paused or cut off; None where the backend cannot tell."""


class Lease(Protocol):
    """A held lock. Leaving its `with` block releases it."""

    key: str
    token: int
    """The fencing token: larger than that of every earlier holder of this key."""

    def check(self) -> None:
        """Raise Fenced if this lock is no longer held (lost lease, taken over)."""


class Backend(Protocol):
    """Keys and versioned values, conditional atomic writes, and fenced locks.

    Thread-safe: a run works on several certificates at once.
    """

    shared: bool
    """Whether other nodes work on it too (etcd): then the CA may validate at any of them."""
    @property
    def outage(self) -> Outage | None:
        """Since when the backend has failed to reach its cluster (etcd), None while it answers: what every
        reader (the daemon, `status`, the metrics) says, kept by the one client all requests go through.
        A directory or memory is always reachable."""

    def get(self, key: str) -> Entry | None:
        """The entry at `key`, or None."""

    def list(self, prefix: str, suffix: str = "") -> dict[str, Entry]:
        """Every entry whose key starts with `prefix` and ends with `suffix`, in one read (never one by one).

        With a `suffix`, only the values of those keys are read: every record of a store
        (`certificates/`, `/meta.json`) without the bundles beside them, nor their decryption."""

    def write(self, changes: Mapping[str, bytes | None], *, expect: Mapping[str, int] | None = None,
              fence: Lease | None = None) -> int:
        """Apply every change at once or none (None deletes the key); return the new version.

        `expect` maps keys to the version each must have now (ABSENT: must not exist), else
        Conflict; with `fence`, the write is refused with Fenced unless that lock is still held.
        A crash part-way leaves either all of `changes` or none of them visible.
        """

    def watch(self, prefix: str, after: int, timeout: float) -> Changes:
        """The changes under `prefix` since revision `after`, waiting up to `timeout` seconds for a first one
        (none: an empty `Changes` at `after`). With `after` 0, or one the backend no longer knows (etcd
        compacted it), or on a backend without a history: every entry, `complete`. What keeps a copy of a
        prefix current (the responders' challenges) without reading the whole prefix at every look-up."""

    def lock(self, key: str, *, ttl: float, wait: float, holder: str) -> AbstractContextManager[Lease]:
        """Take the lock on `key` for a lease of `ttl` seconds kept alive while held, waiting up
        to `wait` seconds for the current holder (Busy, naming it, if it does not let go).
        `holder` names this process in the fleet's state (node and pid)."""

    def locks(self, prefix: str) -> dict[str, Holder]:
        """Who holds each lock on a key starting with `prefix` now, read without taking or waiting for any
        (what `status` shows): a lock whose lease ended, or whose holder died, is not held."""

    def where(self, key: str) -> str:
        """Where an operator finds `key` (a path, a URL): for messages about what was set aside."""

    def close(self) -> None:
        """Let go of connections and threads; locks still held are released."""


def check_key(key: str) -> str:
    """`key` if every `/`-separated segment of it is safe as a file name, else ValueError."""
    if not KEY.fullmatch(key):
        raise ValueError(f"not a state key: {key!r}")
    return key
