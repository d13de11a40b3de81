"""Issuing and installing one certificate: the happy path of an order, in order.

key -> CSR -> ACME order answered by the responder -> bundle -> kept as pending ->
installed into HAProxy -> recorded as current.
"""

import datetime
import logging

from certrenew.acme_client import AcmeClient, Deadline, new_account_key_pem
from certrenew.bundle import build_bundle, leaf_info
from certrenew.config import CertificateSpec, Settings
from certrenew.errors import CertrenewError
from certrenew.install import Installer
from certrenew.keys import generate_key, key_to_pem, key_type_of, load_key, make_csr
from certrenew.renew import Outcome
from certrenew.responder import Responder
from certrenew.store import Account, CertificateRecord, FileStore

log = logging.getLogger(__name__)


class Issuer:
    """Orders and installs certificates for one run.

    The ACME client connects on first use and the responder listens only from the
    first order to the end of the run; use the issuer as a context manager.
    """

    def __init__(self, settings: Settings, store: FileStore) -> None:
        self.settings = settings
        self.store = store
        self.installer = Installer(settings.ssl_dir, settings.reload_command)
        self.deadline = Deadline(settings.timeout)
        self._client: AcmeClient | None = None
        self._client_error: CertrenewError | None = None
        self._responder: Responder | None = None

    def __enter__(self) -> "Issuer":
        return self

    def __exit__(self, *exc_info) -> None:
        if self._responder is not None:
            self._responder.__exit__(*exc_info)

    def issue(self, spec: CertificateSpec) -> Outcome:
        """Order a new certificate for `spec` and install it."""
        client, responder = self._connect(), self._listen()
        key = generate_key(spec.key_type)
        fullchain = client.obtain(list(spec.domains), make_csr(key, list(spec.domains)), responder)
        self._remember_account(client.account_uri)
        bundle = build_bundle(fullchain.encode(), key_to_pem(key))
        self.store.save_pending(spec.name, bundle)
        renewed = self.store.load_record(spec.name) is not None
        return self._install(spec, bundle, "renewed" if renewed else "issued")

    def resume(self, spec: CertificateSpec) -> Outcome:
        """Install the pending certificate an interrupted or failed run left, if it still fits."""
        bundle = self.store.load_bundle(spec.name, "pending")
        info = leaf_info(bundle)
        fits = (
            list(info.domains) == list(spec.domains)
            and info.not_after > datetime.datetime.now(datetime.timezone.utc)
            and key_type_of(load_key(bundle).public_key()) == spec.key_type
        )
        if not fits:
            log.info("%s: the pending certificate no longer fits; ordering a new one", spec.name)
            self.store.discard_pending(spec.name)
            return self.issue(spec)
        return self._install(spec, bundle, "installed")

    def _install(self, spec: CertificateSpec, bundle: bytes, action: str) -> Outcome:
        info = leaf_info(bundle)
        result = self.installer.install(spec.name, bundle)
        record = CertificateRecord(
            name=spec.name,
            domains=list(spec.domains),
            key_type=spec.key_type,
            serial=info.serial,
            not_before=info.not_before,
            not_after=info.not_after,
            issued_at=datetime.datetime.now(datetime.timezone.utc),
        )
        self.store.promote_pending(record)
        return Outcome(
            spec.name,
            action,
            f"serial {info.serial}, expires {info.not_after:%Y-%m-%d %H:%M} UTC, "
            f"written to {result.path}, HAProxy updated by {result.method}",
        )

    def _connect(self) -> AcmeClient:
        """The logged-in ACME client; a failure to connect is remembered for the other certificates."""
        if self._client_error is not None:
            raise self._client_error
        if self._client is None:
            try:
                self._client = self._login()
            except CertrenewError as error:
                self._client_error = error
                raise
        return self._client

    def _login(self) -> AcmeClient:
        settings = self.settings
        account = self.store.load_account(settings.directory_url)
        if account is None:
            account = Account(new_account_key_pem(), None)
            self.store.save_account(settings.directory_url, account)
        client = AcmeClient(settings.directory_url, account.key_pem, self.deadline, settings.ca_bundle)
        self._account = account
        self._remember_account(client.login(account.uri, settings.email, settings.agree_tos))
        return client

    def _remember_account(self, uri: str) -> None:
        """Store the account URI when registration (first, or again) produced a new one."""
        if uri != self._account.uri:
            self._account = Account(self._account.key_pem, uri)
            self.store.save_account(self.settings.directory_url, self._account)

    def _listen(self) -> Responder:
        if self._responder is None:
            self._responder = Responder(self.settings.listen).__enter__()
        return self._responder
