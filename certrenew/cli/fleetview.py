"""The fleet as `status`, `/metrics` and `/healthz` show it: per certificate, the generation the store
holds, each node's state for it and who holds its lock; per node, how far it has come.

It is read in a few range reads whatever the number of certificates: the generations come with the
status rows (`Store.records`, the records alone), the nodes' reports and the store's revision in one
read (`nodes.snapshot`), the locks in one (`Store.locks`). A node's state comes from its own report
(see `nodes`): it serves what it has applied, unless it lists the certificate as behind.
"""

import bisect
import datetime
from dataclasses import dataclass, field

from certrenew.cli.status import CertificateStatus
from certrenew.state.backend import Holder
from certrenew.state.nodes import NodeReport, snapshot
from certrenew.state.store import Store, holder_node
from certrenew.system.strenum import StrEnum


class NodeState(StrEnum):
    """What a node serves of one certificate."""

    CURRENT = "current"
    """The store's generation of it, or a later one."""
    BEHIND = "behind"
    """It saw that generation and could not serve it: its report says what it serves instead, since when, why."""
    CATCHING_UP = "catching-up"
    """It has not applied that generation yet."""
    SILENT = "silent"
    """No report for longer than a live node takes (`NodeReport.stale`): what it serves is unknown."""


@dataclass(frozen=True)
class Fleet:
    """One reading of the fleet's side of a store, at `now`; empty (`on` false) on a store no node reports to."""

    now: datetime.datetime
    on: bool
    """Whether this store is a fleet's: shared, or some node reports to it."""
    revision: int | None = None
    """The store's revision when the reports were read (None on a store without revisions)."""
    reports: list[NodeReport] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    locks: dict[str, Holder] = field(default_factory=dict)
    """Who holds each certificate's lock, by certificate name."""
    node: str | None = None
    """This node, whose health `/healthz` tells."""

    def state(self, report: NodeReport, name: str, generation: int) -> NodeState:
        if report.stale(self.now):
            return NodeState.SILENT
        if name in report.behind:
            return NodeState.BEHIND
        return NodeState.CURRENT if report.serves(name, generation) else NodeState.CATCHING_UP

    def certificate(self, row: CertificateStatus) -> dict:
        """The fleet's fields of `row` in `status --json` (see docs/commands.md)."""
        holder = self.locks.get(row.name)
        nodes = {}
        if self.on and row.generation is not None:
            for report in self.reports:
                state = self.state(report, row.name, row.generation)
                lag = report.behind.get(row.name) if state == NodeState.BEHIND else None
                nodes[report.node] = {"state": state, "serving": lag.serving if lag else None,
                                      "since": _when(lag.since) if lag else None, "error": lag.error if lag else None}
        return {"generation": row.generation if self.on else None,
                "lock": None if holder is None else {
                    "holder": holder.holder, "node": holder_node(holder.holder), "token": holder.token,
                    "since": _when(holder.since), "lease_left": None if holder.left is None else round(holder.left, 1)},
                "nodes": nodes,
                "lagging": [node for node, view in nodes.items() if view["state"] != NodeState.CURRENT]}

    def lagging(self, rows: list[CertificateStatus]) -> dict[str, int]:
        """How many certificates of `rows` each node does not serve at the store's generation (all of them,
        for a silent node): the generations sorted once, then a bisection per node, not a look at each."""
        generations = sorted(row.generation for row in rows if row.generation is not None)
        by_name = {row.name: row.generation for row in rows}
        counts = {}
        for report in self.reports:
            ahead = len(generations) - bisect.bisect_right(generations, report.revision)
            counts[report.node] = len(generations) if report.stale(self.now) else ahead + sum(
                1 for name in report.behind
                if (generation := by_name.get(name)) is not None and generation <= report.revision)
        return counts

    def locks_held(self, node: str) -> int:
        return sum(1 for holder in self.locks.values() if holder_node(holder.holder) == node)

    def nodes(self, rows: list[CertificateStatus]) -> list[dict]:
        """Each node's line of `status --json`'s `nodes`."""
        lagging = self.lagging(rows)
        return [{"node": report.node, "reported_at": _when(report.at), "revision": report.revision,
                 "reconcile_interval": report.reconcile_interval, "silent": report.stale(self.now),
                 "lagging": lagging[report.node], "locks": self.locks_held(report.node)}
                for report in self.reports]

    def to_json(self, rows: list[CertificateStatus]) -> dict:
        """The fleet's fields at the top of `status --json` (see docs/commands.md)."""
        return {"store_revision": self.revision, "nodes": self.nodes(rows), "unreadable_reports": self.unreadable}

    def health(self, rows: list[CertificateStatus]) -> str | None:
        """Why this node lags the store by more than one of its reconcile intervals, or None.

        Its report must be there (on a shared store), not stale; no certificate it is behind on for
        longer than the interval; and none it has not applied yet while its report, which it rewrites at
        each reconcile pass, is older than the interval (it has not reconciled since).
        """
        if not self.on or self.node is None:
            return None
        report = next((report for report in self.reports if report.node == self.node), None)
        if report is None:
            return f"node {self.node} has not reported what it serves to the store"
        interval = datetime.timedelta(seconds=report.reconcile_interval)
        age = self.now - report.at
        if report.stale(self.now):
            return f"node {self.node} has not reported what it serves for {age.total_seconds():.0f} s"
        late = sorted(name for name, lag in report.behind.items() if self.now - lag.since > interval)
        if late:
            return f"node {self.node} has not served {_names(late)} for longer than its reconcile interval " \
                   f"({report.reconcile_interval:g} s): {report.behind[late[0]].error}"
        if age > interval:
            missed = sorted(row.name for row in rows
                            if row.generation is not None and not report.serves(row.name, row.generation))
            if missed:
                return f"node {self.node} has not applied {_names(missed)} and has not reconciled for " \
                       f"{age.total_seconds():.0f} s, longer than its reconcile interval " \
                       f"({report.reconcile_interval:g} s)"
        return None


def read(store: Store, node: str | None = None, locks: bool = True,
         now: datetime.datetime | None = None) -> Fleet:
    """The fleet's side of `store` now, `node` being this one; `locks`: also who holds which (a state dir's
    locks are a file per certificate, so the daemon's metrics read them only on a fleet)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    revision, reports, unreadable = snapshot(store.backend)
    on = store.shared or bool(reports or unreadable)
    return Fleet(now, on, revision if on else None, reports, unreadable,
                 store.locks() if locks or on else {}, node)


def format_fleet(fleet: Fleet, rows: list[CertificateStatus]) -> str:
    """What `certrenew status` prints after its table: on a fleet the nodes' table and a line per certificate
    some node lags on; anywhere a line per certificate whose lock is held."""
    text = []
    if fleet.on and fleet.reports:
        lines = [("NODE", "REVISION", "REPORTED", "LAGGING", "LOCKS")]
        for node in fleet.nodes(rows):
            lines.append((node["node"], str(node["revision"]),
                          f"{node['reported_at']}{' (silent)' if node['silent'] else ''}", str(node["lagging"]),
                          str(node["locks"])))
        widths = [max(map(len, column)) for column in list(zip(*lines))[:-1]]
        template = "  ".join(f"{{:<{width}}}" for width in widths) + "  {}"
        text += [template.format(*line).rstrip() for line in lines]
    for row in rows:
        view = fleet.certificate(row)
        lags = [_lag(node, state) for node, state in view["nodes"].items() if state["state"] != NodeState.CURRENT]
        if lags:
            text.append(f"{row.name} (generation {row.generation}): {'; '.join(lags)}")
        if view["lock"] is not None:
            lock = view["lock"]
            left = f", {lock['lease_left']:.0f} s of its lease left" if lock["lease_left"] is not None else ""
            text.append(f"{row.name}: locked by {lock['holder']} since {lock['since'] or 'unknown'}{left}")
    text += [f"unreadable node report: {line}" for line in fleet.unreadable]
    return "\n".join(text)


def _lag(node: str, view: dict) -> str:
    if view["state"] == NodeState.BEHIND:
        serving = f"serving {view['serving']}" if view["serving"] else "serving none"
        return f"{node} behind, {serving} since {view['since']} because {view['error']}"
    return f"{node} {view['state']}"


def _names(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _when(value: datetime.datetime | None) -> str | None:
    return value.astimezone(datetime.timezone.utc).replace(microsecond=0).isoformat() if value else None
