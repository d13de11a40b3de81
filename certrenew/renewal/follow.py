"""Following the fleet: this node's HAProxy serves what the shared store holds as current.

On a shared store (etcd) the node that issues a certificate installs it and promotes it in the
store (`deploy`); every other node learns of it here. One thread watches `certificates/` from the
revision it last applied (`Backend.watch`) and compares each current bundle that changed with what
this node's ssl dir holds; those that differ are installed in one batch through the `Installer` the
deploying uses (hot update, verify, roll back), and not recorded again: the record is the fleet's. A
certificate whose current bundle left the store because `revoke --delete` archived it is removed
from this node as revoke removes it. Every `reconcile_interval` (and when etcd compacted past the
revision, which makes the watch answer with everything) the whole prefix is compared: the backstop
for a missed event (reading only the current bundles, and on etcd only those written since the last
pass). A daemon catches up (`catch_up`) before it says it is ready. After each batch
the node tells the fleet what it serves (`state.nodes`).
"""

import logging
import threading
import time
from collections.abc import Callable

from certrenew.config import HaproxySettings
from certrenew.errors import CertrenewError, Interrupted, Refused
from certrenew.haproxy.install import Serving, read_bundle_file
from certrenew.pki.bundle import CertificateInfo, leaf_info
from certrenew.renewal.deploy import installer
from certrenew.renewal.policy import utc_now
from certrenew.state.backend import Changes
from certrenew.state.nodes import Behind, NodeReport, publish
from certrenew.state.store import CERTIFICATES, REMOVED, Store
from certrenew.system.runcontext import RunContext

log = logging.getLogger(__name__)

WATCH = 5.0
"""Seconds one watch request waits for a change before it is made again (and sees whether to stop)."""
RETRY_PAUSE = 1.0
"""Seconds between reads of the store that fail (etcd away): HAProxy keeps serving what it has meanwhile."""
CURRENT = "current.pem"


class Follower:
    """Makes this node's HAProxy serve the store's current bundles; a context manager for its watching thread.

    `node`: this node's name in its report; `serving`: how HAProxy serves a certificate besides from its
    file (the config's, by name); `caught_up`: see `catch_up`. `installing` is held around every install: pass it to the renewal runs of
    the same process, whose deploying installs into the same HAProxy.
    """

    def __init__(self, haproxy: HaproxySettings, store: Store, node: str, reconcile_interval: float,
                 serving: Callable[[str], Serving] = lambda name: Serving(),
                 context: RunContext | None = None, caught_up: Callable[[], None] = lambda: None) -> None:
        self.store, self.node, self.reconcile_interval, self.serving = store, node, reconcile_interval, serving
        self.caught_up = caught_up
        """Called once this node serves what the store held at its first complete read (see `catch_up`)."""
        self._caught_up = False
        self.context = context or RunContext()
        self.installer = installer(haproxy, (), context)
        self.installing = threading.Lock()
        self.revision = 0
        """Every change of the store's certificates up to this revision is applied."""
        self.behind: dict[str, Behind] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="certrenew-follow", daemon=True)

    def configure(self, haproxy: HaproxySettings, reconcile_interval: float) -> None:
        """Install with `haproxy` from the next batch on, and reconcile every `reconcile_interval` (a SIGHUP)."""
        with self.installing:
            self.installer = installer(haproxy, (), self.context)
            self.reconcile_interval = reconcile_interval

    def __enter__(self) -> "Follower":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Not waiting for the thread: it ends when its watch returns, and an install it is in is cut by the context."""
        self._stop.set()

    def catch_up(self) -> None:
        """Serve every certificate the store holds that the ssl dir lacks or holds an older one of, from one
        complete read. If the store cannot be read (etcd away), the thread catches up once it can: its first
        watch, from revision 0, is that complete read. `caught_up` is called once either has."""
        try:
            changes = self.store.backend.watch(f"{CERTIFICATES}/", 0, 0)
        except CertrenewError as error:
            log.warning("cannot read the store to catch up (%s); catching up once it answers, HAProxy keeps "
                        "what it serves meanwhile", error)
            return
        self.apply(changes)

    def _follow(self) -> None:
        reconcile, failing = time.monotonic() + self.reconcile_interval, False
        while not self._stop.is_set():
            due = time.monotonic() >= reconcile
            try:
                changes = self._current() if due else self.store.backend.watch(f"{CERTIFICATES}/", self.revision,
                                                                               WATCH)
                if self._stop.is_set():
                    return
                if changes.complete and not due:
                    log.info("following the store afresh: a complete read at revision %d", changes.revision)
                self.apply(changes)
            except Interrupted:  # the daemon is stopping
                return
            except Exception as error:  # the thread must outlive any failure: say it once, go on
                if not failing:
                    log.warning("cannot follow the store (%s); trying again, HAProxy keeps what it serves", error,
                                exc_info=not isinstance(error, CertrenewError) and log.isEnabledFor(logging.DEBUG))
                failing = True
                self._stop.wait(RETRY_PAUSE)
                continue
            if failing:
                log.info("following the store again")
                failing = False
            if changes.complete:
                reconcile = time.monotonic() + self.reconcile_interval

    def _current(self) -> Changes:
        """Every current bundle of the store, as a complete `Changes` at the revision the watch applied: the
        reconcile's read, the bundles alone (not the records, orders, previous bundles beside them), and on etcd
        only those written since the last one (see `Backend.list`). The watch alone moves the revision on."""
        return Changes(self.revision, dict(self.store.backend.list(f"{CERTIFICATES}/", f"/{CURRENT}")), complete=True)

    def apply(self, changes: Changes) -> None:
        """Serve the current bundles `changes` hold, remove those the fleet removed, and report; a complete
        `changes` is compared as a whole, with every bundle of the ssl dir."""
        current, gone = {}, set()
        for key, entry in changes.entries.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == CURRENT:
                if entry is None:
                    gone.add(parts[1])
                else:
                    current[parts[1]] = entry.value
        if changes.complete:
            gone |= self._bundles() - current.keys()
            self.behind = {name: lag for name, lag in self.behind.items() if name in current}
        with self.installing:
            self._install({name: bundle for name, bundle in sorted(current.items()) if self._differs(name, bundle)})
            for name in sorted(gone):
                self._remove(name)
        self.revision = changes.revision
        if changes.entries or changes.complete:
            self.report()
        if changes.complete and not self._caught_up:
            self._caught_up = True
            log.info("caught up with the store at revision %d: %s", self.revision,
                     f"{len(self.behind)} certificate(s) not served" if self.behind else "every certificate served")
            self.caught_up()

    def report(self) -> None:
        """Tell the fleet what this node serves (`state.nodes`); a store that cannot be written is told next time."""
        try:
            publish(self.store.backend, NodeReport(self.node, utc_now(), self.revision, self.reconcile_interval,
                                                   dict(self.behind)))
        except CertrenewError as error:
            log.warning("cannot tell the fleet what this node serves: %s", error)

    def _bundles(self) -> set[str]:
        """The names of the bundles in the ssl dir."""
        try:
            return {path.stem for path in self.installer.ssl_dir.glob("*.pem") if not path.name.startswith(".")}
        except OSError:
            return set()

    def _served(self, name: str) -> tuple[bytes | None, CertificateInfo | None]:
        """The bundle the ssl dir holds for `name` and its leaf; (None, None) for none, a None leaf if unreadable."""
        try:
            served = read_bundle_file(self.installer.path_of(name))
            return served, None if served is None else leaf_info(served)
        except (CertrenewError, ValueError):
            return b"", None

    def _differs(self, name: str, bundle: bytes) -> bool:
        """Whether the ssl dir lacks `bundle`'s certificate or holds an older one; a newer one is left (the
        Deployer of this node installed it and is yet to record it) and said to be behind."""
        served, info = self._served(name)
        if served == bundle:
            self.behind.pop(name, None)
            return False
        if info is None:
            return True
        try:
            new = leaf_info(bundle)
        except (CertrenewError, ValueError):
            return True  # the install refuses it, in its own words
        if info.not_before > new.not_before:
            self._lag(name, f"serves serial {info.serial}, issued after the store's current {new.serial} "
                            "(installed here but not recorded yet?); left as it is")
            return False
        if info.serial == new.serial:
            self.behind.pop(name, None)
            return False
        return True

    def _install(self, bundles: dict[str, bytes]) -> None:
        """Install `bundles` in one batch; those HAProxy refuses are left out and the rest installed again.
        What cannot be served is said to be behind, and tried again at the next change or reconcile."""
        while bundles:
            try:
                results = self.installer.install(bundles, {name: self.serving(name) for name in bundles})
            except Refused as refused:
                bad = [name for name in bundles if name in refused.which] or list(bundles)
                for name in bad:
                    self._lag(name, refused.reason(name))
                bundles = {name: bundle for name, bundle in bundles.items() if name not in bad}
                continue
            except CertrenewError as error:
                for name in bundles:
                    self._lag(name, str(error))
                return
            for result in results:
                self.behind.pop(result.name, None)
                log.info("%s: serial %s served as the store holds it, by %s", result.name, result.info.serial,
                         result.method, extra={"certificate": result.name})
            return

    def _remove(self, name: str) -> None:
        """Remove `name` from HAProxy and the ssl dir if the bundle there is one the fleet archived (`revoke
        --delete`); any other bundle of the ssl dir is not the fleet's, and is left alone."""
        served, info = self._served(name)
        if info is None:
            return
        archived = self.store.backend.list(f"{REMOVED}/{name}-")
        if not any(key.endswith(f"/{CURRENT}") and _serial(entry.value) == info.serial
                   for key, entry in archived.items()):
            return
        try:
            how, placeholder = self.installer.remove(name)
        except CertrenewError as error:
            self._lag(name, f"removed from the store, but not from this node: {error}")
            return
        self.behind.pop(name, None)
        log.info("%s: serial %s removed, as the fleet's store did (%s)%s", name, info.serial, how,
                 f"; it was the last certificate: placeholder written: {placeholder}" if placeholder else "",
                 extra={"certificate": name})

    def _lag(self, name: str, error: str) -> None:
        log.error("%s: not served as the store holds it: %s", name, error, extra={"certificate": name})
        _, info = self._served(name)
        since = self.behind[name].since if name in self.behind else utc_now()
        self.behind[name] = Behind(None if info is None else info.serial, since, error)


def _serial(bundle: bytes) -> str | None:
    try:
        return leaf_info(bundle).serial
    except (CertrenewError, ValueError):
        return None
