"""Issuing and installing certificates: the happy path of an order, in order.

key -> CSR -> ACME order answered by the responder -> order and key kept -> finalized
and downloaded -> bundle kept as pending -> (every certificate of the run) installed
into HAProxy at once -> recorded as current, with the CA's renewal window (ARI).
"""

import datetime
import logging
import threading
from dataclasses import dataclass

from cryptography import x509

from certrenew.acme_client import AcmeClient, Deadline, ari_cert_id, new_account_key_pem
from certrenew.bundle import check_issued, leaf_info, pem_blocks
from certrenew.config import CertificateSpec, Settings
from certrenew.errors import CertrenewError
from certrenew.install import Installer
from certrenew.keys import generate_key, key_to_pem, key_type_of, load_key, make_csr
from certrenew.policy import decide
from certrenew.renew import Outcome
from certrenew.responder import Responder
from certrenew.store import Account, CertificateRecord, FileStore, PendingOrder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Issued:
    """A certificate issued (and kept as pending) but not yet installed."""

    spec: CertificateSpec
    bundle: bytes
    action: str
    """"issued", "renewed" or "installed" (one a previous run issued)."""


class Issuer:
    """Orders, installs and records certificates for one run; safe to use from several threads.

    Each thread gets its own ACME client (a `requests` session and its nonces are not
    shared); the account is registered once. The responder listens from the first order
    to the end of the run: use the issuer as a context manager.
    """

    def __init__(self, settings: Settings, store: FileStore) -> None:
        self.settings = settings
        self.store = store
        self.installer = Installer(settings.ssl_dir, settings.reload_command, settings.haproxy_socket,
                                   settings.haproxy_config, settings.verify_endpoint)
        self.deadline = Deadline(settings.timeout)
        self._lock = threading.RLock()
        self._local = threading.local()
        self._account: Account | None = None
        self._connect_error: CertrenewError | None = None
        self._responder: Responder | None = None

    def __enter__(self) -> "Issuer":
        return self

    def __exit__(self, *exc_info) -> None:
        if self._responder is not None:
            self._responder.__exit__(*exc_info)

    def issue(self, spec: CertificateSpec) -> Issued:
        """Order a new certificate for `spec` and keep it as pending."""
        client, responder = self._client(), self._listen()
        domains = list(spec.domains)
        key = generate_key(spec.key_type)
        key_pem = key_to_pem(key)

        def keep_order(order_url: str) -> None:
            self.store.save_order(spec.name, PendingOrder(order_url, domains, spec.key_type, key_pem))

        fullchain = client.obtain(domains, make_csr(key, domains), responder, self._replaces(client, spec),
                                  spec.profile, before_finalize=keep_order)
        self._remember_account(client.account_uri)
        renewed = self.store.load_bundle(spec.name) is not None
        return self._keep(spec, fullchain, key_pem, "renewed" if renewed else "issued")

    def resume(self, spec: CertificateSpec) -> Issued:
        """Take up what an interrupted or failed run left: a pending certificate, or a validated order."""
        bundle = self.store.load_bundle(spec.name, "pending")
        if bundle is None:
            return self._finish_order(spec)
        info = leaf_info(bundle)
        fits = (
            {domain.lower() for domain in info.domains} == set(spec.domains)
            and info.not_after > _now()
            and key_type_of(load_key(bundle).public_key()) == spec.key_type
        )
        if not fits:
            log.info("%s: the pending certificate no longer fits; ordering a new one", spec.name)
            self.store.discard_pending(spec.name)
            return self.issue(spec)
        return Issued(spec, bundle, "installed")

    def _finish_order(self, spec: CertificateSpec) -> Issued:
        """Download (finalizing first if need be) the order a previous run validated, else order anew."""
        order = self.store.load_order(spec.name)
        fullchain = None
        if order.domains == list(spec.domains) and order.key_type == spec.key_type:
            fullchain = self._client().finish(order.url, make_csr(load_key(order.key_pem), order.domains))
        if fullchain is None:
            log.info("%s: the order a previous run left cannot be completed; ordering a new one", spec.name)
            self.store.discard_order(spec.name)
            return self.issue(spec)
        return self._keep(spec, fullchain, order.key_pem, "installed")

    def _keep(self, spec: CertificateSpec, fullchain: str, key_pem: bytes, action: str) -> Issued:
        """Keep the issued certificate as pending before anything else can fail, once it is proven ours.

        A refused one is not kept, nor is its order: downloading it again would bring the same.
        """
        try:
            bundle = check_issued(fullchain.encode(), key_pem, spec.domains, _now())
        except CertrenewError:
            self.store.discard_order(spec.name)
            raise
        self.store.save_pending(spec.name, bundle)
        return Issued(spec, bundle, action)

    def check(self, spec: CertificateSpec) -> Issued | Outcome:
        """Refresh the CA's renewal window for the current certificate; renew if it now says so."""
        record = self.store.load_record(spec.name)
        self._refresh_window(record, self.store.load_bundle(spec.name))
        self.store.save_record(record)
        decision = decide(record, list(spec.domains), spec.key_type, _now(), renew_before=self.settings.renew_before)
        if decision.due:
            log.info("%s: renewing (%s)", spec.name, decision.reason)
            return self.issue(spec)
        return Outcome(spec.name, "unchanged", decision.reason)

    def install(self, issued: list[Issued]) -> list[Outcome]:
        """Install the issued certificates into HAProxy together, then record each as current."""
        results = self.installer.install({item.spec.name: item.bundle for item in issued})
        outcomes = []
        for item, result in zip(issued, results):
            info = leaf_info(item.bundle)
            record = CertificateRecord(
                name=item.spec.name,
                domains=list(item.spec.domains),
                key_type=item.spec.key_type,
                serial=info.serial,
                not_before=info.not_before,
                not_after=info.not_after,
                issued_at=_now(),
            )
            self._refresh_window(record, item.bundle)
            self.store.promote_pending(record)
            detail = (f"serial {info.serial}, expires {info.not_after:%Y-%m-%d %H:%M} UTC, "
                      f"written to {result.path}, served by {result.method}"
                      + (f" ({result.detail})" if result.detail else ""))
            outcomes.append(Outcome(item.spec.name, item.action, detail))
        return outcomes

    def _refresh_window(self, record: CertificateRecord, bundle: bytes) -> None:
        """Store the CA's renewal window in `record`; without ARI, or when asking fails, the lifetime rule rules.

        The random time inside the window is kept while the window stays the same
        (RFC 9773 section 4.2), so repeated checks do not keep moving it.
        """
        try:
            client = self._client()
            if not client.supports_ari:
                record.ari_window_start = record.ari_window_end = record.ari_renew_at = record.ari_next_check = None
                return
            window = client.renewal_window(x509.load_pem_x509_certificate(pem_blocks(bundle)[0]))
        except CertrenewError as error:
            log.warning("%s: no renewal information (%s); the lifetime rule applies", record.name, error)
            record.ari_next_check = _now() + datetime.timedelta(hours=6)
            return
        if (window.start, window.end) != (record.ari_window_start, record.ari_window_end):
            record.ari_window_start, record.ari_window_end = window.start, window.end
            record.ari_renew_at = window.pick()
        record.ari_next_check = window.next_check

    def _replaces(self, client: AcmeClient, spec: CertificateSpec) -> str | None:
        """The ARI id of the certificate this order renews, where the CA speaks ARI."""
        current = self.store.load_bundle(spec.name)
        if current is None or not client.supports_ari:
            return None
        return ari_cert_id(x509.load_pem_x509_certificate(pem_blocks(current)[0]))

    def _client(self) -> AcmeClient:
        """This thread's logged-in ACME client; a failure to reach the CA is remembered for the others."""
        client = getattr(self._local, "client", None)
        if client is not None:
            return client
        with self._lock:
            if self._connect_error is not None:
                raise self._connect_error
            try:
                client = self._login()
            except CertrenewError as error:
                self._connect_error = error
                raise
        self._local.client = client
        return client

    def _login(self) -> AcmeClient:
        settings = self.settings
        if self._account is None:
            self._account = self.store.load_account(settings.directory_url)
            if self._account is None:
                self._account = Account(new_account_key_pem(), None)
                self.store.save_account(settings.directory_url, self._account)
        client = AcmeClient(settings.directory_url, self._account.key_pem, self.deadline, settings.ca_bundle)
        self._remember_account(client.login(self._account.uri, settings.email, settings.agree_tos))
        return client

    def _remember_account(self, uri: str) -> None:
        """Store the account URI when registration (first, or again) produced a new one."""
        with self._lock:
            if uri != self._account.uri:
                self._account = Account(self._account.key_pem, uri)
                self.store.save_account(self.settings.directory_url, self._account)

    def _listen(self) -> Responder:
        with self._lock:
            if self._responder is None:
                self._responder = Responder(self.settings.listen).__enter__()
        return self._responder


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
