"""Pre-flight checks: prove what an order will need before the CA is asked for anything.

A CA allows a few failed validations per name per hour, and most first-run failures are
a HAProxy ACL or backend address that does not reach the responder. So before ordering,
the run serves a random probe token and fetches it as the CA would (resolve the name,
port 80, `Host: NAME`, no redirect followed): an answer that is not the probe fails the
certificate without an order, naming what was seen and what to check. A check that
cannot conclude from this host (the name does not resolve here, nothing answers) only
warns: the CA's view of the name may differ from ours.

The HAProxy side of installing (the admin socket, the reload command) is checked before
ordering too, since an issued certificate that cannot be installed still costs an order.
`certrenew check` runs all of these, and more, without ordering.
"""

import http.client
import logging
import os
import secrets
import socket
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from certrenew.challenge.responder import CHALLENGE_PREFIX, Answer, Responder, ask
from certrenew.challenge.stateless import StatelessSolver
from certrenew.config import AcmeSettings, CertificateSpec, HaproxySettings, ResponderSettings, Settings
from certrenew.config.challenges import HTTP_01, STATELESS, TLS_ALPN_01
from certrenew.errors import CertrenewError, ConfigurationError, UsageError
from certrenew.haproxy import service
from certrenew.haproxy.crtlist import CrtList
from certrenew.haproxy.install import shadowed
from certrenew.haproxy.runtime_api import Forbidden, RuntimeApi, RuntimeApiError, Unsupported, find_crt_list
from certrenew.state.store import Store, open_store
from certrenew.system import hints, owned
from certrenew.system.hostport import split_host_port
from certrenew.system.listen import check_socket_dir, create_hint, flood_risk, parse_listen, takeover_risk
from certrenew.system.strenum import StrEnum

if TYPE_CHECKING:
    from certrenew.challenge.tlsalpn01 import TlsAlpnResponder

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0
"""Seconds to connect, and then to get an answer: the CA waits about as long."""
MAX_PROBES = 8
"""Names probed at once."""


class Verdict(StrEnum):
    """A check's verdict: FAIL is shouted, as an order would fail or be wasted."""

    OK = "ok"
    FAIL = "FAIL"
    WARN = "warn"
    """Cannot tell, or only sometimes needed."""


OK, FAIL, WARN = Verdict.OK, Verdict.FAIL, Verdict.WARN


@dataclass(frozen=True)
class Check:
    """One pre-flight check's verdict, printed as one line by `certrenew check`."""

    status: Verdict
    what: str
    detail: str

    def __str__(self) -> str:
        return f"{self.status:<4} {self.what}: {self.detail}"


def require(checks: Iterable[Check], ok_level: int = logging.DEBUG) -> None:
    """Log the checks (those that passed at `ok_level`); raise one ConfigurationError (no back-off)
    naming every failure."""
    failed = []
    for check in checks:
        if check.status == OK:
            log.log(ok_level, "%s: %s", check.what, check.detail)
        elif check.status == WARN:
            log.warning("%s: %s", check.what, check.detail)
        elif check.status == FAIL:
            failed.append(check.detail if check.what.startswith("http://") else f"{check.what}: {check.detail}")
    if failed:
        raise ConfigurationError("; ".join(failed))


# The path from the CA to the responder.

def probe_ahead(responder: Responder | StatelessSolver, settings: ResponderSettings,
                specs: Iterable[CertificateSpec]) -> dict[str, Check]:
    """Probe every HTTP-01 name of the orders a run is about to make, all at once, before the first order.

    Probed inside each order, a probe waited on the threads busy with other orders: the
    responder's thread and the probing one each wait for the GIL at every step of the round trip
    (up to `sys.getswitchinterval()`, 5 ms, each time), so a probe that takes under a millisecond
    alone took about 0.1 s in a busy batch, and its order's worker waited. Here they run while the
    process has nothing else to do. The verdicts are for `check_path`. Empty when the responder
    cannot listen: each order then meets that error, and reports it, itself.
    """
    if not settings.self_check:
        return {}
    names = list(dict.fromkeys(name for spec in specs if spec.challenge == HTTP_01 for name in spec.domains))
    try:
        return dict(zip(names, probe_all(responder, settings, names)))
    except CertrenewError:
        return {}


def check_path(solvers: Mapping[Hashable, Any], settings: ResponderSettings, probed: Mapping[str, Check],
               spec: CertificateSpec) -> None:
    """Before ordering `spec`: every name must reach its responder through HAProxy, or no order is made.
    An HTTP-01 name `probe_ahead` probed is not probed again; any other (a TLS-ALPN-01 name, an order a
    renewal-info check or a resumed one turned into) is probed now."""
    probe_one = PROBES.get(spec.challenge)
    if not settings.self_check or probe_one is None:
        return
    known = probed if spec.challenge == HTTP_01 else {}
    unprobed = [name for name in spec.domains if name not in known]
    fresh = dict(zip(unprobed, probe_all(solvers[spec.challenge], settings, unprobed, probe_one)))
    require([known.get(name) or fresh[name] for name in spec.domains], logging.INFO)


def probe_all(responder: Any, settings: ResponderSettings, names: Sequence[str],
              probe_one: Callable[[Any, ResponderSettings, str], Check] | None = None) -> list[Check]:
    """`probe` every name, a few at once: a name that does not answer costs its timeout only once.

    A single name is probed in this thread: a pool's thread start and join cost more
    than the probe. Those not started yet are dropped when a signal ends the run.
    """
    probe_one = probe_one or probe
    if len(names) <= 1:
        return [probe_one(responder, settings, name) for name in names]
    pool = ThreadPoolExecutor(min(len(names), MAX_PROBES))
    try:
        return list(pool.map(lambda name: probe_one(responder, settings, name), names))
    finally:
        pool.shutdown(cancel_futures=True)


def probe(responder: Responder | StatelessSolver, settings: ResponderSettings, name: str) -> Check:
    """Serve a random token on `responder` and fetch it from http://NAME/ the way the CA would: at NAME:80 (or
    --self-check-address), or, on a fleet, at each node of --http-01-node, whose responder answers it from the
    store (it is published there): the CA validates at whichever node the name resolves to."""
    if isinstance(responder, StatelessSolver):
        return probe_stateless(responder, settings, name)
    token, value = secrets.token_urlsafe(32), f"certrenew-probe.{secrets.token_urlsafe(24)}"
    responder.present(name, token, value)
    try:
        checks = [_fetch(settings, name, token, value, node)
                  for node in settings.http_01_node or [settings.self_check_address]]
    finally:
        responder.cleanup(name, token)
    return next((check for check in checks if check.status != OK), checks[0])


def _fetch(settings: ResponderSettings, name: str, token: str, value: str, node: str | None) -> Check:
    """Fetch `token` from http://NAME/ at `node` (None: NAME:80) and expect `value`, certrenew's answer."""
    authority = f"[{name}]" if ":" in name else name  # an IPv6 address, in a URL and a Host header
    url = f"http://{authority}{CHALLENGE_PREFIX}{token}"
    host, port = split_host_port(node) if node else (name, 80)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    option = "--http-01-node" if settings.http_01_node else "--self-check-address"
    try:
        answer = ask(host, port, authority, token, PROBE_TIMEOUT)
    except OSError as error:
        return (_not_reached(error, name, url, where, option) or
                Check(WARN, url, f"cannot connect to {where} from this host ({error.strerror or error}); not checked"))
    except http.client.HTTPException as error:
        return Check(FAIL, url, f"{url} answered something that is not HTTP ({type(error).__name__}) at {where}: "
                                "is HAProxy's http frontend on port 80?")
    if answer.status == 200 and answer.body == value.encode():
        return Check(OK, url, f"reached certrenew's responder through {where}")
    if node and settings.http_01_node:
        return Check(FAIL, url, f"{url} answered {_seen(answer)} at HAProxy node {where}, not a certrenew daemon's "
                                f"responder answering from the store: {hints.ROUTE}")
    return Check(FAIL, url, f"{url} answered {_seen(answer)}, not certrenew's responder on {settings.listen}: "
                            f"{hints.ROUTE}")


def _seen(answer: Answer) -> str:
    """What answered a probe instead: status, redirect, server."""
    seen = f"{answer.status} {answer.reason}".strip()
    if answer.location:
        seen += f" redirecting to {answer.location}"
    if answer.server:
        seen += f" from {answer.server}"
    elif answer.body.startswith(b"<html><body><h1>"):  # HAProxy's own error pages
        seen += " from HAProxy"
    if answer.status == 200:
        seen += " with another body"
    return seen


def probe_stateless(solver: StatelessSolver, settings: ResponderSettings, name: str) -> Check:
    """Probe every node that answers the CA for NAME statelessly (those of --http-01-node; else NAME:80 or
    --self-check-address, as `probe` does): one that does not give this account's key authorization fails."""
    checks = [probe_node(solver, name, node or settings.self_check_address)
              for node in settings.http_01_node or [None]]
    return next((check for check in checks if check.status != OK), checks[0])


def probe_node(solver: StatelessSolver, name: str, node: str | None) -> Check:
    """Fetch a random token from http://NAME/ at `node` (None: NAME:80) the way the CA would, and expect
    TOKEN.THUMBPRINT of the account, as a node with `certrenew haproxy-config`'s lines gives it."""
    host, port = split_host_port(node) if node else (name, 80)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    what = f"HAProxy node {where}"
    if solver.thumbprint is None:
        return Check(FAIL, what, solver.fix)
    token = secrets.token_urlsafe(32)
    authority = f"[{name}]" if ":" in name else name
    url = f"http://{authority}{CHALLENGE_PREFIX}{token}"
    try:
        answer = ask(host, port, authority, token, PROBE_TIMEOUT)
    except (OSError, http.client.HTTPException) as error:
        if node is None and isinstance(error, OSError):
            return _not_reached(error, name, url, where, "--http-01-node") or Check(WARN, url, str(error))
        return Check(FAIL, what, f"{url} got no HTTP answer ({error}): is it an HAProxy node's port 80?")
    if answer.status != 200 or answer.body != f"{token}.{solver.thumbprint}".encode():
        return Check(FAIL, what, f"{url} answered {_seen(answer)}, not this account's key authorization: put the "
                                 "lines `certrenew haproxy-config` prints in its port-80 frontend, and reload it")
    try:  # a path that is no token: echoed, anyone could make the node say anything under the CA's prefix
        echoed = f"{token}.not-a-token".encode() in ask(host, port, authority, f"{token}.not-a-token",
                                                        PROBE_TIMEOUT).body
    except (OSError, http.client.HTTPException):
        echoed = False  # it answered a moment ago: a second answer lost proves nothing either way
    if echoed:
        return Check(FAIL, what, f"echoes any path under {CHALLENGE_PREFIX}, not only a token: keep the acme-token "
                                 "line of `certrenew haproxy-config` (its regex) in its port-80 frontend")
    return Check(OK, what, f"answers {HTTP_01} for this account by itself ({url})")


def probe_tls(responder: "TlsAlpnResponder", settings: ResponderSettings, name: str) -> Check:
    """Serve a challenge certificate for a random key authorization on `responder` and shake hands
    with NAME:443 for it the way the CA would (SNI NAME, ALPN acme-tls/1)."""
    import ssl  # with the responder, only for a TLS-ALPN-01 certificate

    from certrenew.challenge.tlsalpn01 import fetch_certificate, proves

    token, value = secrets.token_urlsafe(32), f"certrenew-probe.{secrets.token_urlsafe(24)}"
    host, port = split_host_port(settings.self_check_tls_address) if settings.self_check_tls_address else (name, 443)
    what, where = f"tls-alpn-01 {name}", f"{host}:{port}"
    route = f"not certrenew's TLS-ALPN-01 responder on {settings.tls_alpn_listen}: {hints.TLS_ROUTE}"
    responder.present(name, token, value)
    try:
        cert = fetch_certificate(host, port, name, PROBE_TIMEOUT)
    except ssl.SSLError as error:
        return Check(FAIL, what, f"the handshake with {where} for ALPN acme-tls/1 failed ({error.reason}): {route}")
    except OSError as error:
        return (_not_reached(error, name, what, where, "--self-check-tls-address") or
                Check(FAIL, what, f"{where} closed the handshake for ALPN acme-tls/1 "
                                  f"({error.strerror or type(error).__name__}): {route}"))
    finally:
        responder.cleanup(name, token)
    if cert is None:
        return Check(FAIL, what, f"{where} did not choose ALPN acme-tls/1 (a TLS frontend of HAProxy?): {route}")
    if not proves(cert, name, value):
        return Check(FAIL, what, f"{where} answered with a certificate for {cert.subject.rfc4514_string()}: {route}")
    return Check(OK, what, f"reached certrenew's TLS-ALPN-01 responder through {where}")


def _not_reached(error: OSError, name: str, what: str, where: str, option: str) -> Check | None:
    """The warning for a probe that could not reach `where` from this host, where the CA's view may
    differ (split horizon, a firewall): nothing is proven either way, so the order goes ahead."""
    if isinstance(error, socket.gaierror):
        return Check(WARN, what, f"{name} does not resolve from this host ({error.strerror}); not checked, "
                                 "the CA's view may differ")
    if isinstance(error, ConnectionRefusedError):
        return Check(WARN, what, f"{where} refused the connection from this host; not checked, the CA's view "
                                 f"may differ (or set {option})")
    if isinstance(error, (TimeoutError, socket.timeout)):
        return Check(WARN, what, f"{where} did not answer within {PROBE_TIMEOUT:g} s from this host; not checked")
    return None


PROBES: Mapping[str, Callable[[Any, ResponderSettings, str], Check]] = MappingProxyType({HTTP_01: probe,
                                                                                          TLS_ALPN_01: probe_tls})
"""How the path of each challenge type is probed before ordering; DNS-01's solver checks its own."""


# HAProxy: the admin socket and the reload command, which installing will need.

def socket_checks(settings: HaproxySettings) -> list[Check]:
    """Every Runtime API socket: an install fails on one it cannot use."""
    served_from, kind = (settings.crt_list, "crt-list") if settings.crt_list else (settings.ssl_dir, "crt directory")
    return [socket_check(address, served_from, kind) for address in settings.haproxy_socket]


def haproxy_checks(settings: HaproxySettings) -> list[Check]:
    """Every Runtime API socket, then the reload command: needed when no socket can take a new certificate."""
    checks = socket_checks(settings)
    needed = not checks or any(check.status != OK for check in checks)
    return [*checks, reload_check(settings.reload_command, needed)]


def socket_check(address: str, ssl_dir: Path, kind: str = "crt directory") -> Check:
    """Reachable, at admin level, and loading `ssl_dir` as a crt directory (or the crt-list file: `kind`),
    so new names need no reload."""
    what = f"HAProxy socket {address}"
    node = RuntimeApi(address, timeout=PROBE_TIMEOUT)
    try:
        level = node.command("show cli level").strip()
        if level != "admin":
            return Check(FAIL, what, f"level {level or 'unknown'}, not admin: add 'level admin' to its stats socket line")
        crt_lists = node.crt_lists()
    except Unsupported as error:
        return Check(WARN, what, f"{error}: certificates are installed with the reload command")
    except Forbidden as error:  # its message names the fix
        return Check(FAIL, what, _unprefixed(error, address))
    except RuntimeApiError as error:
        return Check(FAIL, what, f"{_unprefixed(error, address)}; check --haproxy-socket, that HAProxy runs, "
                                 "and that this user may open it")
    directory = os.path.abspath(ssl_dir)
    if find_crt_list(crt_lists, directory) is None:
        return Check(WARN, what, f"loads no {kind} {directory}: a new certificate needs the reload command")
    return Check(OK, what, f"admin level, loads the {kind} {directory}")


def _unprefixed(error: RuntimeApiError, address: str) -> str:
    """The error without the socket it names first: the check's line names it already."""
    text = str(error)
    for prefix in (f"HAProxy Runtime API {address}: ", f"{address}: "):
        text = text.removeprefix(prefix)
    return text


def reload_check(command: str, needed: bool) -> Check:
    """The reload command would run (see `service.reload_problem`); a FAIL only when installing will need it."""
    what = "reload command"
    missing = service.reload_problem(command)
    if missing is None:
        return Check(OK, what, f"{command!r}")
    missing += " (set --reload-command)"
    if needed:
        return Check(FAIL, what, missing)
    return Check(WARN, what, f"{missing}; needed only when the Runtime API cannot take a certificate")


# `certrenew check`: everything above and what a first run needs besides.

def run_checks(settings: Settings, config: Path | None, specs: Sequence[CertificateSpec]) -> list[Check]:
    """Every pre-flight check, without ordering anything: one verdict per line."""
    haproxy, responder_settings, acme = settings.haproxy, settings.responder, settings.acme
    checks = [Check(OK, "config", f"{config}: {len(specs)} certificate(s)") if config else
              Check(WARN, "config", "no config file; checking the command-line and environment settings only"),
              _store_check(settings), _ssl_dir_check(haproxy.ssl_dir),
              *([] if responder_settings.http_01_mode == STATELESS else [_listen_check(responder_settings.listen)]),
              *([] if haproxy.crt_list else _shadow_checks(haproxy.ssl_dir, specs)), *haproxy_checks(haproxy)]
    if haproxy.crt_list:
        checks.append(_crt_list_check(haproxy.crt_list))
    if haproxy.haproxy_config:
        checks.append(_config_check(haproxy.haproxy_config))
    profiles = {spec.profile for spec in specs} | {settings.certificate.profile}
    for ca in acme.cas:  # a fallback CA too: it is wanted when the first fails, not found broken then
        checks.extend(_directory_checks(ca.directory, ca.ca_bundle, sorted(filter(None, profiles))))
    checks.extend(map(_endpoint_check, haproxy.verify_endpoint))
    checks.extend(_eab_check(ca.eab_kid, ca.eab_hmac_key_file) for ca in acme.cas
                  if ca.eab_kid and ca.eab_hmac_key_file)
    if acme.caa_check:
        checks.extend(_caa_checks(acme, open_store(settings), specs))
    names = list(dict.fromkeys(name for spec in specs if spec.challenge == HTTP_01 for name in spec.domains))
    if responder_settings.http_01_mode == STATELESS:
        checks.extend(stateless_checks(settings, open_store(settings), names))
    elif names:
        with Responder(responder_settings.listen, open_store(settings)) as responder:  # the daemon's, if it runs
            try:
                checks.extend(probe_all(responder, responder_settings, names))
            except CertrenewError as error:  # the responder cannot listen
                checks.append(Check(FAIL, "responder", str(error)))
    tls_names = list(dict.fromkeys(name for spec in specs if spec.challenge == TLS_ALPN_01 for name in spec.domains))
    if tls_names:
        from certrenew.challenge.tlsalpn01 import TlsAlpnResponder

        with TlsAlpnResponder(responder_settings.tls_alpn_listen) as tls_responder:
            try:
                checks.extend(probe_all(tls_responder, responder_settings, tls_names, probe_tls))
            except CertrenewError as error:
                checks.append(Check(FAIL, "TLS-ALPN-01 responder", str(error)))
    if not names and not tls_names and not responder_settings.http_01_node:  # all ok would read as "ready to order", and the probe is what most first orders fail on
        checks.append(Check(WARN, "probe", "no HTTP-01 name to probe, so the path from the CA through HAProxy to "
                                           "the responder is not checked: name them (`certrenew check DOMAIN...`) "
                                           "or give --config"))
    return checks


def stateless_solver(settings: Settings, store: Store) -> StatelessSolver:
    """The solver of --http-01-mode stateless, for the account of the first CA in the store."""
    account = store.load_account(settings.acme.directory_url)
    return StatelessSolver(account.key_pem if account else None, settings.acme.directory_url)


def stateless_checks(settings: Settings, store: Store, names: Sequence[str]) -> list[Check]:
    """Each node of --http-01-node, one line each (asked for the first name, or for its own address);
    without nodes, each name at NAME:80 as the run probes it."""
    solver = stateless_solver(settings, store)
    nodes = settings.responder.http_01_node
    if not nodes:
        return probe_all(solver, settings.responder, names)
    return [probe_node(solver, names[0] if names else split_host_port(node)[0], node) for node in nodes]


def _store_check(settings: Settings) -> Check:
    """The state dir, or a shared store (--store etcd://...): that it answers this node's credentials."""
    if not (settings.store or "").startswith("etcd://"):
        return _state_dir_check(Path(settings.store) if settings.store else settings.state_dir)
    what = f"store {settings.store}"
    try:
        open_store(settings)
    except CertrenewError as error:
        return Check(FAIL, what, str(error))
    return Check(OK, what, "answers")


def _state_dir_check(state_dir: Path) -> Check:
    what = f"state dir {state_dir}"
    if state_dir.is_dir():
        return (Check(OK, what, "writable") if os.access(state_dir, os.W_OK | os.X_OK)
                else Check(FAIL, what, "not writable by this user"))
    parent = next((p for p in state_dir.parents if p.exists()), Path("/"))
    if os.access(parent, os.W_OK | os.X_OK):
        return Check(OK, what, f"will be created in {parent}")
    return Check(FAIL, what, f"does not exist, and this user cannot create it in {parent}")


def _listen_check(listen: str) -> Check:
    """Whoever holds the responder's address answers the CA for our names (see certrenew.system.listen)."""
    what = f"responder address {listen}"
    risk = takeover_risk(listen)
    if risk:
        return Check(WARN, what, risk)
    path = parse_listen(listen).path
    if path is None:
        return Check(OK, what, "a privileged port, which only root can bind")
    directory = os.path.dirname(path)
    try:
        exists = check_socket_dir(path)
    except CertrenewError as error:
        return Check(FAIL, what, str(error))
    if exists:
        risk = flood_risk(path)
        return Check(WARN, what, risk) if risk else Check(OK, what, f"a unix socket in {directory}, which only "
                                                                      "this user can write")
    if os.access(os.path.dirname(directory), os.W_OK | os.X_OK):
        return Check(OK, what, f"{directory} will be created, mode 0750 with its parent's group (HAProxy's user "
                               "must be in it to connect)")
    return Check(FAIL, what, f"{directory} does not exist: {create_hint(directory)}")


def _ssl_dir_check(ssl_dir: Path) -> Check:
    what = f"ssl dir {ssl_dir}"
    if not ssl_dir.is_dir():
        return Check(FAIL, what, f"does not exist: create it with `certrenew bootstrap-ssl-dir --ssl-dir {ssl_dir}`")
    if not os.access(ssl_dir, os.W_OK | os.X_OK):
        return Check(FAIL, what, owned.not_writable(ssl_dir))
    if not any(ssl_dir.glob("*.pem")):
        return Check(FAIL, what, "no certificate in it, so HAProxy refuses to start: run `certrenew "
                                 f"bootstrap-ssl-dir --ssl-dir {ssl_dir}`")
    return Check(OK, what, "writable, HAProxy has a certificate to start with")


def _shadow_checks(ssl_dir: Path, specs: Sequence[CertificateSpec]) -> list[Check]:
    """A FAIL for each certificate another bundle in the ssl dir shadows: a run refuses to order it."""
    failed = [Check(FAIL, f"certificate {name}", problem) for name, problem in shadowed(ssl_dir, specs).items()]
    return failed or ([Check(OK, "ssl dir bundles", "no other bundle claims a certificate's names")] if specs else [])


def _crt_list_check(path: Path) -> Check:
    """Every line of the crt-list names a file that exists: HAProxy refuses to start (or reload) otherwise.
    A relative name is HAProxy's crt-base's, which only HAProxy's configuration knows: not checked."""
    what = f"crt-list {path}"
    try:
        files = CrtList.read(path).files()
    except CertrenewError as error:
        return Check(FAIL, what, str(error))
    missing = [f"line {number}: {file} does not exist" for number, file in files
               if file.startswith("/") and not Path(file).exists()]
    if missing:
        return Check(FAIL, what, f"{'; '.join(missing)}: HAProxy will not start or reload with it (restore the "
                                 "file, or remove the line)")
    return Check(OK, what, f"{len(files)} line(s), every file exists")


def _config_check(configs: Sequence[Path]) -> Check:
    what = "haproxy -c"
    try:
        service.check_config(configs)
    except CertrenewError as error:
        return Check(FAIL, what, str(error))
    return Check(OK, what, f"{', '.join(map(str, configs))} accepted")


def _directory_checks(url: str, ca_bundle: str | None, profiles: Sequence[str]) -> list[Check]:
    """The ACME directory answers, over TLS this host trusts, with a newOrder URL, and lists every
    profile in `profiles` (as the order would require: see `acme_client.profile_problem`)."""
    import requests  # only `check` asks, and only once

    from certrenew.acme.orders import profile_problem
    from certrenew.acme.transport import describe

    what = f"ACME directory {url}"
    try:
        response = requests.get(url, verify=ca_bundle or True, timeout=PROBE_TIMEOUT * 2)
        response.raise_for_status()
        directory = response.json()
        new_order = directory.get("newOrder")
        offered = (directory.get("meta") or {}).get("profiles")
    except requests.exceptions.SSLError as error:
        return [Check(FAIL, what, hints.untrusted_ca(url, str(error)))]
    except (requests.RequestException, ValueError, AttributeError) as error:
        return [Check(FAIL, what, f"cannot read it: {describe(error)}")]
    if not new_order:
        return [Check(FAIL, what, "answered, but is not an ACME directory (no newOrder)")]
    problems = ((profile, profile_problem(profile, offered)) for profile in profiles)
    return [Check(OK, what, "reachable, TLS trusted"),
            *(Check(FAIL, f"profile {profile!r}", problem) if problem else Check(OK, f"profile {profile!r}", "offered")
              for profile, problem in problems)]


def _eab_check(kid: str, key_file: Path) -> Check:
    """The EAB key file can be read as registering will read it (the CA alone can tell whether it is right)."""
    from certrenew.acme.account import ExternalAccount

    what = f"external account binding {kid!r}"
    try:
        ExternalAccount(kid, key_file).hmac_key()
    except UsageError as error:
        return Check(FAIL, what, str(error))
    return Check(OK, what, f"{key_file} holds a key, readable by this user only; used when an account is created")


def _caa_checks(settings: AcmeSettings, store: Store, specs: Sequence[CertificateSpec]) -> list[Check]:
    """Each name's CAA verdict for this CA, the account of the state dir and the certificate's challenge
    (see `certrenew.challenge.caa`), then the record that would pin them all to this account."""
    import requests

    from certrenew.challenge import caa
    from certrenew.renewal.issue import caa_identities

    try:
        meta = requests.get(settings.directory_url, verify=settings.ca_bundle or True,
                            timeout=PROBE_TIMEOUT * 2).json().get("meta") or {}
    except (requests.RequestException, ValueError, AttributeError):
        meta = {}  # the directory's own check says why
    identities = caa_identities(meta.get("caaIdentities"), settings.caa_identity)
    account = store.load_account(settings.directory_url)
    uri = account.uri if account else None
    verdicts = {(name, spec.challenge): caa.verdict(name, identities, uri, spec.challenge, settings.caa_resolver)
                for spec in specs for name in spec.domains}
    checks = [Check({True: OK, False: FAIL, None: WARN}[verdict.allowed], f"CAA {name}", verdict.detail)
              for (name, _), verdict in verdicts.items()]
    if identities and uri:
        methods = ",".join(sorted({spec.challenge for spec in specs}))
        checks.append(Check(OK, "CAA pin", "to let only this account issue, publish at each name or a parent: "
                                           + caa.pin_record("NAME", identities[0], uri, methods)))
    return checks


def _endpoint_check(endpoint: str) -> Check:
    """A --verify-endpoint that takes no connection would fail, and roll back, every install."""
    what = f"verify endpoint {endpoint}"
    try:
        socket.create_connection(split_host_port(endpoint), timeout=PROBE_TIMEOUT).close()
    except OSError as error:
        return Check(FAIL, what, f"accepts no TCP connection ({error.strerror or error}): every install would "
                                 "fail its served-certificate check and be rolled back; check --verify-endpoint")
    return Check(OK, what, "accepts TCP connections")
