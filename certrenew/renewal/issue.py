"""Issuing certificates for a run: the happy path of an order, in order.

key -> CSR -> ACME order answered by the spec's challenge solver -> order and key kept
-> finalized and downloaded -> bundle proven ours and kept as pending, with the CA's
renewal window (ARI) fetched right away in the same worker. Issuing ends there: making
HAProxy serve what the store holds is `deploy`'s, from local state alone.
"""

import datetime
import logging
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence

from certrenew.acme.account import ExternalAccount, new_account_key_pem
from certrenew.acme.ari import RenewalWindow, ari_cert_id, renewal_window, supports_ari
from certrenew.acme.orders import AcmeClient
from certrenew.acme.solver import ChallengeSolver
from certrenew.acme.transport import Deadline, RequestCounter
from certrenew.config import AcmeSettings, Ca, CertificateSpec
from certrenew.errors import CertrenewError, OverBudget, StoreUnreachable, UsageError
from certrenew.pki.bundle import check_bundle, check_clock, check_issued, leaf_certificate
from certrenew.pki.keys import generate_key, key_to_pem, key_type_of, load_key, make_csr
from certrenew.renewal.deploy import Issued, apply_window
from certrenew.renewal.policy import (
    ORDER_BUDGET,
    Action,
    Decision,
    budget_ends,
    budget_period,
    decide,
    minutes,
    recent_issues,
    utc_now,
)
from certrenew.state.store import Account, CertificateRecord, PendingOrder, Store
from certrenew.system.runcontext import RunContext

log = logging.getLogger(__name__)

Window = RenewalWindow | CertrenewError | None
"""What the CA said about a certificate's renewal: its window, the error asking it, or None
when it does not speak ARI."""

class _Session:
    """A CA's account and its clients, one per thread, for a run; a failure to reach it is remembered
    for the other threads."""

    def __init__(self, ca: Ca) -> None:
        self.ca = ca
        self.account: Account | None = None
        self.local = threading.local()
        self.connect_error: CertrenewError | None = None


class _Probe:
    """The pre-flight self-check of one certificate, made once whichever CA comes to order it: its
    failure is ours to fix, and no other CA would fare better."""

    def __init__(self, check: Callable[[], None]) -> None:
        self.check = check
        self.passed = self.failed = False

    def __call__(self) -> None:
        if self.passed:
            return
        try:
            self.check()
        except BaseException:
            self.failed = True
            raise
        self.passed = True


class Issuer:
    """Orders certificates for one run and keeps each, proven, as pending; safe to use from several threads.

    Each thread gets its own ACME client per CA (a `requests` session and its nonces are not
    shared); each CA's account is registered once, and only when an order comes to it.
    `solvers` answer the challenges, by each spec's `solver_key` (its challenge type, or its
    DNS settings): the caller creates them and keeps them running for the run.
    """

    def __init__(self, acme: AcmeSettings, store: Store, solvers: Mapping[Hashable, ChallengeSolver],
                 counter: RequestCounter | None = None,
                 before_order: Callable[[CertificateSpec], None] = lambda spec: None,
                 check_place: Callable[[CertificateSpec], None] = lambda spec: None,
                 force: bool = False, renew_before: datetime.timedelta | None = None,
                 context: RunContext | None = None, lock_timeout: float = 300.0) -> None:
        """`lock_timeout`: how long to wait for another process creating the CA's account."""
        self.acme = acme
        self.lock_timeout = lock_timeout
        self.before_order = before_order
        """Raises to stop an order before the CA hears of it (the pre-flight self-check)."""
        self.check_place = check_place
        """Raises when what is issued could not be served (see `Deployer.check_place`)."""
        self.force, self.renew_before = force, renew_before
        self.counter = counter
        self.store = store
        self.solvers = solvers
        self.deadline = Deadline(acme.timeout, context)
        self._lock = threading.RLock()
        self.cas = acme.cas
        """The CAs to order from, in order (see `AcmeSettings.cas`)."""
        self._sessions = {ca.directory: _Session(ca) for ca in self.cas}

    def issue(self, spec: CertificateSpec) -> Issued:
        """Order a new certificate for `spec` from the first CA that issues it, and keep it as pending.

        What fails at a CA and may not at the next (see `falls_through`) is logged in one
        line and the next CA is asked; the last one's failure is the certificate's.
        """
        self.check_place(spec)
        solver, cas, probe = self._solver(spec), self.cas, _Probe(lambda: self.before_order(spec))
        for ca, then in zip(cas, cas[1:]):
            try:
                return self._issue_at(ca.directory, spec, solver, probe)
            except CertrenewError as error:
                if probe.failed or not falls_through(error):
                    raise
                log.warning("%s: not issued by %s (%s); trying %s", spec.name, ca.directory, error, then.directory,
                            extra={"certificate": spec.name})
        return self._issue_at(cas[-1].directory, spec, solver, probe)

    def _issue_at(self, directory: str, spec: CertificateSpec, solver: ChallengeSolver,
                  probe: Callable[[], None]) -> Issued:
        """Order the certificate from the CA at `directory`: the happy path of an order."""
        self._check_budget(spec, directory)
        client = self._client(directory)
        if self.acme.caa_check:
            from certrenew.challenge import caa  # only when asked: no lookup, no dnspython on the usual path

            configured = self.acme.caa_identity if directory == self.acme.directory_url else ()
            caa.require(spec.domains, caa_identities(client.transport.directory.meta.caa_identities, configured),
                        client.account_uri, spec.challenge, self.acme.caa_resolver)
        probe()
        domains = list(spec.domains)
        key = generate_key(spec.key_type)
        key_pem = key_to_pem(key)

        def keep_order(order_url: str) -> None:
            self.store.save_order(spec.name, PendingOrder(order_url, domains, spec.key_type, key_pem, directory))

        fullchain = client.obtain(domains, make_csr(key, domains), solver, self._replaces(client, spec, directory),
                                  spec.profile, before_finalize=keep_order)
        self._remember_account(self._sessions[directory], client.account_uri)
        renewed = self.store.load_bundle(spec.name) is not None
        return self._keep(spec, fullchain, key_pem, Action.RENEWED if renewed else Action.ISSUED, directory)

    def resume(self, spec: CertificateSpec) -> Issued:
        """Take up what an interrupted or failed run left: a pending certificate, or a validated order.

        Nothing left behind can wedge the runs: what cannot be used is set aside (see
        `_set_aside`), and what came from another CA or no longer fits is dropped; either
        way the certificate is ordered anew.
        """
        self.check_place(spec)
        bundle = self.store.load_bundle(spec.name, "pending")
        if bundle is None:
            return self._finish_order(spec)
        try:
            info = check_bundle(bundle)
            directory = self.store.pending_directory(spec.name)
        except StoreUnreachable:  # no fault of the bundle's: it waits for the store
            raise
        except CertrenewError as error:
            return self._set_aside(spec, "pending", f"the pending certificate {error}")
        if not self._same_ca(spec, "pending certificate", directory):
            self.store.discard_pending(spec.name)
            return self.issue(spec)
        fits = (
            {domain.lower() for domain in info.domains} == set(spec.domains)
            and info.not_after > utc_now()
            and key_type_of(load_key(bundle).public_key()) == spec.key_type
        )
        if not fits:
            log.info("%s: the pending certificate no longer fits; ordering a new one", spec.name,
                     extra={"certificate": spec.name})
            self.store.discard_pending(spec.name)
            return self.issue(spec)
        return Issued(spec, bundle, Action.INSTALLED, self._window(spec.name, bundle, directory), directory)

    def _finish_order(self, spec: CertificateSpec) -> Issued:
        """Download (finalizing first if need be) the order a previous run validated, else order anew.

        The order is taken up at the CA that has it; if that CA fails and there is a fallback,
        the certificate is ordered anew, from the first CA again."""
        try:
            order = self.store.load_order(spec.name)
            assert order is not None  # resume() runs only when the store holds a pending bundle or order
            key = load_key(order.key_pem)
        except StoreUnreachable:  # no fault of the order's: it waits for the store
            raise
        except (CertrenewError, ValueError, TypeError) as error:
            return self._set_aside(spec, "order", f"the saved order cannot be used ({error})")
        fullchain = None
        if not self._same_ca(spec, "saved order", order.directory):
            self.store.discard_order(spec.name)
            return self.issue(spec)
        directory = order.directory or self.acme.directory_url
        if order.domains == list(spec.domains) and order.key_type == spec.key_type:
            try:
                fullchain = self._client(directory).finish(order.url, make_csr(key, order.domains))
            except CertrenewError as error:
                if len(self.cas) == 1 or not falls_through(error):
                    raise
                log.warning("%s: the order a previous run left at %s cannot be completed (%s); ordering anew",
                            spec.name, directory, error, extra={"certificate": spec.name})
                self.store.discard_order(spec.name)
                return self.issue(spec)
        if fullchain is None:
            log.info("%s: the order a previous run left cannot be completed; ordering a new one", spec.name,
                     extra={"certificate": spec.name})
            self.store.discard_order(spec.name)
            return self.issue(spec)
        return self._keep(spec, fullchain, order.key_pem, Action.INSTALLED, directory)

    def _check_budget(self, spec: CertificateSpec, directory: str) -> None:
        """Refuse to order past the certificate's budget (`policy.ORDER_BUDGET`), whatever asked for it;
        the operator's --force (and so `revoke --reissue`) orders anyway, with a warning."""
        record = self.store.load_record(spec.name)
        until = budget_ends(record, spec.order_settings(directory), utc_now())
        if until is None:
            return
        period = budget_period(record).total_seconds()
        spent = (f"the CA issued {ORDER_BUDGET} certificates for it in the last "
                 f"{f'{period / 3600:g} h' if period >= 3600 else f'{period:g} s'}, its budget")
        if self.force:
            log.warning("%s: %s; ordering anyway (--force)", spec.name, spent)
            return
        raise OverBudget(f"not ordered: {spent} (is the CA's renewal window, or the clock, asking again and "
                         f"again?); next order after {minutes(until)} UTC, or now with --force", until)

    def _counted(self, spec: CertificateSpec, directory: str) -> CertificateRecord:
        """The certificate's record with one more certificate the CA issued counted against the budget."""
        now, settings = utc_now(), spec.order_settings(directory)
        record = self.store.load_record(spec.name) or CertificateRecord(spec.name, list(spec.domains), spec.key_type)
        record.recent_issues, record.issued_settings = [*recent_issues(record, settings, now), now], settings
        return record

    def _keep(self, spec: CertificateSpec, fullchain: str, key_pem: bytes, action: Action, directory: str) -> Issued:
        """Keep the issued certificate as pending before anything else can fail, once it is proven ours,
        then ask for its window. It counts against the budget, kept in the same write.

        A refused one is not kept, nor is its order (downloading it again would bring the same),
        but it counts too.
        """
        record = self._counted(spec, directory)
        try:
            bundle = check_issued(fullchain.encode(), key_pem, spec.domains, utc_now())
        except CertrenewError:
            self.store.save_record(record)
            self.store.discard_order(spec.name)
            raise
        self.store.save_pending(spec.name, bundle, directory, record)
        return Issued(spec, bundle, action, self._window(spec.name, bundle, directory), directory)

    def _set_aside(self, spec: CertificateSpec, kind: str, problem: str) -> Issued:
        """Move an unusable pending certificate or order out of the way, kept for inspection.

        That is a failure, with its back-off, as any other: the next attempt orders anew,
        at once with --force.
        """
        where = self.store.set_aside(spec.name, kind)
        if self.force:
            log.warning("%s: %s; set aside as %s; ordering anew (--force)", spec.name, problem, where,
                        extra={"certificate": spec.name})
            return self.issue(spec)
        raise CertrenewError(f"{problem}; set aside as {where}; the next attempt orders anew (or use --force)")

    def _same_ca(self, spec: CertificateSpec, what: str, directory: str | None) -> bool:
        """Whether what a previous run left came from a CA this run uses (unrecorded: assume so)."""
        if directory is None or directory in self._sessions:
            return True
        log.warning("%s: discarding the %s from %s: this run uses the CA at %s", spec.name, what, directory,
                    " or ".join(self._sessions), extra={"certificate": spec.name})
        return False

    def check(self, spec: CertificateSpec) -> Issued | Decision:
        """Refresh the CA's renewal window for the current certificate; renew if it now says so."""
        record = self.store.load_record(spec.name)
        assert record is not None  # checked only when the record says a check is due
        apply_window(record, self._window(spec.name, self.store.load_bundle(spec.name), record.directory))
        self.store.save_record(record)
        decision = decide(record, list(spec.domains), spec.key_type, utc_now(), renew_before=self.renew_before,
                          directories=tuple(self._sessions))
        if decision.due:
            log.info("%s: renewing (%s)", spec.name, decision.reason, extra={"certificate": spec.name})
            return self.issue(spec)
        return decision

    def _window(self, name: str, bundle: bytes | None, directory: str | None) -> Window:
        """Ask the CA that issued the certificate for its renewal window; a failure is kept, not raised."""
        try:
            client = self._client(directory)
            if not supports_ari(client.transport):
                return None
            if bundle is None:
                raise CertrenewError("no current certificate to ask about")
            return renewal_window(client.transport, leaf_certificate(bundle))
        except CertrenewError as error:
            log.warning("%s: no renewal information (%s); the lifetime rule applies", name, error,
                        extra={"certificate": name})
            return error

    def _replaces(self, client: AcmeClient, spec: CertificateSpec, directory: str) -> str | None:
        """The ARI id of the certificate this order renews, where the CA speaks ARI and issued it."""
        current = self.store.load_bundle(spec.name)
        if current is None or not supports_ari(client.transport):
            return None
        record = self.store.load_record(spec.name)
        if record is not None and record.directory not in (None, directory):  # another CA's: unknown here
            return None
        return ari_cert_id(leaf_certificate(current))

    def _client(self, directory: str | None) -> AcmeClient:
        """This thread's logged-in ACME client for the CA at `directory` (None: the first CA); a failure to
        reach the CA is remembered for the others."""
        session = self._sessions[directory or self.acme.directory_url]
        client = getattr(session.local, "client", None)
        if client is not None:
            return client
        with self._lock:
            if session.connect_error is not None:
                raise session.connect_error
            try:
                client = self._login(session)
            except CertrenewError as error:
                session.connect_error = error
                raise
        session.local.client = client
        return client

    def _login(self, session: _Session) -> AcmeClient:
        acme, ca = self.acme, session.ca
        if session.account is None:
            with self.store.account_lock(ca.directory, self.lock_timeout):  # one key per CA, whoever makes it
                session.account = self.store.load_account(ca.directory)
                if session.account is None:
                    session.account = self.store.save_account(ca.directory, Account(new_account_key_pem(), None))
        account = session.account
        client = AcmeClient(ca.directory, account.key_pem, self.deadline, ca.ca_bundle, self.counter)
        check_clock(client.transport.ca_clock_ahead)  # at the first login of the run: before any order
        eab = ExternalAccount(ca.eab_kid, ca.eab_hmac_key_file) if ca.eab_kid and ca.eab_hmac_key_file else None
        self._remember_account(session, client.login(account.uri, acme.email, acme.agree_tos, eab))
        return client

    def _remember_account(self, session: _Session, uri: str) -> None:
        """Store the account URI when registration (first, or again) produced a new one."""
        with self._lock:
            assert session.account is not None  # loaded or created at login
            if uri != session.account.uri:
                session.account = self.store.save_account(session.ca.directory,
                                                          Account(session.account.key_pem, uri))

    def _solver(self, spec: CertificateSpec) -> ChallengeSolver:
        solver = self.solvers.get(spec.solver_key)
        if solver is None:
            raise CertrenewError(f"no solver for the {spec.challenge} challenge in this run")
        return solver


def falls_through(error: CertrenewError) -> bool:
    """Whether another CA may issue what this one could not: after the CA failing, refusing or
    failing a validation (its own view of the names), after a refusal of this CA's account or
    binding, or CAA forbidding this CA; not after a mistake of ours that every CA would meet
    (UsageError), nor past the order budget, which stops a loop, not a CA."""
    return not isinstance(error, (UsageError, OverBudget))


def caa_identities(listed: Sequence[str] | None, configured: Sequence[str]) -> list[str]:
    """The CA's issuer domains for CAA: those its directory lists (caaIdentities), else `configured`
    (--caa-identity, which names the first CA's: a fallback CA's verdict is then left to it)."""
    return list(listed or configured)
