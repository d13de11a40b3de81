"""The HTTP-01 responder: answers the CA's challenge requests that HAProxy forwards to it.

A run opens the port at its first order and closes it with the run; the daemon opens
it for its whole life (`start`), so HAProxy's health check keeps the backend up. Either
way it serves nothing but the key authorizations of the orders in flight.

A run by hand beside the daemon finds the port taken. It then *borrows* the daemon's
responder: once a probe shows the port's holder serves this store's answers, the run
publishes its own there (`Store.publish_challenge`) and the daemon's responder, which
looks up in the store every token it does not know, answers the CA for it. A holder that
lent its port this way (another run by hand, or the daemon stopping) keeps serving, once it
is done, until the borrower's answers are withdrawn: HAProxy has nowhere else to send the CA's
request, and after a unix socket's refusal tries again at once, to no avail. On a fleet (one
store on etcd) the CA validates at whichever node the name resolves to: every process that
orders publishes its answers in the store (`Board.shared`), and every node's daemon answers them (from a copy
that a watch keeps current: `state.board`).
"""

import contextlib
import errno
import http.client
import ipaddress
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol

from certrenew.config.challenges import HTTP_01, TOKEN, check_token
from certrenew.errors import CertrenewError, PortBusy
from certrenew.system import httpd
from certrenew.system.listen import parse_listen

log = logging.getLogger(__name__)

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
PROBE_NAME = "borrow-probe.certrenew.invalid"
"""The Host of the request that checks a borrowed port: a name no CA validates (RFC 6761)."""
PROBE_TIMEOUT = 5.0
"""Seconds the borrow probe waits for the address's holder to answer."""
PROBE_BODY = 4096
"""Bytes of a probe's answer read: a key authorization is under a hundred, an error page a few hundred."""
LEND_GRACE = 30.0
"""Seconds at most a responder that lent its port keeps serving, once its own work is done, the
answers other processes published: a CA validates in seconds, and an answer a killed run left
behind must not hold a stopping daemon for ever."""
LEND_SETTLE = 1.0
"""Seconds a lender keeps serving after the last borrow probe it answered, whatever the store holds:
the borrower publishes its answers only after the probe."""
LEND_POLL = 0.1
"""Seconds between a lender's looks at the store while it waits for a borrower's answers to go."""


class Board(Protocol):
    """Where responders share key authorizations (the store, on one node or a fleet): each token is an
    entry of its own, published by the process that orders and answered by whichever responder the CA reaches."""

    @property
    def shared(self) -> bool:
        """Whether other nodes use it (a fleet on etcd): then every answer is published, for the node the CA reaches."""

    def publish_challenge(self, token: str, domain: str, validation: str) -> None: ...

    def find_challenge(self, token: str) -> tuple[str, str] | None: ...

    def withdraw_challenge(self, token: str) -> None: ...

    def challenges_published(self) -> bool:
        """Whether any answer (not expired) is published, by any process."""


class Responder:
    """An HTTP-01 `ChallengeSolver` serving key authorizations on a backend port.

    Use it as a context manager for the run: the port is bound at the first `present`
    (a run that orders nothing never opens it) and free again on exit. The server is
    `httpd`'s: thousands of idle or slow connections cost memory, not threads, and a
    real validation is answered while they wait out their time limit.
    """

    challenge_type = HTTP_01

    def __init__(self, listen: str, store: Board | None = None) -> None:
        """`store`: where to look up tokens this process does not know, and to publish its
        own when another process holds the port; without one, only this process's are served."""
        self.address = parse_listen(listen)
        self._store = store
        self._borrowed = False
        """Whether another process's responder (the daemon's) serves this one's answers."""
        self._lent_at: float | None = None
        """When this responder last answered a borrow probe: another process relies on it (see `__exit__`)."""
        self._published: set[str] = set()
        """The tokens this one published in the store (all it presents, on a fleet's), to withdraw."""
        self._validations: dict[str, tuple[str, str]] = {}
        self._serving: contextlib.ExitStack | None = None
        """The bound address and its server, while this process serves it."""
        self._starting = threading.Lock()

    def prepare(self, domains: list[str]) -> None:
        """Nothing to check before ordering: the port is opened (or borrowed) at the first `present`,
        so an order whose authorizations are valid already never needs it (the pre-flight probe,
        on by default, checks the port before ordering)."""

    def present(self, domain: str, token: str, validation: str) -> None:
        check_token(token)
        self.start(borrow=True)
        self._validations[token] = (domain, validation)
        if self._borrowed or (self._store is not None and self._store.shared):  # for another node's responder
            assert self._store is not None  # only a responder with a store borrows
            self._store.publish_challenge(token, domain, validation)
            self._published.add(token)

    def wait_ready(self) -> None:
        """Nothing to wait for: a presented token is served at once."""

    def cleanup(self, domain: str, token: str) -> None:
        if self._validations.pop(token, None) is not None and token in self._published:
            assert self._store is not None
            self._published.discard(token)
            self._store.withdraw_challenge(token)

    def lookup(self, token: str, host: str) -> str | None:
        """The key authorization for `token`, only when the request's Host names its domain.

        The Host check (as in lego) keeps a rebinding page from reading tokens of
        other names; HAProxy passes the client's Host header through unchanged. A token
        this process did not present is looked up in the store (another process's, another
        node's): in the server's thread, which a file store answers in microseconds and the
        daemon's `state.board` from memory.
        """
        entry = self._validations.get(token)
        if entry is None and self._store is not None:
            try:
                entry = self._store.find_challenge(token)
            except (CertrenewError, OSError) as error:  # a broken entry is that token's problem only
                log.warning("responder: %s", error)
        if entry is None:
            return None
        domain, validation = entry
        if _host_name(host) != domain:
            return None
        if domain == PROBE_NAME:
            self._lent_at = time.monotonic()
        return validation

    def answer(self, request: httpd.Request) -> httpd.Response:
        """The key authorization for a GET of a challenge path, else 404."""
        token = request.path.removeprefix(CHALLENGE_PREFIX)
        validation = None
        if request.path.startswith(CHALLENGE_PREFIX) and TOKEN.fullmatch(token):
            validation = self.lookup(token, request.headers.get("host", ""))
        if validation is None:
            return httpd.Response(HTTPStatus.NOT_FOUND, b"not found\n")
        return httpd.Response(HTTPStatus.OK, validation.encode("ascii"))

    def __enter__(self) -> "Responder":
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            for token in list(self._validations):  # those of an order a signal cut short
                self.cleanup("", token)
            if self._lent_at is not None and self._serving is not None:
                self._serve_borrowers()
        finally:
            with self._starting:
                if self._serving is not None:
                    self._serving.close()
                    self._serving = None
            self._borrowed = False
            self._lent_at = None

    def _serve_borrowers(self) -> None:
        """Keep the port open while a process that borrowed it has answers published (at most LEND_GRACE)."""
        assert self._store is not None and self._lent_at is not None
        deadline, said = time.monotonic() + LEND_GRACE, False
        while time.monotonic() < deadline:
            try:
                if time.monotonic() - self._lent_at >= LEND_SETTLE and not self._store.challenges_published():
                    return
            except (CertrenewError, OSError) as error:
                log.warning("responder: cannot tell whether a run that borrowed %s still waits for the CA (%s): "
                            "closing it", self.address, error)
                return
            if not said:
                log.info("responder: a run borrowed %s: serving its challenges until the CA is done with them "
                         "(at most %g s)", self.address, LEND_GRACE)
                said = True
            time.sleep(LEND_POLL)
        log.warning("responder: closing %s after %g s with answers still published (a borrowing run's, or one a "
                    "killed run left): a validation in progress fails", self.address, LEND_GRACE)

    def start(self, borrow: bool = False) -> None:
        """Bind the port and start serving, once. A busy port is a clear error (and tried again
        next time), unless `borrow` and its holder serves this store's answers (see module doc).
        A borrowed port is tried again at each call: if the daemon has stopped, the run serves itself."""
        with self._starting:
            if self._serving is not None:
                return
            serving = contextlib.ExitStack()
            try:  # a CertrenewError (what is wrong with the address, and the fix) goes up as it is
                listener = serving.enter_context(self.address.listening())
            except OSError as failure:
                busy = failure.errno == errno.EADDRINUSE
                if busy and self._borrowed:  # still the daemon's
                    return
                borrowable = busy and borrow and self._store is not None
                if borrowable and self._holder_serves_store():
                    self._borrowed = True
                    log.info("responder: %s is held by a certrenew serving this state dir (the daemon): "
                             "it answers this run's challenges", self.address)
                    return
                if borrowable:
                    why = ("the process holding it does not answer this state dir's challenges: is another ACME "
                           "client (certbot standalone?), or a certrenew daemon with another --state-dir, using "
                           "it? Stop it, or ")
                elif busy:
                    why = "is another ACME client (certbot standalone?), or a certrenew run, using it? Stop it, or "
                else:
                    why = ""
                reason = os.strerror(failure.errno) if failure.errno else str(failure)  # not the address again
                raise (PortBusy if busy else CertrenewError)(
                    f"cannot listen on {self.address} for HTTP-01 challenges: {reason}; {why}set --listen "
                    "(and point letsencrypt_backend's server in haproxy.cfg at it)") from failure
            serving.enter_context(httpd.Server(listener, self.answer, "certrenew-responder"))
            self._serving = serving
            if self._borrowed:
                self._borrowed = False
                log.info("responder: %s is free again (the daemon stopped?): this run answers its challenges "
                         "itself", self.address)
        log.debug("responder listening on %s", self.address)

    def _holder_serves_store(self) -> bool:
        """Whether the process on our port answers a token published only in our store."""
        assert self._store is not None
        token, value = secrets.token_urlsafe(32), f"certrenew-borrow-probe.{secrets.token_urlsafe(24)}"
        address = self.address
        self._store.publish_challenge(token, PROBE_NAME, value)
        try:
            answer = ask(_connectable(address.host), address.port, PROBE_NAME, token, PROBE_TIMEOUT, address.path)
            return answer.status == HTTPStatus.OK and answer.body == value.encode()
        except (OSError, http.client.HTTPException) as error:
            log.debug("responder: the holder of %s did not answer the probe: %s", address, error)
            return False
        finally:
            self._store.withdraw_challenge(token)


@dataclass(frozen=True)
class Answer:
    """What a server said to a challenge request: enough to tell certrenew's responder from anything else."""

    status: int
    reason: str
    location: str | None
    server: str | None
    body: bytes
    """Its first PROBE_BODY bytes."""


def ask(host: str, port: int, name: str, token: str, timeout: float, unix: str | None = None) -> Answer:
    """GET the challenge path of `token` from host:port (or the `unix` socket) with `Host: name`, as the CA
    would: no redirect followed, at most PROBE_BODY bytes read. The pre-flight probe and the borrow probe
    ask this way."""
    connection = (http.client.HTTPConnection(host, port, timeout=timeout) if unix is None
                  else _UnixConnection(unix, timeout))
    try:
        connection.request("GET", f"{CHALLENGE_PREFIX}{token}",
                           headers={"Host": name, "User-Agent": "certrenew probe", "Connection": "close"})
        response = connection.getresponse()
        return Answer(response.status, response.reason, response.getheader("Location"), response.getheader("Server"),
                      response.read(PROBE_BODY))
    finally:
        connection.close()


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket: the borrow probe's way to the daemon's responder."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def _connectable(host: str) -> str:
    """Where to reach a server listening on `host`: the loopback for a wildcard address."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _host_name(host: str) -> str:
    """The name part of a Host header: no port, no brackets, lower case, no trailing dot; an IPv6
    address in the canonical form `domains` gives it."""
    if host.startswith("["):  # an IPv6 address, which the CA may write in any of its forms
        host = host[1:].partition("]")[0]
        with contextlib.suppress(ValueError):
            return ipaddress.ip_address(host).compressed
    else:
        host = host.rpartition(":")[0] if host.count(":") == 1 else host
    return host.lower().rstrip(".")
