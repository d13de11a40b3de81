"""A discrete-event model (simpy) of the etcd fleet of issues 22 and 23, driven by the real renewal policy.

Each certificate's renewal is decided by `certrenew.renewal.policy` on a real `CertificateRecord`: its
timer is `policy.next_wake` over that one certificate, the node holding the lock re-reads the record and
asks `policy.decide` and `policy.budget_ends`, and a failure backs off by `policy.backoff`. Around it, the
fleet: every node wakes for a due certificate (its clock skewed, plus a random renewal jitter), one takes
the certificate's lock on an etcd lease, orders from the CA in two steps (new order + validation, then
finalize + download), and writes the pending order and then the certificate, each a transaction fenced by
the lock's revision. A holder whose lease expired (a pause or a keepalive stall past the TTL, a crash)
keeps working unaware; fencing refuses its late writes, and a successor resumes a pending order instead of
placing a new one. `fencing=False` lets those late writes through, so the model can show what fencing
prevents. A committed certificate reaches each node by its watch, or at the node's restart, or, when its
watch died silently, at its next reconcile pass.

Duplicate orders are counted from the CA's side: certificates issued from the same version of a record.

Simplified: no ARI; the CA answers every order (or fails it) whole; a node's daemon timers are modelled
per certificate (one process per certificate drives the nodes' wakes) rather than one `next_wake` over all
records per node; nodes that wake after a commit do nothing (their watch-fed cache moved the timer); the
reconcile passes' range reads are counted as a steady rate, not as events; etcd is one endpoint that is up
or down.
"""

import bisect
import dataclasses
import datetime
import heapq
import math
import random
from dataclasses import dataclass, field

import simpy

from certrenew.renewal import policy
from certrenew.state.store import CertificateRecord

EPOCH = datetime.datetime(2027, 1, 1, tzinfo=datetime.timezone.utc)
DAY = 86400.0
WEEK = 7 * DAY
KEY_TYPE = "ec256"
SETTINGS = "sim"
"""The certificates' order settings (`CertificateSpec.order_settings`): the same for every issue."""
FAR = datetime.timedelta(days=3650)
"""The check interval given to `next_wake`: a certificate's own time, not the daemon's regular check."""
PAGE = 1000
"""Keys per request of a paged range read (reconcile, resync, catch-up)."""
CA_DUPLICATE_LIMIT = 5
"""Let's Encrypt: 5 certificates for the same names a week."""
LONGEST_FAULT = 2 * 3600.0
"""Longer than any node's crash (with its catch-up) or pause."""
RETRY_AFTER_ERROR = 60.0
"""A pass that found etcd unreachable tries again within this many seconds."""


@dataclass(frozen=True)
class Params:
    certificates: int = 100_000
    nodes: int = 50
    days: float = 365
    lifetime_days: float = 90
    lease_ttl: float = 60
    reconcile: float = 900
    """Seconds between a node's reconcile passes (one paged range read, compare generations)."""
    jitter: float = policy.RENEWAL_JITTER.total_seconds()
    """Seconds: each node wakes for a due certificate at a random time within this of its renewal time (the
    daemon's, `policy.renewal_jitter`, for certificates of a day or more)."""
    fencing: bool = True
    seed: int = 1
    skew: float = 30
    """Seconds: the standard deviation of the nodes' clock offsets."""
    crashes: float = 12
    """Per node per year; each down for 1 min to 1 h."""
    pauses: float = 52
    """Per node per year (SIGSTOP, a long GC); each from 1 s to 10 min."""
    stall: float = 0.001
    """Per lock held: the chance of a keepalive stall (etcd under load) of 1 s to 5 min."""
    etcd_outages: float = 12
    """Per year; each from 2 min to 4 h."""
    ca_outages: float = 12
    """Per year; each from 5 min to 12 h."""
    ca_errors: float = 0.01
    """The chance that an order fails for a reason of the CA's own (retried after `policy.backoff`)."""
    slow_orders: float = 0.01
    """The chance that an order's validation takes 1 to 10 min (the CA under load, retried validations)."""
    watch_deaths: float = 0.2
    """The chance that a node's watch dies silently when etcd comes back (besides 4 a year at random)."""
    watch_latency: float = 0.02
    """Seconds: the mean delay from a commit to a node's watch event."""


@dataclass
class Result:
    params: Params
    renewals: int = 0
    orders: int = 0
    """Certificates the CA issued."""
    orders_by_node: list[int] = field(default_factory=list)
    failed_orders: int = 0
    rate_limited: int = 0
    duplicates: int = 0
    takeovers: int = 0
    """Locks taken after the holder's lease expired while it was still at work."""
    refused_writes: int = 0
    lock_losses: int = 0
    """Lock attempts that found the lock held (each a transaction and a watch)."""
    orders_per_certificate_max: int = 0
    due_to_served: list[float] = field(default_factory=list)
    """Per renewal, seconds from due to served on every node."""
    commit_to_served: list[float] = field(default_factory=list)
    """Per renewal, seconds from the store's commit to served on every node."""
    running_lag: float = 0.0
    """The longest a running node (not crashed, not paused) served an older certificate than the store held."""
    near_expiry: int = 0
    """Certificates served everywhere less than a day before their predecessor expired."""
    expired: int = 0
    reads: list[int] = field(default_factory=list)
    writes: list[int] = field(default_factory=list)
    watch_events: list[int] = field(default_factory=list)
    """Per simulated minute; the reconcile passes' steady reads are in `steady_reads`."""
    steady_reads: float = 0.0
    """Requests per second of the reconcile passes (paged range reads)."""
    reconcile_keys: float = 0.0
    """Keys per second the reconcile passes read."""

    def rate(self, counts: list[int], steady: float = 0.0) -> tuple[float, float]:
        """Requests per second: the mean over the run and the peak of one minute."""
        minutes = max(len(counts), 1)
        return sum(counts) / (minutes * 60) + steady, max(counts, default=0) / 60 + steady


@dataclass
class Order:
    base: int
    """The version of the record the order was placed from."""
    issued: bool = False


@dataclass
class Cert:
    index: int
    record: CertificateRecord
    version: int = 0
    pending: Order | None = None
    holder: int | None = None
    revision: int = 0
    """The lock's fencing token."""
    lease_end: float = math.inf
    """When the holder's lease expires (inf while kept alive)."""
    freed: simpy.Event | None = None
    issues: list[float] = field(default_factory=list)
    """When the CA issued it a certificate (its duplicate-certificate limit)."""
    orders: int = 0
    issued_from: set[int] = field(default_factory=set)
    """The record versions the CA issued a certificate from: a second from one is a duplicate."""


def _intervals(rng: random.Random, per_year: float, days: float, low: float, high: float) -> list[tuple[float, float]]:
    """Poisson-timed faults over the run, each lasting log-uniformly between `low` and `high` seconds."""
    out, t, rate = [], 0.0, per_year / (365 * DAY)
    while rate > 0:
        t += rng.expovariate(rate)
        if t >= days * DAY:
            return out
        out.append((t, t + math.exp(rng.uniform(math.log(low), math.log(high)))))
    return out


def _within(intervals: list[tuple[float, float]], starts: list[float], t: float) -> tuple[float, float] | None:
    """The interval of `intervals` (sorted, with their `starts`) that holds `t`, if any."""
    i = bisect.bisect_right(starts, t) - 1
    return intervals[i] if i >= 0 and intervals[i][1] > t else None


class Fleet:
    """One run of the model; `run()` returns its Result."""

    def __init__(self, params: Params) -> None:
        self.p = params
        self.rng = random.Random(params.seed)
        self.env = simpy.Environment()
        self.result = Result(params)
        minutes = int(params.days * 1440) + 1
        self.result.orders_by_node = [0] * params.nodes
        self.result.reads, self.result.writes, self.result.watch_events = [0] * minutes, [0] * minutes, [0] * minutes
        rng, days = self.rng, params.days
        self.catch_up = 2.0 * params.certificates / 100_000  # measured: 100,000 records in 1.8 s as one paged range
        self.skew = [rng.gauss(0, params.skew) for _ in range(params.nodes)]
        self.phase = [rng.uniform(0, params.reconcile) for _ in range(params.nodes)]
        self.crashes = [_intervals(rng, params.crashes, days, 60, 3600) for _ in range(params.nodes)]
        self.pauses = [_intervals(rng, params.pauses, days, 1, 600) for _ in range(params.nodes)]
        self.crash_starts = [[start for start, _ in node] for node in self.crashes]
        self.pause_starts = [[start for start, _ in node] for node in self.pauses]
        self.faults = sorted([(start, end + self.catch_up) for node in self.crashes for start, end in node]
                             + [fault for node in self.pauses for fault in node])
        self.fault_starts = [start for start, _ in self.faults]
        self.etcd = _intervals(rng, params.etcd_outages, days, 120, 4 * 3600)
        self.etcd_starts = [start for start, _ in self.etcd]
        self.ca = _intervals(rng, params.ca_outages, days, 300, 12 * 3600)
        self.ca_starts = [start for start, _ in self.ca]
        self.watch_dead = [0.0] * params.nodes
        """Per node: until when its watch is dead (silently; the next reconcile pass finds out)."""
        for start, end in self.etcd:
            for node in range(params.nodes):
                if rng.random() < params.watch_deaths:
                    self.env.process(self._watch_dies(node, end))
        for node in range(params.nodes):
            for start, _ in _intervals(rng, 4, days, 1, 1):
                self.env.process(self._watch_dies(node, start))
        self.pages = math.ceil(params.certificates / PAGE)
        self.result.steady_reads = params.nodes * self.pages / params.reconcile
        self.result.reconcile_keys = params.nodes * params.certificates / params.reconcile
        self.lifetime = datetime.timedelta(days=params.lifetime_days)
        renew_age = (policy.renew_at(self._record(0, EPOCH)) - EPOCH).total_seconds()
        self.certs = [Cert(i, self._record(i, EPOCH - datetime.timedelta(seconds=rng.uniform(0, renew_age))))
                      for i in range(params.certificates)]

    def _record(self, index: int, issued: datetime.datetime) -> CertificateRecord:
        return CertificateRecord(f"c{index}", [f"c{index}.example"], KEY_TYPE, not_before=issued,
                                 not_after=issued + self.lifetime, issued_at=issued, issued_settings=SETTINGS)

    # -- time and counting

    def _seconds(self, when: datetime.datetime) -> float:
        return (when - EPOCH).total_seconds()

    def _when(self, seconds: float) -> datetime.datetime:
        return EPOCH + datetime.timedelta(seconds=seconds)

    def _count(self, counts: list[int], n: int = 1, at: float | None = None) -> None:
        minute = int((self.env.now if at is None else at) // 60)
        if minute < len(counts):
            counts[minute] += n

    def _etcd_down(self, t: float) -> tuple[float, float] | None:
        return _within(self.etcd, self.etcd_starts, t)

    def _node_down(self, node: int, t: float) -> float | None:
        """When `node`, crashed or paused at `t`, can act again; None if it can now."""
        crash = _within(self.crashes[node], self.crash_starts[node], t)
        if crash:
            return crash[1] + self.catch_up
        pause = _within(self.pauses[node], self.pause_starts[node], t)
        return pause[1] if pause else None

    def _stretch(self, node: int, start: float, seconds: float) -> float:
        """When work of `seconds` that `node` begins at `start` ends, its pauses in between added."""
        end, i = start + seconds, bisect.bisect_right(self.pause_starts[node], start)
        while i < len(self.pauses[node]) and self.pauses[node][i][0] < end:
            pause_start, pause_end = self.pauses[node][i]
            end += pause_end - pause_start
            i += 1
        return end

    def _watch_dies(self, node: int, at: float):
        yield self.env.timeout(at)
        r = self.p.reconcile
        self.watch_dead[node] = max(self.watch_dead[node], self.phase[node] + math.ceil((at - self.phase[node]) / r) * r)

    # -- the fleet

    def run(self) -> Result:
        for cert in self.certs:
            self.env.process(self._certificate(cert))
        for start, end in self.etcd:  # every node resyncs by one paged range read when etcd returns
            self._count(self.result.reads, self.p.nodes * self.pages, at=end)
        for node in range(self.p.nodes):
            for _, end in self.crashes[node]:
                self._count(self.result.reads, self.pages, at=end)
        self.env.run(until=self.p.days * DAY)
        res = self.result
        res.orders_per_certificate_max = max((cert.orders for cert in self.certs), default=0)
        return res

    def _certificate(self, cert: Cert):
        """The certificate's life: each turn, the nodes wake for it until one renews it (or fails and backs off)."""
        env, p, rng, random = self.env, self.p, self.rng, self.rng.random
        while True:
            now = self._when(env.now)
            wake = self._seconds(policy.next_wake([(cert.record, cert.record.domains, KEY_TYPE)], now, FAR))
            due = self._seconds(policy.renew_at(cert.record))
            wakes = [(wake - skew + p.jitter * random(), node) for node, skew in enumerate(self.skew)]
            heapq.heapify(wakes)
            version, record = cert.version, cert.record
            while wakes and cert.version == version and cert.record is record:
                at, node = heapq.heappop(wakes)
                if at > env.now:
                    yield env.timeout(at - env.now)
                if cert.version != version or cert.record is not record:
                    break
                back = self._node_down(node, env.now)
                if back is not None:
                    heapq.heappush(wakes, (back, node))
                    continue
                outage = self._etcd_down(env.now)
                if outage:
                    heapq.heappush(wakes, (outage[1] + rng.uniform(0, RETRY_AFTER_ERROR), node))
                    continue
                if cert.holder is not None and cert.lease_end > env.now:
                    self.result.lock_losses += 1
                    self._count(self.result.writes)
                    self._count(self.result.watch_events)
                    heapq.heappush(wakes, (env.now, node))
                    cert.freed = cert.freed or env.event()
                    yield cert.freed
                    continue
                if cert.holder is not None:
                    self.result.takeovers += 1
                attempt = env.process(self._attempt(cert, node))
                cert.freed = cert.freed or env.event()
                yield attempt | cert.freed
                waiting = []  # the nodes that woke meanwhile found the lock held, and watched it
                while wakes and wakes[0][0] <= env.now:
                    waiting.append((env.now, heapq.heappop(wakes)[1]))
                self.result.lock_losses += len(waiting)
                self._count(self.result.writes, len(waiting))
                self._count(self.result.watch_events, len(waiting))
                for wake in waiting:
                    heapq.heappush(wakes, wake)
            if cert.version != version:
                self._served(cert, record, due)

    def _free(self, cert: Cert) -> None:
        if cert.freed is not None:
            freed, cert.freed = cert.freed, None
            freed.succeed()

    def _attempt(self, cert: Cert, node: int):
        """`node` takes the lock, re-reads the record, orders (or resumes the pending order) and writes, fenced."""
        env, p, rng, res = self.env, self.p, self.rng, self.result
        cert.revision += 1
        revision, start = cert.revision, env.now
        cert.holder, cert.lease_end = node, math.inf
        self._count(res.writes, 2)  # lease grant, lock transaction
        self._count(res.reads)
        record, version = cert.record, cert.version
        now = self._when(env.now + self.skew[node])
        decision = policy.decide(record, record.domains, KEY_TYPE, now)
        budget = policy.budget_ends(record, SETTINGS, now)
        if not decision.due or budget is not None:
            if budget is not None and decision.due:  # wait out the budget: a failure's back-off to then
                cert.record = dataclasses.replace(record, next_attempt=budget, failures=max(record.failures, 1))
            return self._release(cert, revision)
        # The CA's two steps: new order + validation, finalize + download; a pending order needs the second only.
        first, second = rng.lognormvariate(math.log(3), 0.6), rng.lognormvariate(math.log(2), 0.6)
        if rng.random() < p.slow_orders:
            first += rng.uniform(60, 600)
        resume = cert.pending is not None and cert.pending.base == version
        end = self._stretch(node, start, second + (0 if resume else first))
        # Where this attempt's lease ends, if it does: a crash, a pause or a keepalive stall past the TTL.
        lost = math.inf
        crash_i = bisect.bisect_right(self.crash_starts[node], start)
        crash = self.crashes[node][crash_i][0] if crash_i < len(self.crashes[node]) else math.inf
        if crash < end:
            lost = crash + p.lease_ttl
        i = bisect.bisect_right(self.pause_starts[node], start)
        while i < len(self.pauses[node]) and self.pauses[node][i][0] < end:
            pause_start, pause_end = self.pauses[node][i]
            if pause_end - pause_start > p.lease_ttl:
                lost = min(lost, pause_start + p.lease_ttl)
            i += 1
        if rng.random() < p.stall:
            stall_at = rng.uniform(start, end)
            if math.exp(rng.uniform(0, math.log(300))) > p.lease_ttl:
                lost = min(lost, stall_at + p.lease_ttl)
        if lost < math.inf:
            env.process(self._lease_expires(cert, revision, lost))
        self._count(res.writes, int((min(end, lost) - start) / (p.lease_ttl / 3)))  # keepalives
        if resume:
            order = cert.pending
        else:
            ca_down = _within(self.ca, self.ca_starts, env.now)
            limited = sum(1 for t in cert.issues if t > env.now - WEEK) >= CA_DUPLICATE_LIMIT
            if ca_down or limited or rng.random() < p.ca_errors:
                res.failed_orders += 1
                res.rate_limited += limited
                yield env.timeout(1)
                if self._write(cert, revision):
                    failures = record.failures + 1
                    cert.record = dataclasses.replace(
                        record, failures=failures, last_error="CA", failed_settings=SETTINGS,
                        last_attempt=now, next_attempt=now + policy.backoff(failures, self.lifetime))
                return self._release(cert, revision)
            order = Order(version)
            step = self._stretch(node, start, first)
            if step >= crash:
                return
            yield env.timeout(step - env.now)
            yield from self._wait_for_etcd()
            if not self._write(cert, revision):
                return
            cert.pending = order
        step = self._stretch(node, env.now, second)
        if step >= crash:
            return
        yield env.timeout(step - env.now)
        if not order.issued:
            order.issued = True
            cert.orders += 1
            cert.issues.append(env.now)
            res.orders += 1
            res.orders_by_node[node] += 1
            if order.base in cert.issued_from:
                res.duplicates += 1
            cert.issued_from.add(order.base)
        yield from self._wait_for_etcd()
        if not self._write(cert, revision):
            return
        issued = self._when(env.now)
        recent = [when for when in cert.record.recent_issues if when > issued - policy.BUDGET_PERIOD]
        cert.record = dataclasses.replace(
            self._record(cert.index, issued), recent_issues=[*recent, issued][-policy.ORDER_BUDGET:])
        cert.version += 1
        cert.pending = None
        self._count(res.watch_events, p.nodes)
        self._release(cert, revision)

    def _wait_for_etcd(self):
        outage = self._etcd_down(self.env.now)
        if outage:  # the write waits; etcd resets leases to their full TTL when it returns
            yield self.env.timeout(outage[1] - self.env.now)

    def _lease_expires(self, cert: Cert, revision: int, at: float):
        yield self.env.timeout(max(at - self.env.now, 0))
        if cert.revision == revision and cert.holder is not None:
            cert.lease_end = at
            self._free(cert)

    def _write(self, cert: Cert, revision: int) -> bool:
        """A transaction that compares the lock's revision (with fencing) before it puts."""
        self._count(self.result.writes)
        if self.p.fencing and (cert.revision != revision or cert.lease_end <= self.env.now):
            self.result.refused_writes += 1
            return False
        return True

    def _release(self, cert: Cert, revision: int) -> None:
        if cert.revision == revision and cert.lease_end > self.env.now:
            self._count(self.result.writes)
            cert.holder, cert.lease_end = None, math.inf
            self._free(cert)

    def _served(self, cert: Cert, old: CertificateRecord, due: float) -> None:
        """Record when every node serves the certificate just committed, and how close to expiry that came."""
        res, p, now = self.result, self.p, self.env.now
        res.renewals += 1
        latency = -p.watch_latency * math.log(1 - self.rng.random() ** (1 / p.nodes))  # the slowest of the watches
        served = now + latency
        i = bisect.bisect_right(self.fault_starts, now)
        while i > 0 and self.faults[i - 1][0] > now - LONGEST_FAULT:
            i -= 1
            start, end = self.faults[i]
            if end > now:  # down or paused now: it catches up when it is back
                served = max(served, end + p.watch_latency)
        running = max(now + latency, max(self.watch_dead))  # a node up and running, its watch dead or alive
        served = max(served, running)
        res.due_to_served.append(served - due)
        res.commit_to_served.append(served - now)
        res.running_lag = max(res.running_lag, running - now)
        assert old.not_after is not None
        left = self._seconds(old.not_after) - served
        if left < DAY:
            res.near_expiry += 1
        if left < 0:
            res.expired += 1


def simulate(params: Params) -> Result:
    return Fleet(params).run()
