"""A fault-injecting HTTPS proxy in front of the lab's pebble, on loopback only.

certrenew talks to the proxy as if it were the CA (same TLS certificate as pebble,
so the lab's CA bundle trusts it). Each request is first shown to `on_request`,
which can let it through, answer it with an error, drop the connection, or do
something at that exact step of the order (send certrenew a signal). Pebble builds
its URLs from the request's Host header, so every URL it hands out points back at
the proxy and the whole conversation stays observable.

A fault can also let pebble answer and then change the answer (`Forge`: a forged
certificate chain, garbage, an enormous body), lose it (`LOSE`), date it by another
clock (`Skew`), or deliver it so slowly that it never ends (`Drip`, `Stall`). The proxy remembers the public key of the last CSR it saw
finalized, so a forged leaf can carry certrenew's own key and fail only on what the
test means it to.

Pebble's paths name the ACME steps; `step()` maps them to words the tests use.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import http.client
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

LOOPBACK = "127.0.0.1"
DROP = "drop"
LOSE = "lose"
"""Pebble gets the request and answers it, but the connection is dropped before certrenew hears."""

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


@dataclass(frozen=True)
class Forge:
    """Pebble's answer, if a success, with its body replaced by `make(pebble's body, the last CSR's public key)`."""

    make: Callable[[bytes, object], bytes]


@dataclass(frozen=True)
class Drip:
    """Pebble's answer, head and body, sent one byte every `interval` seconds."""

    interval: float = 1.0


@dataclass(frozen=True)
class Stall:
    """Pebble's head and most of its body, then nothing: the answer never ends."""


@dataclass(frozen=True)
class Skew:
    """Pebble's answer with its Date header moved by `seconds`: a CA whose clock is not this host's."""

    seconds: float

    def date(self, value: str) -> str:
        moved = email.utils.parsedate_to_datetime(value) + datetime.timedelta(seconds=self.seconds)
        return email.utils.format_datetime(moved, usegmt=True)


Fault = Reply | Forge | Drip | Stall | Skew | str | None
"""What `on_request` returns: None to pass the request on, a Reply, a Forge, a Drip, a Stall, a Skew, DROP or LOSE."""
SLOW_LIMIT = 120.0
"""Seconds a Drip or a Stall goes on at most, should the client never hang up."""


def forged_chain(public_key, names: list[str], valid_days: tuple[int, int] = (-1, 89)) -> bytes:
    """A leaf for `public_key` and `names`, valid between the two day offsets from now, and its issuer (not pebble)."""
    ca = trustme.CA()
    issuer = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    leaf = _leaf(public_key, names, valid_days, issuer.subject, _key(ca))
    return leaf.public_bytes(serialization.Encoding.PEM) + ca.cert_pem.bytes()


def weak_chain(public_key, names: list[str]) -> bytes:
    """A leaf for `public_key` and `names` and its issuer, an intermediate with a 1024-bit RSA key.

    certrenew's own checks accept it (each certificate is signed by the next), but OpenSSL's
    default security level (2: 112 bits) refuses to load such a chain, so HAProxy does.
    """
    root = trustme.CA()
    key = rsa.generate_private_key(65537, 1024)
    now = datetime.datetime.now(datetime.timezone.utc)
    intermediate = (x509.CertificateBuilder()
                    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak intermediate")]))
                    .issuer_name(x509.load_pem_x509_certificate(root.cert_pem.bytes()).subject)
                    .public_key(key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now - datetime.timedelta(days=1))
                    .not_valid_after(now + datetime.timedelta(days=365))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .sign(_key(root), hashes.SHA256()))
    leaf = _leaf(public_key, names, (-1, 89), intermediate.subject, key)
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in (leaf, intermediate))


def _leaf(public_key, names: list[str], valid_days: tuple[int, int], issuer: x509.Name, issuer_key):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=valid_days[0]))
            .not_valid_after(now + datetime.timedelta(days=valid_days[1]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False)
            .sign(issuer_key, hashes.SHA256()))


def _key(ca: trustme.CA):
    return serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)


def csr_public_key(jws_body: bytes):
    """The public key of the CSR in a finalize request (a JWS whose payload is {"csr": base64url DER})."""
    payload = json.loads(jws_body)["payload"]
    csr = json.loads(_unb64(payload))["csr"]
    return x509.load_der_x509_csr(_unb64(csr)).public_key()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FaultProxy:
    """Start with `with FaultProxy(lab) as proxy`; point certrenew at `proxy.directory_url`."""

    def __init__(self, lab) -> None:
        self.lab = lab
        self.on_request: Callable[[str, str], Fault] = lambda method, path: None
        self.seen: list[tuple[str, str]] = []
        """(method, step) of every request, in order."""
        self.answered: list[tuple[str, int]] = []
        """(step, status) of every answer pebble gave, in order."""
        self.csr_key = None
        """The public key of the last CSR finalized through the proxy."""
        self.altered = 0
        """Answers forged, dripped or stalled: proof that the fault happened."""
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

    def finalized(self) -> int:
        """Finalize requests pebble took: not those it refused as too early (403, orderNotReady), which a
        client that finalizes at the first look sends again once the names are validated."""
        return self.count("finalize") - self.answered.count(("finalize", 403))

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
        if step(self.path) == "finalize":
            self.proxy.csr_key = csr_public_key(body)
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
                self.proxy.answered.append((step(self.path), status))
            except OSError:  # pebble is down: certrenew sees a dropped connection, as it would
                self.close_connection = True
                self.connection.shutdown(2)
                return
        if fault == LOSE:
            self.proxy.altered += 1
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if isinstance(fault, Forge) and status != 200:
            fault = None  # pebble refused (a nonce, 5% of the time): let certrenew see that and retry
        if isinstance(fault, Forge):
            payload = fault.make(payload, self.proxy.csr_key)
        if isinstance(fault, Skew):
            headers = [(name, fault.date(value) if name.lower() == "date" else value) for name, value in headers]
        if isinstance(fault, (Forge, Drip, Stall, Skew)):
            self.proxy.altered += 1
        declared = len(payload) + (1000 if isinstance(fault, Stall) else 0)
        head = [f"HTTP/1.1 {status} {http.client.responses.get(status, '')}"]
        head += [f"{name}: {value}" for name, value in headers
                 if name.lower() not in ("connection", "transfer-encoding", "content-length")]
        head += [f"Content-Length: {declared}", "Connection: close"]
        answer = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload
        self.close_connection = True
        if isinstance(fault, Drip):
            self._drip(answer, fault.interval)
        elif isinstance(fault, Stall):
            self.wfile.write(answer)
            self.wfile.flush()
            self.connection.settimeout(SLOW_LIMIT)
            try:
                self.connection.recv(1)  # until the client hangs up, or SLOW_LIMIT
            except OSError:
                pass
        else:
            self.wfile.write(answer)

    def _drip(self, answer: bytes, interval: float) -> None:
        ends = time.monotonic() + SLOW_LIMIT
        try:
            for byte in answer:
                if time.monotonic() > ends:
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(interval)
        except OSError:  # the client hung up
            pass

    do_GET = do_POST = do_HEAD = _any

    def log_message(self, format: str, *args) -> None:
        pass
