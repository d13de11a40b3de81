"""Health and Prometheus metrics: for node_exporter's textfile collector, and over HTTP for the daemon.

Every render builds a fresh registry from the status rows of that moment, so a series
lives exactly as long as what it describes: a removed certificate's series is gone at the
next render, and a renewed one keeps a single series (the serial is not a label).
`prometheus_client` is imported only inside the functions that render, so a run that
writes no metrics never loads it.
"""

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from pathlib import Path

from certrenew.cli.fleetview import Fleet
from certrenew.cli.outage import StoreHealth
from certrenew.cli.status import HEALTHY, CertificateStatus, State
from certrenew.errors import CertrenewError, UsageError
from certrenew.system import httpd
from certrenew.system.atomicfile import write_atomic
from certrenew.system.hostport import split_host_port
from certrenew.system.listen import Address

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text format `generate_latest` writes, which every scraper reads."""
MAX_FAILING_PASSES = 3
"""Daemon passes failed as a whole in a row (a minute apart) after which /healthz says unhealthy."""


@dataclass
class Telemetry:
    """What a process counts for its metrics: ACME requests and errors, and how its last run went.

    The caller creates one and hands it to the run, whose ACME transport counts every
    request from its worker threads (hence the lock). A one-shot command makes one per
    run; the daemon one for its life, so its counters only grow.
    """

    acme_requests: int = 0
    """HTTP requests sent to the CA, retries and nonce requests included."""
    acme_errors: int = 0
    """Of those, the ones that got no answer or an error status (a problem document)."""
    last_run: float | None = None
    """Unix time the last run ended; None before the first one has."""
    last_success: bool | None = None
    last_duration: float | None = None
    pass_errors: int | None = None
    """The daemon's passes that ended in an error rather than a report (None outside the daemon)."""
    failing_passes: int = 0
    """Of those, the ones in a row up to now: the daemon cannot do its work while this grows."""
    catching_up: bool = False
    """A daemon on a shared store that has yet to serve what the store holds (see `renewal.follow`)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count_acme_request(self, failed: bool) -> None:
        with self._lock:
            self.acme_requests += 1
            self.acme_errors += failed

    def record_pass(self, failed: bool) -> None:
        """A daemon's pass ended: in an error (`failed`: the lock held too long, the ssl dir gone) or a report."""
        with self._lock:
            if failed:
                self.pass_errors = (self.pass_errors or 0) + 1
            self.failing_passes = self.failing_passes + 1 if failed else 0

    def record_run(self, success: bool, duration: float) -> None:
        with self._lock:
            self.last_run, self.last_success, self.last_duration = time.time(), success, duration

    def snapshot(self) -> "Telemetry":
        """A consistent copy to render while worker threads go on counting."""
        with self._lock:
            return replace(self)


def _managed(rows: list[CertificateStatus]) -> list[CertificateStatus]:
    """The rows of certificates the config manages: the ones metrics and health speak for."""
    return [row for row in rows if row.state != State.UNMANAGED]


def health(rows: list[CertificateStatus], telemetry: Telemetry | None = None,
           fleet: Fleet | None = None, store: StoreHealth | None = None) -> tuple[bool, dict]:
    """Whether every managed certificate is healthy in the sense of `status`, and the /healthz document.

    Nothing managed is not healthy, as in `status`: a probe pointed at the wrong config fails loudly.
    A daemon (`telemetry`) whose last MAX_FAILING_PASSES passes failed as a whole is not healthy
    either, though its certificates still are: it cannot renew them; nor one still catching up with a shared
    store. Nor is a node of a `fleet` that lags the store by more than its reconcile interval (`Fleet.health`);
    the silent nodes are named, whichever. Nor is one whose `store` is unreachable (the document says since
    when, and what nears expiry meanwhile).
    """
    lag = fleet.health(rows) if fleet is not None and fleet.on else None  # every certificate: each node serves all
    rows = _managed(rows)
    unhealthy = [row.name for row in rows if row.state != HEALTHY]
    ok = bool(rows) and not unhealthy
    document: dict = {"healthy": ok, "certificates": len(rows), "unhealthy": unhealthy}
    if telemetry is not None and telemetry.pass_errors is not None:
        failing = telemetry.snapshot().failing_passes
        document["healthy"] = ok = ok and failing < MAX_FAILING_PASSES
        document["failing_passes"] = failing
    if fleet is not None and fleet.on:
        document["healthy"] = ok = ok and lag is None
        document.update(node=fleet.node, lag=lag,
                        silent_nodes=[report.node for report in fleet.reports if report.stale(fleet.now)])
    if telemetry is not None and telemetry.catching_up:  # it may not serve what its certificates' rows say
        document["healthy"] = ok = False
        document["catching_up"] = True
    if store is not None:
        document.update(store.to_json())
        if store.outage is not None:
            document.update(healthy=False, reason="; ".join(store.lines()))
            ok = False
    return ok, document


def render(rows: list[CertificateStatus], telemetry: Telemetry | None = None, fleet: Fleet | None = None,
           store: StoreHealth | None = None) -> bytes:
    """The Prometheus text format for `rows` (managed ones only), the run facts of `telemetry`, the nodes of
    `fleet`, and whether the `store` answers."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    families = _families(_managed(rows), telemetry.snapshot() if telemetry else None)
    if fleet is not None and fleet.on:
        families += _fleet_families(fleet, rows)
    if store is not None:
        families += _store_families(store)
    registry.register(_Families(families))
    return generate_latest(registry)


def check_textfile(path: Path) -> None:
    """UsageError unless `path` can be written: found before a run, not after it installed certificates."""
    if path.is_dir():
        raise UsageError(f"the metrics file {path} is a directory (--metrics-file)")
    if not path.parent.is_dir():
        raise UsageError(f"the metrics file's directory {path.parent} does not exist (--metrics-file)")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise UsageError(f"the metrics file's directory {path.parent} is not writable by this user (--metrics-file)")


def write_textfile(path: Path, rows: list[CertificateStatus], telemetry: Telemetry | None = None) -> None:
    """Replace `path` with the metrics, atomically, so node_exporter never reads half a file."""
    write_atomic(path, render(rows, telemetry), mode=0o644)  # no secret in it


class _Families:
    """A collector that yields metric families built beforehand."""

    def __init__(self, families: list) -> None:
        self._families = families

    def collect(self):
        return iter(self._families)


def _families(rows: list[CertificateStatus], telemetry: Telemetry | None) -> list:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    def per_certificate(name: str, documentation: str, value: Callable[[CertificateStatus], float | None]):
        family = GaugeMetricFamily(name, documentation, labels=["name"])
        for row in rows:
            number = value(row)
            if number is not None:  # e.g. no expiry yet for a certificate never issued
                family.add_metric([row.name], number)
        return family

    state = GaugeMetricFamily("certrenew_certificate_state",
                              "1 for the certificate's state as `certrenew status` shows it",
                              labels=["name", "state"])
    for row in rows:
        state.add_metric([row.name, row.state], 1)
    families = [
        per_certificate("certrenew_certificate_expiration_timestamp_seconds",
                        "when the current certificate expires (notAfter), as a Unix time",
                        lambda row: row.not_after.timestamp() if row.not_after else None),
        per_certificate("certrenew_certificate_renewal_timestamp_seconds",
                        "when certrenew next plans to renew (or, after a failure, retry), as a Unix time",
                        lambda row: row.next_renewal.timestamp() if row.next_renewal else None),
        per_certificate("certrenew_certificate_ready", "1 when the certificate is healthy, else 0",
                        lambda row: float(row.state == HEALTHY)),
        per_certificate("certrenew_certificate_failures", "consecutive failed attempts to renew",
                        lambda row: row.failures),
        state,
    ]
    if telemetry is None:
        return families
    requests = CounterMetricFamily("certrenew_acme_requests", "HTTP requests sent to the ACME server",
                                   value=telemetry.acme_requests)
    errors = CounterMetricFamily("certrenew_acme_errors",
                                 "ACME requests that got no answer or an error status",
                                 value=telemetry.acme_errors)
    families += [requests, errors]
    if telemetry.pass_errors is not None:
        families.append(CounterMetricFamily("certrenew_daemon_pass_errors",
                                            "daemon passes that failed as a whole (an error, not a certificate)",
                                            value=telemetry.pass_errors))
    if telemetry.last_run is not None:
        families += [
            GaugeMetricFamily("certrenew_last_run_timestamp_seconds", "when the last run ended, as a Unix time",
                              value=telemetry.last_run),
            GaugeMetricFamily("certrenew_last_run_success", "1 when every certificate of the last run succeeded",
                              value=float(bool(telemetry.last_success))),
            GaugeMetricFamily("certrenew_run_duration_seconds", "how long the last run took",
                              value=telemetry.last_duration),
        ]
    return families


def _store_families(store: StoreHealth) -> list:
    from prometheus_client.core import GaugeMetricFamily

    families = [GaugeMetricFamily("certrenew_store_up", "1 while the store (etcd) answers, 0 while it is unreachable",
                                  value=float(store.outage is None))]
    if store.outage is not None:
        families.append(GaugeMetricFamily("certrenew_store_unreachable_since_timestamp_seconds",
                                          "since when every request to the store has failed, as a Unix time",
                                          value=store.outage.since))
    return families


def _fleet_families(fleet: Fleet, rows: list[CertificateStatus]) -> list:
    """A few series per node and one per store, never one per certificate and node: 100,000 certificates
    on 50 nodes are 250 series here, not 5 million. Every node exports every node's, so a dead node's
    series still come from the others."""
    from prometheus_client.core import GaugeMetricFamily

    families = [GaugeMetricFamily("certrenew_store_revision", "the store's revision when the metrics were read",
                                  value=fleet.revision or 0),
                GaugeMetricFamily("certrenew_node_reports_unreadable", "node reports in the store that cannot be read",
                                  value=len(fleet.unreadable))]
    lagging = fleet.lagging(rows)
    per_node = [
        ("certrenew_node_applied_revision", "the store revision up to which the node has applied every change",
         lambda report: report.revision),
        ("certrenew_node_lagging_certificates",
         "certificates the node does not serve at the store's generation (behind, catching up; all when silent)",
         lambda report: lagging[report.node]),
        ("certrenew_node_behind_certificates", "certificates the node saw and could not serve (its report says why)",
         lambda report: len(report.behind)),
        ("certrenew_node_report_timestamp_seconds", "when the node last wrote its report, as a Unix time",
         lambda report: report.at.timestamp()),
        ("certrenew_node_reconcile_interval_seconds", "the node's reconcile interval: it reports at least this often",
         lambda report: report.reconcile_interval),
        ("certrenew_node_locks_held", "certificate locks the node's processes hold now",
         lambda report: fleet.locks_held(report.node)),
    ]
    for name, documentation, value in per_node:
        family = GaugeMetricFamily(name, documentation, labels=["node"])
        for report in fleet.reports:
            family.add_metric([report.node], value(report))
        families.append(family)
    return families


class MetricsServer:
    """`GET /metrics` and `GET /healthz` on a port of their own, for the daemon.

    Each request reads `source()` (the current status rows) afresh. Use it as a context
    manager: the port is bound on entry and free again on exit. The server is `httpd`'s,
    like the responder's: request heads of a few KiB, idle clients costing no thread, so
    a flood takes bounded memory and a health check is still answered during one.
    """

    def __init__(self, listen: str, source: Callable[[], list[CertificateStatus]],
                 telemetry: Telemetry | None = None, fleet: Callable[[], Fleet] | None = None,
                 store: Callable[[], StoreHealth] | None = None) -> None:
        self.listen = listen
        self.source = source
        self.telemetry = telemetry
        self.fleet = fleet
        """The fleet's side of the store, read afresh at each request too (see `fleetview`)."""
        self.store = store
        """Whether the store answers (the daemon's): read at each request, as `source` is."""
        self._server: httpd.Server | None = None
        self._serving = contextlib.ExitStack()

    @property
    def address(self) -> tuple[str, int]:
        """The host and port bound (the real port when `listen` asked for port 0)."""
        assert self._server is not None, "enter the server first"
        host, port = self._server.listener.getsockname()[:2]
        return str(host), port

    def __enter__(self) -> "MetricsServer":
        host, port = split_host_port(self.listen)
        try:
            listener = self._serving.enter_context(Address(host=host, port=port).listening())
        except OSError as error:
            raise CertrenewError(f"cannot listen on {self.listen} for metrics: {error.strerror}; "
                                 "set --metrics-listen") from error
        self._server = self._serving.enter_context(httpd.Server(listener, self.answer, "certrenew-metrics"))
        log.debug("metrics on http://%s:%d/metrics", *self.address)
        return self

    def __exit__(self, *exc_info) -> None:
        self._serving.close()

    def answer(self, request: httpd.Request) -> httpd.Response:
        """The answer to a GET of /metrics, /healthz, or anything else (404)."""
        try:
            store = self.store() if self.store else None
            if request.path == "/metrics":
                rows = self.source()
                return httpd.Response(HTTPStatus.OK, render(rows, self.telemetry, self.fleet() if self.fleet else None,
                                                            store), CONTENT_TYPE)
            if request.path == "/healthz":
                rows = self.source()
                ok, document = health(rows, self.telemetry, self.fleet() if self.fleet else None, store)
                status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
                return httpd.Response(status, json.dumps(document).encode() + b"\n", "application/json")
        except Exception as error:  # e.g. an unreadable state dir: say so, and keep serving
            log.warning("metrics: %s failed: %s", request.path, error, exc_info=log.isEnabledFor(logging.DEBUG))
            return httpd.Response(HTTPStatus.INTERNAL_SERVER_ERROR, f"{error}\n".encode())
        return httpd.Response(HTTPStatus.NOT_FOUND, b"not found\n")


def serve(listen: str, source: Callable[[], list[CertificateStatus]],
          telemetry: Telemetry | None = None, fleet: Callable[[], Fleet] | None = None,
          store: Callable[[], StoreHealth] | None = None) -> MetricsServer:
    """A `MetricsServer` on `listen` (HOST:PORT); enter it to start serving."""
    return MetricsServer(listen, source, telemetry, fleet, store)
