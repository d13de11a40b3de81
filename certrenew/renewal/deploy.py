"""Deploying certificates: make this node's HAProxy serve what the store holds as pending.

pending bundles (every certificate of the run) -> installed into HAProxy at once, verified,
rolled back on failure (`haproxy.install`) -> each recorded as current. It needs neither
the CA nor the order that issued a bundle: a node that issued nothing (another node of a
fleet, or an earlier run, did) deploys what the store holds the same way.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from certrenew.config import CertificateSpec, HaproxySettings
from certrenew.errors import CertrenewError
from certrenew.haproxy.install import Installer, InstallResult, Serving
from certrenew.pki.bundle import CertificateInfo, check_bundle
from certrenew.renewal.policy import Action, recent_issues, utc_now
from certrenew.state.store import CertificateRecord, Store
from certrenew.system.runcontext import RunContext

if TYPE_CHECKING:
    from certrenew.acme.ari import RenewalWindow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Issued:
    """A certificate issued, proven ours and kept as pending, but not yet installed."""

    spec: CertificateSpec
    bundle: bytes
    action: Action
    """ISSUED, RENEWED or INSTALLED (one a previous run, or another node, issued)."""
    window: RenewalWindow | CertrenewError | None = None
    """What the CA said about its renewal: its window, the error asking it, or None when it does
    not speak ARI (or was not asked)."""
    directory: str | None = None
    """The ACME directory URL of the CA that issued it; None: the first CA."""


@dataclass(frozen=True)
class Installed:
    """A certificate installed into HAProxy and recorded as current."""

    issued: Issued
    info: CertificateInfo
    result: InstallResult
    unrecorded: Exception | None = None
    """Why it is served but could not be recorded as current (a full state disk, say): it stays
    pending, and the next run records it."""


class Deployer:
    """Installs pending certificates into this node's HAProxy and records them as current.

    `directory`: the first CA's, recorded for a bundle whose CA is unrecorded; `managed`:
    the names of every certificate of the config (see `install.shadowing`); `concurrency`:
    how many records are written at once; `context`: what cancels it.
    """

    def __init__(self, haproxy: HaproxySettings, store: Store, directory: str, managed: Iterable[str] = (),
                 concurrency: int = 4, context: RunContext | None = None,
                 installing: AbstractContextManager[object] | None = None) -> None:
        """`installing`: held around each install, where another thread of the process installs into
        the same HAProxy (a daemon's `follow.Follower`): one Runtime API transaction at a time."""
        self.store, self.directory, self.concurrency = store, directory, concurrency
        self.installer = installer(haproxy, managed, context)
        self.installing = installing or nullcontext()

    def check_place(self, spec: CertificateSpec) -> None:
        """See `Installer.check_place`. A certificate HAProxy loads from a crt-store entry is served
        from that entry, not from whatever the ssl dir holds, so no other bundle there shadows it."""
        self.installer.check_place(spec.name, () if spec.crt_store else spec.domains, spec.key_type)

    def pending(self, spec: CertificateSpec) -> Issued | None:
        """What the store holds as pending for `spec`, checked to be a whole bundle; None if nothing."""
        bundle = self.store.load_bundle(spec.name, "pending")
        if bundle is None:
            return None
        check_bundle(bundle)
        return Issued(spec, bundle, Action.INSTALLED, None, self.store.pending_directory(spec.name))

    def deploy(self, issued: list[Issued]) -> list[Installed]:
        """Install the pending certificates into HAProxy together, then record each as current.

        Each is recorded on its own: one that cannot be does not make the others' records
        untrue (see `Installed.unrecorded`). Touches only HAProxy and local state: the
        renewal windows came with the downloads. The records are written a few at once:
        each waits on its fsyncs, which the disk then takes together (a thousand one by
        one took longer than ordering them).
        """
        with self.installing:
            results = self.installer.install({item.spec.name: item.bundle for item in issued},
                                             {item.spec.name: serving(item.spec) for item in issued})
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._record, issued, results))

    def _record(self, item: Issued, result: InstallResult) -> Installed:
        """Record an installed certificate as current; a failure, even one nobody foresaw, is kept, not raised."""
        info = result.info
        directory = item.directory or self.directory
        settings = item.spec.order_settings(directory)
        try:
            issues = recent_issues(self.store.load_record(item.spec.name), settings, utc_now())
        except CertrenewError as error:  # the new record replaces it: only its budget is lost
            log.warning("%s: %s", item.spec.name, error)
            issues = []
        record = CertificateRecord(
            name=item.spec.name,
            domains=list(item.spec.domains),
            key_type=item.spec.key_type,
            serial=info.serial,
            not_before=info.not_before,
            not_after=info.not_after,
            issued_at=utc_now(),
            directory=directory,
            recent_issues=issues,
            issued_settings=settings,
        )
        apply_window(record, item.window)
        try:
            self.store.promote_pending(record)
        except Exception as error:  # even one nobody foresaw: the others are served and recorded
            return Installed(item, info, result, error)
        return Installed(item, info, result)


def installer(haproxy: HaproxySettings, managed: Iterable[str] = (), context: RunContext | None = None) -> Installer:
    """The `Installer` into this node's HAProxy, as `haproxy` configures it."""
    return Installer(haproxy.ssl_dir, haproxy.reload_command, haproxy.haproxy_socket, haproxy.haproxy_config,
                     haproxy.verify_endpoint, haproxy.crt_list, managed, context)


def serving(spec: CertificateSpec) -> Serving:
    """How HAProxy serves `spec`'s bundle besides from its file."""
    return Serving(spec.crt_list_options, spec.crt_store)


def apply_window(record: CertificateRecord, window: RenewalWindow | CertrenewError | None) -> None:
    """Store the CA's renewal window in `record`; without ARI, or when asking failed, the lifetime rule rules.

    The random time inside the window is kept while the window stays the same
    (RFC 9773 section 4.2), so repeated checks do not keep moving it.
    """
    if window is None:
        record.ari_window_start = record.ari_window_end = record.ari_renew_at = record.ari_next_check = None
    elif isinstance(window, CertrenewError):
        record.ari_next_check = utc_now() + datetime.timedelta(hours=6)
    else:
        if (window.start, window.end) != (record.ari_window_start, record.ari_window_end):
            record.ari_window_start, record.ari_window_end = window.start, window.end
            record.ari_renew_at = window.pick()
        record.ari_next_check = window.next_check
