"""Revoking a certificate at its CA, then serving a new one or removing the old one everywhere.

Revocation (RFC 8555 section 7.6) is signed with the account key stored for the CA
the certificate's record names as its issuer (the configured directory for a record
that names none).

With a replacement (`--reissue`) the new certificate is ordered and served *before*
the old one is revoked: HAProxy then never serves a revoked certificate (clients that
check revocation would refuse it) and never serves nothing, and a compromised key
stays valid only for the seconds an order takes. If the new one cannot be served,
the old one is not revoked: the site keeps working and the operator decides.

With `--delete` the certificate leaves every HAProxy (over the Runtime API, else by a
reload), the ssl dir, the --crt-list file (its line) and the state dir, whose files are kept under `removed/`. A name
that was never issued (a mistyped one whose order failed) has nothing to revoke or
unserve: `--delete` only moves its state there, or `status` would report it for ever.
"""

import dataclasses
import datetime
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from certrenew.config import (
    AcmeSettings,
    CertificateSpec,
    ConfigFile,
    HaproxySettings,
    Settings,
    certificate_specs,
    check_certificate_name,
)
from certrenew.errors import CertrenewError, UsageError
from certrenew.pki.bundle import CertificateInfo, leaf_certificate, leaf_info
from certrenew.pki.keys import key_type_of, load_key
from certrenew.renewal.deploy import installer
from certrenew.renewal.renew import Outcome, run
from certrenew.state.store import Account, Store, open_store
from certrenew.system.runcontext import RunContext

REASONS = MappingProxyType({"unspecified": 0, "keyCompromise": 1, "superseded": 4, "cessationOfOperation": 5})
"""The CRL reason codes (RFC 5280 section 5.3.1) a subscriber may give; CAs refuse the others."""


@dataclass(frozen=True)
class Request:
    """A revocation as the operator confirms it: checked, read from the state, nothing changed yet."""

    name: str
    bundle: bytes | None
    """None: never issued, so `--delete` only moves the state aside."""
    info: CertificateInfo | None
    ca: str
    """The ACME directory URL of the CA that issued it (recorded), where it is revoked."""
    reason: str
    replacement: CertificateSpec | None = None
    """The certificate to order and serve before revoking (--reissue)."""
    delete: bool = False
    others: tuple[str, ...] = ()
    """The config's other certificates: the replacement's order is not refused as shadowed by them."""

    def question(self) -> str:
        if self.info is None:
            return f"Remove the state of {self.name} (never issued, nothing to revoke)? [y/N] "
        then = (" after serving a new one" if self.replacement else
                ", then remove it from HAProxy, the ssl dir and the state" if self.delete else "")
        return (f"Revoke {self.name} (serial {self.info.serial}, names {', '.join(self.info.domains)}) "
                f"at {self.ca}{then}? [y/N] ")


@dataclass(frozen=True)
class Removal:
    """Where a deleted certificate went."""

    served_by: str
    """How HAProxy stopped serving it: a hot update, a reload, or nothing to do."""
    backup: str
    """Where its state is kept now (a path in the state dir)."""
    placeholder: Path | None
    """Written because the certificate was the last one in the ssl dir."""


@dataclass(frozen=True)
class Result:
    """What a revocation did, for the report."""

    request: Request
    already: bool
    """The CA had revoked the certificate before (alreadyRevoked): the goal holds all the same."""
    reissued: Outcome | None = None
    removed: Removal | None = None

    def report(self) -> list[str]:
        request, lines = self.request, []
        if request.info is None:
            assert self.removed is not None  # a never-issued certificate is only ever deleted
            return [f"{request.name}: never issued, nothing to revoke; its state is moved to {self.removed.backup}"]
        if self.reissued is not None:
            lines.append(f"{request.name}: {self.reissued.action}: {self.reissued.detail}")
        done = "was already revoked" if self.already else f"revoked (reason {request.reason})"
        lines.append(f"{request.name}: serial {request.info.serial} {done} at {request.ca}")
        if self.removed is not None:
            removed = self.removed
            if removed.placeholder is not None:
                lines.append(f"{request.name}: it was the last certificate; placeholder written: {removed.placeholder}")
            lines.append(f"{request.name}: removed from the ssl dir and from HAProxy ({removed.served_by}); "
                         f"its state is kept in {removed.backup}")
        elif self.reissued is None:
            lines.append(f"{request.name}: HAProxy still serves the revoked certificate until the next run "
                         f"replaces it (it is due now); remove it with 'certrenew revoke {request.name} --delete'")
        return lines


def reason_code(reason: str) -> int:
    try:
        return REASONS[reason]
    except KeyError as cause:
        raise UsageError(f"unknown revocation reason {reason!r}; choose one of {', '.join(REASONS)}") from cause


def prepare(settings: Settings, name: str, reason: str, config: ConfigFile | None,
            reissue: bool = False, delete: bool = False) -> Request:
    """Check everything the revocation needs before anyone is asked; changes nothing."""
    reason_code(reason)
    store = open_store(settings)
    bundle = store.load_bundle(check_certificate_name(name))
    in_config = next((spec for spec in config.certificates if spec.name == name), None) if config else None
    if delete and config is not None and in_config is not None:
        raise UsageError(f"{name} is still in {config.path}, so the next run would issue it again; "
                         "remove it there first, or use --reissue")
    if bundle is None:
        if delete and name in store.names():
            return Request(name, None, None, settings.acme.directory_url, reason, delete=True)
        raise UsageError(f"no certificate named {name!r} in {settings.store or settings.state_dir} (see certrenew status)")
    record = store.load_record(name)
    ca = record.directory if record is not None and record.directory else settings.acme.directory_url
    _account(store, settings.store or settings.state_dir, ca)
    info = leaf_info(bundle)
    replacement = None
    if reissue and config is not None:
        if in_config is None:
            raise UsageError(f"{name} is not in {config.path}, which --reissue orders from; add it back, "
                             "or use --delete")
        replacement = in_config
    elif reissue:  # the single-domain form: the names and key type it was issued with, the challenge as given
        key_type = key_type_of(load_key(bundle).public_key())
        if key_type is None:
            raise UsageError(f"{name} has a key of a type certrenew does not make; list it in a config file "
                             "with a key_type to --reissue it")
        # Checked here, so a wildcard without --challenge dns-01 is refused before anything is ordered.
        defaults = settings.certificate
        [replacement] = certificate_specs(name, info.domains, key_type, defaults.profile, defaults.challenge,
                                          defaults.dns())
    if delete and not settings.haproxy.ssl_dir.is_dir():
        raise UsageError(f"the ssl dir {settings.haproxy.ssl_dir} does not exist (set --ssl-dir)")
    others = tuple(spec.name for spec in config.certificates if spec.name != name) if config else ()
    return Request(name, bundle, info, ca, reason, replacement, delete, others)


def carry_out(settings: Settings, request: Request, context: RunContext | None = None) -> Result:
    """Serve the replacement (if any), revoke, then remove (if asked), holding the state dir's lock.

    The lock is not held while the operator reads the question; so, unless a new
    certificate was just served, the one revoked must still be the one confirmed. `context` cancels it.
    """
    context = context or RunContext()
    reissued = None
    if request.replacement is not None:
        _discard_unfinished(settings, request.name, context)
        # run() takes the lock itself, and brings every install guarantee (rollback, verify).
        reissued = run(dataclasses.replace(settings, force=True), [request.replacement],
                       others=request.others, context=context).outcomes[0]
        if reissued.failed:
            raise CertrenewError(f"{request.name}: not revoked, as no new certificate could be served "
                                 f"({reissued.detail}); HAProxy still serves the old one. Run again, or "
                                 "revoke without --reissue")
    store = open_store(settings, context)
    with store.lock(settings.lock_timeout):
        if reissued is None and store.load_bundle(request.name) != request.bundle:
            raise CertrenewError(f"{request.name} changed since it was read (another run renewed or removed "
                                 "it?); nothing revoked, run again")
        if request.info is None:  # never issued: nothing at the CA, in HAProxy or in the ssl dir
            return Result(request, False, removed=Removal("never served", _archive(store, request.name), None))
        already = not _revoke_at_ca(settings.acme, store, settings.store or settings.state_dir, request, context)
        removed = _remove(settings.haproxy, store, request.name) if request.delete else None
        if removed is None and reissued is None:  # still served: the next run must replace it
            _record_revoked(store, request.name)
    return Result(request, already, reissued, removed)


def _discard_unfinished(settings: Settings, name: str, context: RunContext) -> None:
    """Drop what an earlier run left for `name`: a pending certificate, a validated order.

    Their keys sat in the state dir beside the one being revoked, so whatever exposed
    that one may have exposed them: installing or finishing them (as a run resumes)
    would serve a key the operator means to be rid of. The run then orders with a new one.
    """
    store = open_store(settings, context)
    with store.lock(settings.lock_timeout):
        store.discard_pending(name)
        store.discard_order(name)
def _record_revoked(store: Store, name: str) -> None:
    record = store.load_record(name)
    if record is not None:
        record.revoked = datetime.datetime.now(datetime.timezone.utc)
        store.save_record(record)


def _account(store: Store, state_dir: str | Path, ca: str) -> Account:
    account = store.load_account(ca)
    if account is None:
        raise UsageError(f"no ACME account for {ca} in {state_dir}; revocation "
                         "is signed with the account that ordered the certificate (set --directory to its CA)")
    return account


def _revoke_at_ca(settings: AcmeSettings, store: Store, state_dir: str | Path, request: Request,
                  context: RunContext) -> bool:
    """Revoke at the CA; False when it was revoked already."""
    from certrenew.acme.orders import AcmeClient
    from certrenew.acme.transport import Deadline

    account = _account(store, state_dir, request.ca)
    ca_bundle = next((ca.ca_bundle for ca in settings.cas if ca.directory == request.ca), settings.ca_bundle)
    client = AcmeClient(request.ca, account.key_pem, Deadline(settings.timeout, context), ca_bundle)
    client.login(account.uri, settings.email, settings.agree_tos)
    assert request.bundle is not None  # carry_out only moves a never-issued one aside
    return client.revoke(leaf_certificate(request.bundle), reason_code(request.reason))


def _remove(settings: HaproxySettings, store: Store, name: str) -> Removal:
    """Take the certificate out of every HAProxy and the ssl dir (see `Installer.remove`), then move its state aside.

    The state goes last, so a removal that fails half-way is completed by running `revoke --delete`
    once more (the CA then answers that it is revoked already). The other nodes of a fleet follow
    the store's removal (see `renewal.follow`).
    """
    try:
        served_by, placeholder = installer(settings).remove(name)
    except CertrenewError as error:
        raise CertrenewError(f"{name}: revoked, but not removed ({error}); the ssl dir and the state keep it: "
                             f"run 'certrenew revoke {name} --delete' again once that is fixed") from error
    return Removal(served_by, _archive(store, name), placeholder)


def _archive(store: Store, name: str) -> str:
    """Move the certificate's state under `removed/`, stamped with the time."""
    return store.archive(name, datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
