"""The HTTP-01 responder: answers the CA's challenge requests that HAProxy forwards to it.

It runs only while orders are in flight and serves nothing but the key authorizations
of those orders, so the backend port is closed the rest of the time.
"""

import logging
import re
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from certrenew.errors import CertrenewError

log = logging.getLogger(__name__)

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
# RFC 8555 section 8.3: a token is base64url without padding; nothing else may reach the lookup.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
REQUEST_TIMEOUT = 5.0
"""Seconds a client may take to send its request; a slow client cannot hold a thread longer."""


def parse_listen(listen: str) -> tuple[str, int]:
    """Split "HOST:PORT" (or "[v6]:PORT") into a host and a port, or raise CertrenewError."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CertrenewError(f"invalid listen address {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:49494")
    return host, int(port)


class Responder:
    """An HTTP-01 `ChallengeSolver` serving key authorizations on a backend port.

    Use it as a context manager: the port is bound on entry and free again on exit.
    """

    challenge_type = "http-01"

    def __init__(self, listen: str) -> None:
        self.address = parse_listen(listen)
        self._validations: dict[str, tuple[str, str]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def present(self, domain: str, token: str, validation: str) -> None:
        self._validations[token] = (domain, validation)

    def cleanup(self, domain: str, token: str) -> None:
        self._validations.pop(token, None)

    def lookup(self, token: str, host: str) -> str | None:
        """The key authorization for `token`, only when the request's Host names its domain.

        The Host check (as in lego) keeps a rebinding page from reading tokens of
        other names; HAProxy passes the client's Host header through unchanged.
        """
        entry = self._validations.get(token)
        if entry is None:
            return None
        domain, validation = entry
        return validation if _host_name(host) == domain else None

    def __enter__(self) -> "Responder":
        handler = type("Handler", (_ChallengeHandler,), {"responder": self})
        try:
            self._server = _Server(self.address, handler)
        except OSError as error:
            host, port = self.address
            raise CertrenewError(
                f"cannot listen on {host}:{port} for HTTP-01 challenges: {error.strerror}; "
                "is another ACME client (certbot standalone?) using the port? Set --listen"
            ) from None
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True)
        self._thread.start()
        log.debug("responder listening on %s:%d", *self.address)
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=REQUEST_TIMEOUT)
        self._validations.clear()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


class _ChallengeHandler(BaseHTTPRequestHandler):
    """GET/HEAD of a known token answers its key authorization as text/plain; all else is refused.

    HTTP/1.0 with `Connection: close` so no idle keep-alive connection outlives a
    shutdown, and a socket timeout so a slow client cannot hold its thread.
    """

    responder: Responder
    timeout = REQUEST_TIMEOUT
    server_version = "certrenew"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        token = path.removeprefix(CHALLENGE_PREFIX)
        validation = None
        if path.startswith(CHALLENGE_PREFIX) and _TOKEN.match(token):
            validation = self.responder.lookup(token, self.headers.get("Host", ""))
        if validation is None:
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n", send_body)
        else:
            self._reply(HTTPStatus.OK, validation.encode("ascii"), send_body)

    def _refuse_method(self) -> None:
        self._reply(HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", True, allow="GET, HEAD")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    def _reply(self, status: HTTPStatus, body: bytes, send_body: bool, allow: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        if allow:
            self.send_header("Allow", allow)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        log.debug("responder: %s %s", self.address_string(), format % args)


def _host_name(host: str) -> str:
    """The name part of a Host header: no port, no brackets, lower case, no trailing dot."""
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    else:
        host = host.rpartition(":")[0] if host.count(":") == 1 else host
    return host.lower().rstrip(".")
