"""What each node of a fleet serves, as it tells the others through the store: `nodes/<node>`.

On a shared store every node installs what the store holds into its own HAProxy, and only that
node knows whether it did. It says so in one small document of its own, rewritten when what it
serves changes and at each reconcile pass, and any node's `status`, `/metrics` and `/healthz`
read them all in one range read. A certificate's *generation* is the store revision of the last
write of its record; a node serves it when the node's `revision` (every change of the store up
to it is applied) is at or past that generation and the name is not in its `behind`. So a
report stays small whatever the number of certificates: it lists only what the node could not
serve, not everything it serves.
"""

import base64
import datetime
import re
from dataclasses import dataclass, field

from certrenew.state.backend import Backend, Entry
from certrenew.state.store import decode, encode

NODES = "nodes"
_PLAIN = re.compile(r"[A-Za-z0-9_@=+,:-][A-Za-z0-9_.@=+,:-]*")
STALE_AFTER = 2
"""Reconcile intervals of its own after which a node that wrote no report is taken as gone (stopped,
cut off from the store): a live node rewrites it at least once an interval."""


@dataclass(frozen=True)
class Behind:
    """A certificate a node does not serve at the store's generation, and why."""

    serving: str | None
    """The serial the node serves instead (openssl's spelling), None if it serves none."""
    since: datetime.datetime
    error: str


@dataclass(frozen=True)
class NodeReport:
    """One node's account of what it serves (see the module's docstring)."""

    node: str
    at: datetime.datetime
    """When the node wrote it."""
    revision: int
    """Every change of the store up to this revision is served by the node, but those in `behind`."""
    reconcile_interval: float
    """The node's own, in seconds: how often it rewrites this report at least (see `stale`)."""
    behind: dict[str, Behind] = field(default_factory=dict)

    def serves(self, name: str, generation: int) -> bool:
        """Whether the node serves certificate `name` at store generation `generation` (or a later one)."""
        return self.revision >= generation and name not in self.behind

    def stale(self, now: datetime.datetime) -> bool:
        """Whether the node has not reported for longer than a live one would."""
        return (now - self.at).total_seconds() > STALE_AFTER * self.reconcile_interval

    def to_json(self) -> dict:
        return {"node": self.node, "at": self.at.isoformat(), "revision": self.revision,
                "reconcile_interval": self.reconcile_interval,
                "behind": {name: {"serving": lag.serving, "since": lag.since.isoformat(), "error": lag.error}
                           for name, lag in sorted(self.behind.items())}}

    @classmethod
    def from_json(cls, data: dict) -> "NodeReport":
        report = cls(str(data["node"]), _when(data["at"]), int(data["revision"]), float(data["reconcile_interval"]),
                     {str(name): Behind(None if lag["serving"] is None else str(lag["serving"]), _when(lag["since"]),
                                        str(lag["error"]))
                      for name, lag in dict(data["behind"]).items()})
        if report.revision < 0 or report.reconcile_interval <= 0:
            raise ValueError(f"revision {report.revision} and reconcile_interval {report.reconcile_interval} "
                             "must be positive")
        return report


def node_key(node: str) -> str:
    """The key of `node`'s report: its name where that is a safe key segment, else an unambiguous encoding of it."""
    if _PLAIN.fullmatch(node) and not node.startswith("b64-"):
        return f"{NODES}/{node}"
    return f"{NODES}/b64-{base64.urlsafe_b64encode(node.encode()).decode().rstrip('=')}"


def publish(backend: Backend, report: NodeReport) -> None:
    """Write `report` as its node's: no lock, each node writes only its own key."""
    backend.write({node_key(report.node): encode(report.to_json())})


def reports(backend: Backend) -> tuple[list[NodeReport], list[str]]:
    """Every node's report, in the order of their keys, in one range read; and, apart, one line for each report
    that cannot be read (a node's fault must not hide the others)."""
    return _parse(backend, backend.list(f"{NODES}/"))


def snapshot(backend: Backend) -> tuple[int, list[NodeReport], list[str]]:
    """`reports`, and the store's revision they were read at, in the same one read (a watch from
    revision 0 is a read of the prefix at the store's revision; see `Backend.watch`)."""
    changes = backend.watch(f"{NODES}/", 0, 0)
    return (changes.revision, *_parse(backend, {key: entry for key, entry in changes.entries.items()
                                                if entry is not None}))


def _parse(backend: Backend, entries: dict[str, Entry]) -> tuple[list[NodeReport], list[str]]:
    found, unreadable = [], []
    for key, entry in sorted(entries.items()):
        try:
            found.append(decode(entry.value, NodeReport.from_json, backend.where(key)))
        except Exception as error:  # CertrenewError from decode; anything else is a fault of that report alone
            unreadable.append(f"{backend.where(key)}: {error}")
    return found, unreadable


def _when(value: object) -> datetime.datetime:
    when = datetime.datetime.fromisoformat(str(value))
    if when.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    return when
