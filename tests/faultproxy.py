"""A fault-injecting HTTPS proxy in front of the lab's pebble, on loopback only.

certrenew talks to the proxy as if it were the CA (same TLS certificate as pebble,
so the lab's CA bundle trusts it). Each request is first shown to `on_request`,
which can let it through, answer it with an error, drop the connection, or do
something at that exact step of the order (send certrenew a signal). Pebble builds
its URLs from the request's Host header, so every URL it hands out points back at
the proxy and the whole conversation stays observable.

Pebble's paths name the ACME steps; `step()` maps them to words the tests use.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOOPBACK = "127.0.0.1"
DROP = "drop"

STEPS = {
    "/dir": "directory", "/nonce-plz": "nonce", "/sign-me-up": "account", "/my-account/": "account",
    "/order-plz": "new-order", "/authZ/": "authorization", "/chalZ/": "challenge",
    "/finalize-order/": "finalize", "/my-order/": "order", "/certZ/": "certificate",
}


def step(path: str) -> str:
    """The ACME step a pebble path belongs to, e.g. "/finalize-order/abc" -> "finalize"."""
    for prefix, name in STEPS.items():
        if path.startswith(prefix):
            return name
    return "other"


@dataclass(frozen=True)
class Reply:
    """A canned answer instead of pebble's."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def problem(cls, status: int, kind: str, detail: str, **headers: str) -> Reply:
        body = f'{{"type": "urn:ietf:params:acme:error:{kind}", "detail": "{detail}", "status": {status}}}'
        return cls(status, body.encode(), (("Content-Type", "application/problem+json"),
                                           *((name.replace("_", "-"), value) for name, value in headers.items())))


Fault = Reply | str | None
"""What `on_request` returns: None to pass the request on, a Reply, or DROP."""


class FaultProxy:
    """Start with `with FaultProxy(lab) as proxy`; point certrenew at `proxy.directory_url`."""

    def __init__(self, lab) -> None:
        self.lab = lab
        self.on_request: Callable[[str, str], Fault] = lambda method, path: None
        self.seen: list[tuple[str, str]] = []
        """(method, step) of every request, in order."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(lab.pebble_cert, lab.pebble_key)
        self._upstream = ssl.create_default_context(cafile=str(lab.ca_bundle))
        handler = type("Handler", (_Handler,), {"proxy": self})
        self._server = ThreadingHTTPServer((LOOPBACK, 0), handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.directory_url = f"https://{LOOPBACK}:{self.port}/dir"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def env(self) -> dict[str, str]:
        """The certrenew setting that sends it through this proxy."""
        return {"CERTRENEW_DIRECTORY": self.directory_url}

    def count(self, name: str) -> int:
        return sum(1 for _, seen in self.seen if seen == name)

    def forward(self, method: str, path: str, headers, body: bytes) -> tuple[int, list, bytes]:
        connection = http.client.HTTPSConnection(LOOPBACK, self.lab.acme_port, context=self._upstream, timeout=30)
        try:
            connection.request(method, path, body=body, headers=dict(headers))
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()


class _Handler(BaseHTTPRequestHandler):
    proxy: FaultProxy
    protocol_version = "HTTP/1.1"

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.proxy.seen.append((self.command, step(self.path)))
        fault = self.proxy.on_request(self.command, self.path)
        if fault == DROP:
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if isinstance(fault, Reply):
            status, headers, payload = fault.status, list(fault.headers), fault.body
        else:
            try:
                status, headers, payload = self.proxy.forward(self.command, self.path, self.headers.items(), body)
            except OSError:  # pebble is down: certrenew sees a dropped connection, as it would
                self.close_connection = True
                self.connection.shutdown(2)
                return
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = True

    do_GET = do_POST = do_HEAD = _any

    def log_message(self, format: str, *args) -> None:
        pass
