"""A renewal run: decide what is due, order it, install it, record it.

This module is the library API behind the CLI. The ACME stack is imported only when
something is due, so a run with nothing to do reads one small record per certificate
and exits.
"""

import datetime
import functools
import logging
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certrenew.acme.solver import ChallengeSolver
from certrenew.config import CertificateSpec, HaproxySettings, HookSettings, Settings, check_certificate_name
from certrenew.config.challenges import HTTP_01, STATELESS, TLS_ALPN_01, check_domains
from certrenew.config.dns import DnsSettings
from certrenew.errors import CertrenewError, OverBudget, Refused, StoreUnreachable, UsageError, causes
from certrenew.pki.domains import check_normalized
from certrenew.renewal import hooks
from certrenew.renewal.policy import Action, Decision, ari_check_due, backoff, decide, renew_at, utc_now
from certrenew.renewal.progress import Progress
from certrenew.state.backend import Busy, Fenced, Lease
from certrenew.state.schedule import Schedule
from certrenew.state.store import CertificateRecord, Store, open_store
from certrenew.system import owned
from certrenew.system.atomicfile import remove_stale_temps
from certrenew.system.runcontext import RunContext
from certrenew.version import __version__

if TYPE_CHECKING:
    from certrenew.challenge.dns01 import Dns01Solver
    from certrenew.challenge.responder import Responder
    from certrenew.challenge.stateless import StatelessSolver
    from certrenew.renewal.deploy import Deployer, Installed, Issued

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What a run did for one certificate."""

    name: str
    action: Action
    detail: str
    served: hooks.Served | None = None
    """What HAProxy now serves, for an issued, renewed or installed certificate."""
    held_elsewhere: bool = False
    """Another process held its lock past --lock-timeout: that holder records what it does, so
    looking again before its lease could end would only wait on the lock again."""

    @property
    def failed(self) -> bool:
        return self.action in (Action.FAILED, Action.DEFERRED)


@dataclass(frozen=True)
class Report:
    """What a run did: one outcome per certificate (iterating the report gives them), and a
    line for each hook that failed.

    A failed hook fails the run but not a certificate: what HAProxy serves stays
    installed and recorded, with no back-off.
    """

    outcomes: list[Outcome]
    hook_failures: list[str] = field(default_factory=list)

    def __iter__(self):
        return iter(self.outcomes)

    def __len__(self) -> int:
        return len(self.outcomes)

    @property
    def failed(self) -> bool:
        return bool(self.hook_failures) or any(outcome.failed for outcome in self.outcomes)

    def summary(self) -> str:
        """E.g. "3 certificates: 1 renewed, 2 unchanged; 1 hook failed"."""
        counts = [(sum(outcome.action == action for outcome in self.outcomes), action) for action in Action]
        total = len(self.outcomes)
        line = f"{total} certificate{'s' if total != 1 else ''}: " + ", ".join(f"{n} {a}" for n, a in counts if n)
        failures = len(self.hook_failures)
        return line + (f"; {failures} hook{'s' if failures > 1 else ''} failed" if failures else "")


def run(settings: Settings, specs: list[CertificateSpec], store: Store | None = None, telemetry=None,
        progress: Progress | None = None, responder: "Responder | None" = None, others: Sequence[str] = (),
        context: RunContext | None = None, certificate_wait: float | None = None,
        installing: AbstractContextManager[object] | None = None) -> Report:
    """Bring every certificate in `specs` up to date and report what happened to each.
    `others`: the config's certificates not in `specs` (revoke --reissue runs one), which shadow none of them.

    Certificates are independent: one failing does not stop the others, and up to
    `settings.concurrency` are ordered at once. State lives in `store`, by default the one
    the settings name (see `open_store`). Each certificate due is worked on under its own
    lock, waited for up to `certificate_wait` (default `settings.lock_timeout`) and held until it is installed: other runs
    (a daemon, a run by hand, another node) work on other certificates meanwhile, and one that
    comes second to a certificate finds it done. A `metrics.Telemetry` counts the
    ACME requests; `progress` shows the orders as they finish (plain log lines by
    default). A hook whose program is missing, or a certificate whose name is not a
    plain file name, whose domains are not normalized or that its challenge type cannot
    validate (a wildcard over HTTP-01), is refused (UsageError)
    before anything is touched. HTTP-01 is answered by `responder` when given (the
    daemon's, open for its whole life; left open), else by one this run opens when it
    orders and closes. `context` cancels the run (see `RunContext`): each run its own, so a host
    may stop one run and let another go on. `installing` is held around each install (see `Deployer`).
    """
    for spec in specs:
        if spec.checked:  # certificate_specs made it: a config of 10,000 would be checked twice
            continue
        check_certificate_name(spec.name)  # it becomes <ssl dir>/<name>.pem: "../x" would escape it
        try:
            check_normalized(spec.domains)
            check_domains(spec.challenge, spec.domains)  # a wildcard over HTTP-01 would only fail at the CA
        except UsageError as error:
            raise UsageError(f"{spec.name}: {error}") from error
    check_hooks(settings.hooks)
    _check_ssl_dir(settings.haproxy.ssl_dir)  # before the lock: a mistyped --ssl-dir leaves no state dir behind
    context = context or RunContext()
    store = store if store is not None else open_store(settings, context)
    with store.run_lock(settings.lock_timeout):
        return _run(settings, specs, store, telemetry, progress or Progress(), responder, others, context,
                    settings.lock_timeout if certificate_wait is None else certificate_wait, installing)


def check_hooks(settings: HookSettings) -> None:
    """Refuse (UsageError) a hook whose program is missing, before anything is touched."""
    for role, command in (("pre-hook", settings.pre_hook), ("deploy hook", settings.deploy_hook),
                          ("post-hook", settings.post_hook)):
        hooks.check_executable(role, command)


def _run(settings: Settings, specs: list[CertificateSpec], store: Store, telemetry, progress: Progress,
         responder: "Responder | None", others: Sequence[str], context: RunContext, certificate_wait: float,
         installing: AbstractContextManager[object] | None) -> Report:
    now = utc_now()
    remove_stale_temps(settings.haproxy.ssl_dir)

    outcomes: dict[str, Outcome] = {}
    work = []
    schedule = None if settings.force else store.schedule(_schedule_settings(settings))
    for spec in specs:
        try:
            step = _step(settings, store, spec, now, quiet=True, schedule=schedule)  # again under its lock, if due
        except Exception as error:  # an unreadable record, or a fault nobody foresaw, fails its certificate alone
            outcomes[spec.name] = Outcome(spec.name, Action.FAILED, str(_expected(error)))
            continue
        if isinstance(step, Outcome):
            outcomes[spec.name] = step
        else:
            work.append((spec, step))
    if schedule is not None:
        schedule.save(now.timestamp())

    hook_failures = []
    if work:
        from certrenew.system.requirements import check_acme_stack  # importlib.metadata: not for a no-op

        check_acme_stack()  # one clear line for an old acme, not an AttributeError mid-order
        _check_reload_command(settings.haproxy)
        from certrenew.renewal import preflight

        preflight.require(preflight.socket_checks(settings.haproxy))  # before the CA issues what could not be installed
        do_work = functools.partial(_work, settings, store, now, work, outcomes, telemetry, progress, responder,
                                    [*others, *(spec.name for spec in specs)], context, certificate_wait, installing)
        if any(step is not Step.CHECK for _, step in work):
            hook_failures = _with_hooks(settings.hooks, work, outcomes, do_work, context)
        else:  # renewal-info checks only: no pre- or post-hook (a check that renews still runs the deploy hook)
            hook_failures = do_work()
    return Report([outcomes[spec.name] for spec in specs], hook_failures)


class Step(str, Enum):
    """What a run does for a certificate it has work for: the `Issuer` method of that name."""

    RESUME = "resume"
    ISSUE = "issue"
    CHECK = "check"


def _step(settings: Settings, store: Store, spec: CertificateSpec, now: datetime.datetime,
          quiet: bool = False, schedule: Schedule | None = None) -> Step | Outcome:
    """What this run does for `spec`: an Issuer step, or the Outcome of doing nothing. `quiet`: a first
    look, without the certificate's lock, that says nothing. `schedule`: what the last run found not
    due, taken where it still holds, and kept for the next."""
    token = schedule.token(spec.name) if schedule is not None else None  # before anything of it is read
    if token is not None:
        assert schedule is not None
        inputs = " ".join((spec.key_type, *spec.domains))  # no name holds a space
        said = schedule.unchanged(spec.name, token, inputs, now.timestamp())
        if said is not None:
            return Outcome(spec.name, Action.UNCHANGED, said)
        schedule.forget(spec.name)
    if store.unfinished(spec.name):
        if not quiet:
            log.info("%s: completing what a previous run left", spec.name, extra={"certificate": spec.name})
        return Step.RESUME
    record = store.load_record(spec.name)
    if record is not None and record.failed_settings not in (None, spec.order_settings(settings.acme.directory_url)):
        record.next_attempt = None  # other settings are a new attempt, not a retry to hold back
    decision = decide(record, list(spec.domains), spec.key_type, now, settings.force, settings.renew_before,
                      settings.acme.directory_urls)
    if decision.due:
        if quiet:
            pass
        elif record is None or record.not_after is None:  # "renewing (no certificate yet)" reads as a bug
            log.info("%s: issuing", spec.name, extra={"certificate": spec.name})
        else:
            log.info("%s: renewing (%s)", spec.name, decision.reason, extra={"certificate": spec.name})
        return Step.ISSUE
    if decision.deferred:
        return Outcome(spec.name, Action.DEFERRED, decision.reason)
    if ari_check_due(record, now):
        return Step.CHECK
    if token is not None:
        assert schedule is not None and record is not None and record.not_after is not None  # else it is due
        until = min(filter(None, (renew_at(record, settings.renew_before), record.ari_next_check)))
        schedule.keep(spec.name, token, inputs, until.timestamp(), decision.reason)
    return Outcome(spec.name, Action.UNCHANGED, decision.reason)


def _schedule_settings(settings: Settings) -> list:
    """What a decision is made of besides the record and the certificate's names and key type (see `decide`),
    and this certrenew's version: an upgrade may decide otherwise (a renewal rule changed)."""
    renew_before = settings.renew_before
    directories = settings.acme.directory_urls
    return [__version__, None if renew_before is None else renew_before.total_seconds(),
            None if directories is None else list(directories)]


def _with_hooks(settings: HookSettings, work: list, outcomes: dict[str, Outcome],
                do_work: Callable[[], list[str]], context: RunContext) -> list[str]:
    """The pre-hook, then the work (only if the pre-hook succeeded), then the post-hook whatever happened.

    The post-hook runs even after a failed pre-hook, as it undoes what a pre-hook
    began (a service stopped, say); only a run stopped by a signal skips it.
    Returns the lines of the hooks that failed.
    """
    failure = hooks.run_hook("pre-hook", settings.pre_hook, settings.hook_timeout)
    failures = [failure] if failure else []
    try:
        if failure:
            outcomes.update((spec.name, Outcome(spec.name, Action.FAILED, "not attempted: the pre-hook failed"))
                            for spec, _ in work)
        else:
            failures += do_work()
    finally:
        if not context.cancelled:
            failures += filter(None, [hooks.run_hook("post-hook", settings.post_hook, settings.hook_timeout)])
    return failures


def _work(settings: Settings, store: Store, now: datetime.datetime, work: list, outcomes: dict[str, Outcome],
          telemetry, progress: Progress, responder: "Responder | None", managed: list[str],
          context: RunContext, certificate_wait: float, installing: AbstractContextManager[object] | None) -> list[str]:
    """Order what is due, deploy it all at once, then run the deploy hook for each certificate HAProxy serves.
    `managed`: every certificate of the run, due or not (their bundles shadow none of these)."""
    from certrenew.challenge.responder import Responder
    from certrenew.renewal import preflight
    from certrenew.renewal.deploy import Deployer
    from certrenew.renewal.issue import Issuer  # the ACME stack, only when there is work

    # A run's own responder opens its port at the first order that needs it and closes it with the
    # run; a DNS-01 solver withdraws on exit what an order cut short by a signal left published.
    with ExitStack() as solvers_open:
        http01: Responder | StatelessSolver
        if settings.responder.http_01_mode == STATELESS:  # the HAProxy nodes answer: no responder
            http01 = preflight.stateless_solver(settings, store)
        else:
            http01 = responder if responder is not None else solvers_open.enter_context(
                Responder(settings.responder.listen, store))
        solvers: dict[Hashable, ChallengeSolver] = {HTTP_01: http01}
        for dns in {spec.dns for spec, _ in work if spec.dns}:
            solvers[dns] = solvers_open.enter_context(dns01_solver(dns, context))
        if any(spec.challenge == TLS_ALPN_01 for spec, _ in work):
            from certrenew.challenge.tlsalpn01 import (
                TlsAlpnResponder,  # and acme learns the challenge type, before any order
            )

            solvers[TLS_ALPN_01] = solvers_open.enter_context(TlsAlpnResponder(settings.responder.tls_alpn_listen))
        probed = preflight.probe_ahead(http01, settings.responder, [spec for spec, step in work if step is Step.ISSUE])
        deployer = Deployer(settings.haproxy, store, settings.acme.directory_url, managed, settings.concurrency,
                            context, installing)
        issuer = Issuer(settings.acme, store, solvers, telemetry,
                        before_order=functools.partial(preflight.check_path, solvers, settings.responder, probed),
                        check_place=deployer.check_place, force=settings.force, renew_before=settings.renew_before,
                        context=context, lock_timeout=settings.lock_timeout)
        solvers_open.callback(issuer.deadline.close)  # or a daemon's every run leaves its watchdog asleep
        steps = {Step.RESUME: issuer.resume, Step.ISSUE: issuer.issue, Step.CHECK: issuer.check}
        pool = ThreadPoolExecutor(settings.concurrency)
        progress.start(len(work))
        held: dict[str, tuple[ExitStack, Lease]] = {}
        """The certificates issued whose lock this run holds until they are installed."""

        def let_go() -> None:  # once installed, or when the run ends however it ends
            for locked, _ in list(held.values()):
                locked.close()
        solvers_open.callback(let_go)
        # First without waiting for a lock another process holds: such a certificate is waited for
        # afterwards, when this run holds no lock (a run that waits while holding one can wait on a run
        # that waits on it), unless the caller waits for none (a daemon on a shared store).
        deferred: list[CertificateSpec] = []
        later = deferred if certificate_wait else None
        solvers_open.callback(progress.close)
        try:
            results = list(pool.map(lambda item: _attempt_locked(settings, store, now, item[0], steps, progress, held,
                                                                   0, later),
                                    work))
        finally:
            # After a signal, workers blocked on the CA are not waited for (see signals).
            pool.shutdown(wait=not context.cancelled, cancel_futures=True)
        issued = [result for result in results if result is not None and not isinstance(result, Outcome)]
        outcomes.update((result.name, result) for result in results if isinstance(result, Outcome))
        installed = _install(store, now, deployer, _still_held(issued, held, outcomes))
        for spec in deferred:  # one at a time, each installed before the next is waited for
            let_go()
            held.clear()
            result = _attempt_locked(settings, store, now, spec, steps, progress, held, certificate_wait, None)
            if isinstance(result, Outcome):
                outcomes[spec.name] = result
            else:
                installed.update(_install(store, now, deployer, _still_held([result], held, outcomes)))
    outcomes.update(installed)
    served = [outcome.served for outcome in installed.values() if outcome.served]
    return hooks.run_deploy(settings.hooks.deploy_hook, served, settings.hooks.hook_timeout)


def dns01_solver(dns: DnsSettings, context: RunContext | None = None) -> "Dns01Solver":
    """A DNS-01 solver publishing by RFC 2136 with the TSIG key, or through the hook; `context` cancels its waits.
    Imported here: a run of HTTP-01 certificates loads none of DNS-01."""
    from certrenew.challenge.dns01 import Dns01Solver
    from certrenew.challenge.dnshook import DnsHook
    from certrenew.challenge.rfc2136 import Rfc2136Publisher

    if dns.hook:
        publisher: DnsHook | Rfc2136Publisher = DnsHook(dns.hook)
    else:
        assert dns.server is not None and dns.tsig_key is not None  # checked by dns_settings
        publisher = Rfc2136Publisher(dns.server, dns.tsig_key)
    return Dns01Solver(publisher, dns.server, dns.zone, dns.propagation_timeout, context)


def _attempt_locked(settings: Settings, store: Store, now: datetime.datetime, spec: CertificateSpec,
                    steps: Mapping[Step, Callable[[CertificateSpec], Any]], progress: Progress,
                    held: "dict[str, tuple[ExitStack, Lease]]", wait: float,
                    deferred: "list[CertificateSpec] | None" = None):
    """`_attempt` under the certificate's lock, deciding its step again once the lock is held:
    another process may have done it meanwhile. A certificate issued keeps its lock in `held`
    until it is installed; any other lets go at once. One whose lock another process holds goes
    to `deferred` (None returned), if given, to be waited for later."""
    locked = ExitStack()
    try:
        lease = locked.enter_context(store.certificate(spec.name, wait))
    except Busy as busy:  # someone else works on it: theirs to record; this run's failure only if it waited for it
        if deferred is not None:
            deferred.append(spec)
            return None
        result: Any = Outcome(spec.name, Action.FAILED, f"{busy} (--lock-timeout)", held_elsewhere=True) if wait else \
            Outcome(spec.name, Action.UNCHANGED, f"another process works on it: {busy}", held_elsewhere=True)
        progress.advance(spec.name, result.action)
        return result
    try:
        step = _step(settings, store, spec, now)
    except Exception as error:
        step = Outcome(spec.name, Action.FAILED, str(_expected(error)))
    if isinstance(step, Outcome):
        result = step
        progress.advance(spec.name, result.action)
    else:
        result = _attempt(store, now, spec, settings.acme.directory_url, steps[step], progress)
    if isinstance(result, Outcome):
        locked.close()
    else:
        held[spec.name] = (locked, lease)
    return result


def _attempt(store: Store, now: datetime.datetime, spec: CertificateSpec, directory: str,
             step: Callable[[CertificateSpec], Any], progress: Progress):
    """Run one certificate's step; a failure, even one nobody foresaw, is recorded and reported
    as an Outcome, not raised: it must not stop the other certificates."""
    try:
        result = step(spec)
    except Exception as error:
        for cause in causes(error):  # -v: what the one line of the outcome summarizes
            log.debug("%s: caused by %s: %s", spec.name, type(cause).__name__, cause, extra={"certificate": spec.name})
        result = _failed(store, now, spec, directory, _expected(error))
    if isinstance(result, Decision):  # checked with the CA: still not due
        result = Outcome(spec.name, Action.UNCHANGED, result.reason)
    progress.advance(spec.name, result.action if isinstance(result, Outcome) else "ordered")
    return result


def _still_held(issued: "list[Issued]", held: "dict[str, tuple[ExitStack, Lease]]",
                outcomes: dict[str, Outcome]) -> "list[Issued]":
    """The certificates issued whose lock this run still holds: one taken over meanwhile (this run
    was paused past its lease) is its successor's, and installing it now would undo what it did."""
    kept = []
    for item in issued:
        try:
            held[item.spec.name][1].check()
        except Fenced as fenced:
            log.error("%s: not installed: %s", item.spec.name, fenced, extra={"certificate": item.spec.name})
            outcomes[item.spec.name] = Outcome(item.spec.name, Action.FAILED, f"not installed: {fenced}")
        else:
            kept.append(item)
    return kept


def _install(store: Store, now: datetime.datetime, deployer: "Deployer", issued: "list[Issued]") -> dict[str, Outcome]:
    """Install the batch, all or none; but a bundle HAProxy refuses must not fail the others for ever.

    The refused ones are set aside (see `_refused`; their failure recorded) and the rest
    tried again at once without them; each round takes one out at least, so this ends.
    Any other failure fails the whole batch, whose pending certificates stay for the next
    run. Once the batch is served, each certificate has its own outcome (see `_installed`).
    """
    outcomes: dict[str, Outcome] = {}
    directory = deployer.directory
    while issued:
        try:
            outcomes.update((item.issued.spec.name, _installed(store, now, directory, item))
                            for item in deployer.deploy(issued))
            break
        except Refused as refused:
            bad = [item for item in issued if item.spec.name in refused.which]
            if not bad:
                outcomes.update((item.spec.name, _failed(store, now, item.spec, directory, refused))
                                for item in issued)
                break
            outcomes.update((item.spec.name, _refused(store, now, item.spec, directory, refused)) for item in bad)
            issued = [item for item in issued if item not in bad]
        except Exception as error:
            outcomes.update((item.spec.name, _failed(store, now, item.spec, directory, _expected(error)))
                            for item in issued)
            break
    return outcomes


def _refused(store: Store, now: datetime.datetime, spec: CertificateSpec, directory: str, refused: Refused) -> Outcome:
    """A bundle HAProxy refused is set aside, so that the next runs order anew rather than retry it for
    ever; one not at fault (its place in the ssl dir blocked, another bundle served instead) stays
    pending for the run after the operator's fix. Each says its own reason, not the batch's."""
    reason = refused.reason(spec.name)
    error: CertrenewError
    if not refused.set_aside:
        error = type(refused)(f"{reason}; the new certificate stays pending for the run after", refused.which)
    else:
        try:
            where = store.set_aside(spec.name, "pending")
        except Exception as unmovable:  # this certificate's failure too: it stays pending, the others go on
            error = CertrenewError(f"{reason}; and it could not be set aside: {_expected(unmovable)}")
        else:
            error = CertrenewError(f"{reason}; the refused certificate is set aside as {where}")
    return _failed(store, now, spec, directory, error)


def _expected(error: Exception) -> CertrenewError:
    """A failure as one line; an unforeseen one names its type, and its traceback is logged at -v.

    A store no node can reach is no failure of the certificate at hand: raised on, it ends the run as a
    whole, with nothing recorded against any certificate (no back-off), and the daemon waits for the store."""
    if isinstance(error, StoreUnreachable):
        raise error
    if isinstance(error, CertrenewError):
        return error
    log.debug("unexpected error", exc_info=error)
    return CertrenewError(f"unexpected {type(error).__name__}: {error} (run with -v for the traceback)")


def _installed(store: Store, now: datetime.datetime, directory: str, item: "Installed") -> Outcome:
    """What HAProxy serves now; a failure if it could not be recorded as current (no deploy hook until it is)."""
    info, result, spec = item.info, item.result, item.issued.spec
    how = f"served by {result.method}" if result.confirmed else f"{result.method} not confirmed"
    detail = (f"serial {info.serial}, expires {info.not_after:%Y-%m-%d %H:%M} UTC, "
              f"written to {result.path}, {how}" + (f" ({result.detail})" if result.detail else ""))
    if item.unrecorded is not None:
        error = CertrenewError(f"{_expected(item.unrecorded)}; HAProxy serves it ({detail}), but it is not "
                               "recorded as current: the next run records it")
        return _failed(store, now, spec, directory, error)
    served = hooks.Served(spec.name, item.issued.action, info.domains, result.path, info.serial, info.not_after)
    return Outcome(spec.name, item.issued.action, detail, served)


def _failed(store: Store, now: datetime.datetime, spec: CertificateSpec, directory: str,
            error: CertrenewError) -> Outcome:
    """Record a failure with its back-off, so the next runs wait before asking the CA again.

    A mistake on our side (`error.backoff` false) is recorded without one: the run after the fix goes ahead.
    An order refused by the budget waits until the budget frees.
    """
    try:
        record = store.load_record(spec.name) or CertificateRecord(spec.name, list(spec.domains), spec.key_type)
    except CertrenewError as unreadable:  # reported, and left for the operator to look at
        return Outcome(spec.name, Action.FAILED, f"{error}; and {_expected(unreadable)}")
    record.last_attempt, record.last_error, record.failures = now, str(error), record.failures + 1
    record.next_attempt = (error.until if isinstance(error, OverBudget)
                           else now + backoff(record.failures, _lifetime(record)) if error.backoff else None)
    record.failed_settings = spec.order_settings(directory)
    try:
        store.save_record(record)
    except CertrenewError as unwritable:
        _expected(unwritable)  # (raises a store no node reaches: the run's condition, not this certificate's)
        if isinstance(unwritable, Fenced):  # a late writer: what its successor recorded stands
            log.error("%s: %s; not recorded: %s", spec.name, error, unwritable, extra={"certificate": spec.name})
        return Outcome(spec.name, Action.FAILED, f"{error}; and {unwritable}")
    return Outcome(spec.name, Action.FAILED, str(error))


def _lifetime(record: CertificateRecord) -> datetime.timedelta | None:
    """The current certificate's lifetime, which bounds its back-off (see `backoff`); None before the first."""
    return record.not_after - record.not_before if record.not_after and record.not_before else None


def _check_ssl_dir(ssl_dir: Path) -> None:
    if not ssl_dir.is_dir():
        raise UsageError(f"the ssl dir {ssl_dir} does not exist: create it with `certrenew bootstrap-ssl-dir "
                         f"--ssl-dir {ssl_dir}` (HAProxy needs a placeholder in it to start), or set --ssl-dir")
    if not os.access(ssl_dir, os.W_OK):
        raise CertrenewError(f"the ssl dir {ssl_dir} is {owned.not_writable(ssl_dir)}")


def _check_reload_command(settings: HaproxySettings) -> None:
    """Before ordering: a certificate that cannot be installed is not worth asking the CA for.

    Without a Runtime API socket the reload is the only way in, so a missing program is
    an error. With sockets it is only the fallback (a certificate HAProxy does not know
    yet, a socket that fails), so it is a warning and hot updates go on.
    """
    from certrenew.haproxy.service import reload_problem

    problem = reload_problem(settings.reload_command)
    if problem and not settings.haproxy_socket:
        raise UsageError(f"{problem} (set --reload-command)")
    if problem:
        log.warning("%s: only hot updates over the Runtime API can install certificates", problem)
