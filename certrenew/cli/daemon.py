"""`certrenew daemon`: keep the certificates valid from a long-running process.

A pass is one `renew.run` over the config's certificates, under the store's lock, so a
`certrenew run` or `status` by hand works beside the daemon (a run waits for a pass, a
pass for a run). Between passes the daemon sleeps until there is work
(`policy.next_wake`), not on a fixed poll. The HTTP-01 responder stays bound for the
daemon's whole life, so HAProxy's `check` keeps the backend up; it still answers only
the tokens of orders in flight: its own, and those a run by hand beside it published in
the store because it found the port taken (see `responder`). On a shared store (a fleet) a
follower makes this node's HAProxy serve what the other nodes issued, and the daemon catches up
with the store before it says it is ready (see `renewal.follow`).
"""

import datetime
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from certrenew.challenge.responder import PortBusy, Responder
from certrenew.cli import fleetview, metrics, outage, status
from certrenew.config import STORE_OPTIONS, CertificateSpec, Settings
from certrenew.errors import CertrenewError, StoreUnreachable
from certrenew.haproxy.install import Serving
from certrenew.renewal import deploy, follow, policy, renew
from certrenew.renewal.policy import Action
from certrenew.state.board import Board
from certrenew.state.store import Store, this_node
from certrenew.system import signals
from certrenew.system.runcontext import RunContext

log = logging.getLogger(__name__)

JITTER = 0.05
"""The regular check comes up to this fraction of --check-interval early, at random, so
daemons started together do not ask the CA together. Renewal times, ARI checks and the
ends of back-offs are kept to the second: they are spread already (ARI picks a random time
in the CA's window; certificates issued at different moments fall due at different ones)."""
MAX_JITTER = datetime.timedelta(minutes=5)
RETRY_AFTER_ERROR = datetime.timedelta(minutes=1)
"""After a pass that failed as a whole (the lock held past --lock-timeout, the ssl dir gone)."""
STUCK_PAUSE = 5.0
"""Seconds to wait when a certificate is still due right after a pass, so nothing ever spins."""
BIND_RETRY = 0.5
"""Seconds between tries to open the responder's port while another process holds it."""
STORE_RETRY = datetime.timedelta(seconds=2)
"""After a pass the store's absence ended: the next one tries again this soon (a pass itself asks the store
for etcd_client.PATIENCE, every 0.2 s), so renewals resume within seconds of its return, not a pass later."""
EXPIRING_REPORT = 600.0
"""Seconds between the ERROR lines naming what nears expiry while the store stays unreachable."""
START_EXTENSION = 10.0
"""While a fleet's node catches up before READY=1, it asks systemd every this many seconds for three times as
long again (EXTEND_TIMEOUT_USEC): a catch-up over very many certificates can outlast TimeoutStartSec (90 s by
default), and a unit killed there restarts into the same catch-up, again and again."""
FIXED_AT_START = ("listen", "metrics_listen", *STORE_OPTIONS)
"""Settings bound to what the daemon opened at start (ports, the store): a SIGHUP keeps them."""

Config = tuple[Settings, list[CertificateSpec]]


class Daemon:
    """Passes over one store's certificates until SIGTERM or SIGINT (`Interrupted`).

    The store is passed in, and the config re-read through `load` on SIGHUP, so one
    process could later hold several daemons; nothing lives at module level.
    """

    def __init__(self, settings: Settings, specs: list[CertificateSpec], store: Store,
                 load: Callable[[], Config], hangups: signals.Hangups, rng: random.Random | None = None,
                 context: RunContext | None = None) -> None:
        self.settings, self.specs = settings, specs
        self.context = context or RunContext()
        """The daemon's: every pass is cancelled with it."""
        self.store = store
        self.load = load
        self.hangups = hangups
        self.rng = rng or random.Random()
        self.telemetry = metrics.Telemetry(pass_errors=0)
        """One for the daemon's life: its counters only grow."""
        self.held_elsewhere: set[str] = set()
        """The certificates whose lock another process (another node) held at the last pass."""
        self.follower = follow.Follower(
            settings.haproxy, store, this_node(settings.fleet),
            settings.daemon.reconcile_interval.total_seconds(), self.serving, self.context,
            self.caught_up) if store.shared else None
        """On a shared store: what makes this node serve what the other nodes issued (see `follow`)."""
        self.telemetry.catching_up = self.follower is not None
        self.rows: outage.LastRead[list[status.CertificateStatus]] = outage.LastRead(
            lambda: status.collect(self.settings, self.specs, self.store), [])
        """The status rows last read from the store: what /healthz and /metrics show while it is unreachable."""
        self.fleet_view: outage.LastRead[fleetview.Fleet] = outage.LastRead(
            lambda: fleetview.read(self.store, this_node(self.settings.fleet), locks=False),
            fleetview.Fleet(_now(), on=False))
        """The fleet's side of the store last read, likewise."""
        self.reported: float | None = None
        """When (monotonic) the last pass the store's absence ended named what nears expiry; None: it answers."""

    def run(self) -> None:
        """Bind the responder (and the metrics server), then pass and sleep, pass and sleep."""
        with ExitStack() as stack:
            board = stack.enter_context(Board(self.store))  # every node's answers, from memory
            responder = stack.enter_context(Responder(self.settings.responder.listen, board))
            self.bind(responder)
            if self.settings.daemon.metrics_listen:
                stack.enter_context(metrics.serve(self.settings.daemon.metrics_listen, self.status, self.telemetry,
                                                  self.fleet, self.store_health))
            if self.follower is not None:  # /healthz says "catching up" until it has (see `caught_up`)
                with extending_start(START_EXTENSION):
                    self.follower.catch_up()
                stack.enter_context(self.follower)
            log.info("daemon started: %d certificate(s), responder on %s%s", len(self.specs), self.settings.responder.listen,
                     f", metrics on {self.settings.daemon.metrics_listen}" if self.settings.daemon.metrics_listen else "")
            notify("READY=1")
            try:
                while True:
                    wake = self.run_pass(responder)
                    if self.sleep_until(wake):
                        self.reload()
            finally:
                notify("STOPPING=1")

    def bind(self, responder: Responder) -> None:
        """Open the responder's port, waiting up to --lock-timeout for a `run` by hand that holds
        it to finish, as a pass waits for the lock: a restart in the middle of one is not a failure."""
        deadline = time.monotonic() + self.settings.lock_timeout
        waiting = False
        while True:
            try:
                return responder.start()
            except PortBusy as busy:
                if time.monotonic() >= deadline:
                    raise
                if not waiting:
                    log.warning("%s; waiting up to %g s for it to be free", busy, self.settings.lock_timeout)
                    waiting = True
            self.context.sleep(BIND_RETRY)

    def caught_up(self) -> None:
        """The follower serves what the store held when this node started (or when the store came back)."""
        self.telemetry.catching_up = False

    def serving(self, name: str) -> Serving:
        """How HAProxy serves certificate `name` besides from its file, as the config says (the follower's)."""
        return next((deploy.serving(spec) for spec in self.specs if spec.name == name), Serving())

    def status(self) -> list[status.CertificateStatus]:
        """The status rows /metrics and /healthz report, read afresh from the store; while it is unreachable,
        the last ones read (`store_health` says why), not a wait on it at every request."""
        return self.rows(away=self.store.outage is not None)

    def store_health(self) -> outage.StoreHealth:
        """Whether the store answers; while it does not, since when and what this node serves that nears expiry."""
        return outage.store_health(self.store.outage, self.settings.haproxy.ssl_dir, self.specs,
                                   self.settings.renew_before)

    def store_away(self, error: StoreUnreachable) -> datetime.datetime:
        """A pass the store's absence ended: one condition of the store, said once, not a failure of each
        certificate or of the daemon (nothing recorded, no back-off, no pass error); what nears expiry is
        named every EXPIRING_REPORT seconds. The next pass is tried in STORE_RETRY."""
        health = self.store_health()
        if self.reported is None:
            log.warning("%s; nothing is counted against any certificate, and the next pass runs once it answers",
                        health.reason() or error)
        if self.reported is None or time.monotonic() - self.reported >= EXPIRING_REPORT:
            self.reported = time.monotonic()
            for item in health.expiring:
                log.error("%s", item.line(), extra={"certificate": item.name})
        return _now() + STORE_RETRY

    def fleet(self) -> fleetview.Fleet:
        """The fleet's side of the store /metrics and /healthz report, with this node's health."""
        return self.fleet_view(away=self.store.outage is not None)

    def run_pass(self, responder: Responder) -> datetime.datetime:
        """One `renew.run`, logged and counted; never raises but `Interrupted`. Returns when to run the next."""
        started = time.monotonic()
        try:
            # On a fleet a pass takes only the certificates no other node works on: one that waited for a lock
            # while holding those it issued (until their install, at the pass's end) could wait on a node
            # waiting on it, until --lock-timeout; the other node's work is looked at once its lease could end.
            report = renew.run(self.settings, self.specs, self.store, self.telemetry, responder=responder,
                               context=self.context, certificate_wait=0 if self.store.shared else None,
                               installing=self.follower.installing if self.follower else None)
        except StoreUnreachable as error:
            return self.store_away(error)
        except Exception as error:  # never the daemon's end: say it, count it, try again soon
            expected = isinstance(error, CertrenewError)
            log.error("pass failed: %s", error if expected else repr(error),
                      exc_info=not expected and log.isEnabledFor(logging.DEBUG))
            self.telemetry.record_pass(failed=True)
            self.telemetry.record_run(False, time.monotonic() - started)
            return _now() + min(RETRY_AFTER_ERROR, self.settings.daemon.check_interval)
        for outcome in report:
            level = (logging.ERROR if outcome.action == Action.FAILED else logging.WARNING if outcome.failed
                     else logging.DEBUG if outcome.action == Action.UNCHANGED else logging.INFO)
            log.log(level, "%s: %s: %s", outcome.name, outcome.action, outcome.detail,
                    extra={"certificate": outcome.name})
        if self.reported is not None:
            log.info("the store answers again: renewals resume")
            self.reported = None
        log.info("pass done: %s", report.summary())
        self.held_elsewhere = {outcome.name for outcome in report if outcome.held_elsewhere}
        self.telemetry.record_pass(failed=False)
        self.telemetry.record_run(not report.failed, time.monotonic() - started)
        return self.next_wake(_now())

    def next_wake(self, now: datetime.datetime) -> datetime.datetime:
        """`policy.next_wake` over the stored records, with the regular check jittered early; on a fleet, a
        wake for a certificate falling due later is jittered late (`policy.RENEWAL_JITTER`): a certificate due
        now (new, failing, revoked) is not held back, nor is any wake past the interval's end (the regular
        check, or the look at a certificate locked elsewhere).

        A certificate whose lock another process held is looked at again once that holder's lease could
        have ended (--lock-ttl): by then it has recorded its work, or died and let go; its record may still
        say due, and waking for it at once would only queue on the lock again, pass after pass."""
        interval = self.settings.daemon.check_interval
        interval -= min(interval * JITTER, MAX_JITTER) * self.rng.random()
        interval = min(interval, datetime.timedelta(seconds=self.store.ttl)) if self.held_elsewhere else interval
        certificates = []
        for spec in self.specs:
            if spec.name in self.held_elsewhere:
                continue
            try:
                certificates.append((self.store.load_record(spec.name), spec.domains, spec.key_type))
            except CertrenewError:  # unreadable: every pass reports it, the regular one is soon enough
                continue
        latest = now + interval
        wake = policy.next_wake(certificates, now, interval, self.settings.renew_before,
                                self.settings.acme.directory_urls)
        if self.store.shared and now < wake < latest:  # a fleet's: share the orders out (see policy.RENEWAL_JITTER)
            wake = min(wake + policy.renewal_jitter(record for record, _, _ in certificates) * self.rng.random(),
                       latest)
        return wake

    def sleep_until(self, wake: datetime.datetime) -> bool:
        """Sleep until `wake`; True if a SIGHUP ended the sleep first."""
        seconds = (wake - _now()).total_seconds()
        if seconds <= 0:
            seconds = STUCK_PAUSE
        at = _now() + datetime.timedelta(seconds=seconds)
        log.info("next pass at %s UTC (in %.0f s)", at.isoformat(" ", "seconds")[:19], seconds)
        return self.hangups.sleep(seconds)

    def reload(self) -> None:
        """Re-read the config (SIGHUP); keep the old one, with one log line, if the new one is refused,
        whatever the reason: a daemon that a bad edit could kill would take renewals down with it."""
        try:
            settings, specs = self.load()
        except Exception as error:
            expected = isinstance(error, CertrenewError)
            log.error("SIGHUP: config refused, carrying on with the previous one: %s", error if expected else repr(error),
                      exc_info=not expected and log.isEnabledFor(logging.DEBUG))
            return
        for name in FIXED_AT_START:
            if settings.option(name) != self.settings.option(name):
                log.warning("SIGHUP: %s changed; restart the daemon to apply it", name)
        self.settings = settings.with_options(**{name: self.settings.option(name) for name in FIXED_AT_START})
        self.specs = specs
        if self.follower is not None:
            self.follower.configure(self.settings.haproxy, self.settings.daemon.reconcile_interval.total_seconds())
        log.info("SIGHUP: config re-read, %d certificate(s)", len(specs))


def notify(state: str) -> None:
    """Tell systemd (Type=notify) how the daemon is doing; nothing without $NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as error:
        log.warning("cannot tell systemd %s at %s: %s", state, address, error)


@contextmanager
def extending_start(every: float) -> Iterator[None]:
    """While the body runs, tell systemd (Type=notify) at once and then every `every` seconds to wait
    3 × `every` more for READY=1; nothing without $NOTIFY_SOCKET."""
    if not os.environ.get("NOTIFY_SOCKET"):
        yield
        return
    done = threading.Event()

    def extend() -> None:
        while True:
            notify(f"EXTEND_TIMEOUT_USEC={round(every * 3 * 1_000_000)}")
            if done.wait(every):
                return

    extender = threading.Thread(target=extend, name="certrenew-start-extender", daemon=True)
    extender.start()
    try:
        yield
    finally:
        done.set()
        extender.join()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
