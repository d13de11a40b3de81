"""The TLS-ALPN-01 responder (RFC 8737), for hosts whose port 80 is closed.

HAProxy's port-443 frontend, in TCP mode, sends a connection whose ClientHello offers ALPN
"acme-tls/1" here and every other one on to its HTTPS frontend (haproxy/tls-alpn-01.cfg).
The handshake is the whole validation: the CA reads the self-signed certificate it is given
for the name in SNI, whose acmeIdentifier extension holds the SHA-256 of the key authorization,
and hangs up. So the responder answers only a handshake that offers acme-tls/1 and names a
name with a token in flight, and it has no certificate for any other name.

Imported only by a run with a TLS-ALPN-01 certificate: the HTTP-01 path never loads it.
"""

import contextlib
import datetime
import hashlib
import ipaddress
import logging
import socket
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import josepy as jose
from acme import challenges
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certrenew.challenge.solver import check_token
from certrenew.config.challenges import TLS_ALPN_01
from certrenew.errors import CertrenewError
from certrenew.system.listen import parse_listen

log = logging.getLogger(__name__)

ACME_TLS_1 = "acme-tls/1"
ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
"""id-pe-acmeIdentifier: the critical extension holding the key authorization's digest."""
HANDSHAKE_TIMEOUT = 5.0
"""Seconds a client has for its whole handshake; the CA's takes milliseconds."""
MAX_CONNECTIONS = 64
"""Handshakes at once; one beyond is closed at once, so a flood costs no more threads."""
MAX_RECORD = 16384 + 256
"""Bytes of a TLS record (RFC 8446 section 5.1, with room for padding): a ClientHello fits in one."""
WAIT_FOR_NAME = 120.0
"""Seconds `present` waits while another order validates the same name (a dual certificate's
twin): SNI is all the CA sends, so one name can be answered for one token at a time."""
ACCEPT_POLL = 0.5
"""Seconds between looks at the stop flag while no connection arrives."""
VALIDITY = datetime.timedelta(days=7)


class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """The answer to a tls-alpn-01 challenge: an empty object, as for HTTP-01 (RFC 8737 section 3)."""

    typ = TLS_ALPN_01


class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """The tls-alpn-01 challenge, which acme 5 no longer ships: registered here so an authorization
    parses it into this type, and the order flow needs nothing of its own."""

    response_cls = TLSALPN01Response
    typ = TLS_ALPN_01

    def validation(self, account_key: jose.JWK, **unused_kwargs: Any) -> str:
        """The key authorization: the responder turns it into the certificate (RFC 8737 section 3)."""
        return self.key_authorization(account_key)


challenges.Challenge.register(TLSALPN01)
challenges.ChallengeResponse.register(TLSALPN01Response)


def server_name(domain: str) -> str:
    """The SNI the CA sends for `domain`: the name itself, for an IP address its reverse-DNS name
    (RFC 8738 section 6: SNI carries no address)."""
    try:
        return ipaddress.ip_address(domain).reverse_pointer
    except ValueError:
        return domain


def _subject_name(domain: str) -> x509.GeneralName:
    """The certificate's one name: an iPAddress SAN for an address (RFC 8738 section 6), else a dNSName."""
    try:
        return x509.IPAddress(ipaddress.ip_address(domain))
    except ValueError:
        return x509.DNSName(domain)


def challenge_certificate(domain: str, key_authorization: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh key and the self-signed certificate RFC 8737 section 3 asks for: `domain` as its
    only name, the digest of `key_authorization` in a critical acmeIdentifier extension."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme-tls-alpn-01")])
    digest = hashlib.sha256(key_authorization.encode()).digest()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - VALIDITY)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName([_subject_name(domain)]), critical=False)
            .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def proves(cert: x509.Certificate, domain: str, key_authorization: str) -> bool:
    """Whether `cert` is what the CA accepts for `domain` and `key_authorization` (the probe's verdict)."""
    try:
        names = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        identifier = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER)
    except x509.ExtensionNotFound:
        return False
    digest = hashlib.sha256(key_authorization.encode()).digest()
    return (names == [_subject_name(domain)] and identifier.critical and isinstance(identifier.value, x509.UnrecognizedExtension)
            and identifier.value.value == b"\x04\x20" + digest)


def fetch_certificate(host: str, port: int, domain: str, timeout: float) -> x509.Certificate | None:
    """The certificate served at host:port to a handshake as the CA makes it (SNI `domain`, ALPN
    acme-tls/1, nothing verified); None when the server did not choose acme-tls/1. OSError and
    ssl.SSLError when no handshake completes."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols([ACME_TLS_1])
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=server_name(domain)) as tls:
            if tls.selected_alpn_protocol() != ACME_TLS_1:
                return None
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


def offers_acme_tls(record: bytes) -> bool:
    """Whether a TLS record is a ClientHello whose ALPN extension lists acme-tls/1 (RFC 8446
    section 4.1.2, RFC 7301 section 3.1). Read before OpenSSL sees it: once the handshake
    starts, the certificate goes out whatever the client offered."""
    try:
        if record[0] != 22 or record[5] != 1:  # a handshake record holding a ClientHello
            return False
        view = memoryview(record)
        at = 5 + 4 + 2 + 32  # record and handshake headers, legacy_version, random
        for size in (1, 2, 1):  # legacy_session_id, cipher_suites, legacy_compression_methods
            _, at = _field(view, at, size)
        extensions, _ = _field(view, at, 2)
        at = 0
        while at < len(extensions):
            kind = int.from_bytes(extensions[at:at + 2], "big")
            data, at = _field(extensions, at + 2, 2)
            if kind == 16:  # application_layer_protocol_negotiation
                names, _ = _field(data, 0, 2)
                offered, at = [], 0
                while at < len(names):
                    name, at = _field(names, at, 1)
                    offered.append(bytes(name))
                return ACME_TLS_1.encode() in offered
    except (IndexError, ValueError):
        return False
    return False


def _field(view: memoryview, at: int, size: int) -> tuple[memoryview, int]:
    """The field at `at` behind its `size`-byte length, and where the next one starts."""
    length = int.from_bytes(view[at:at + size], "big")
    data = view[at + size:at + size + length]
    if at + size > len(view) or len(data) != length:
        raise ValueError("truncated")
    return data, at + size + length


class TlsAlpnResponder:
    """A TLS-ALPN-01 `ChallengeSolver`: serves each name's challenge certificate while its order is in flight.

    A context manager for the run, bound at the first `present` as the HTTP-01 responder is.
    A thread per handshake (at most MAX_CONNECTIONS), each bounded by HANDSHAKE_TIMEOUT: the
    only clients are the CA's few validation connections that HAProxy lets through.
    """

    challenge_type = TLS_ALPN_01

    def __init__(self, listen: str) -> None:
        self.address = parse_listen(listen)
        self._served: dict[str, tuple[str, ssl.SSLContext]] = {}
        """SNI (see `server_name`) -> (token, the context holding its challenge certificate)."""
        self._changed = threading.Condition()
        self._context = self._new_context()
        self._context.sni_callback = self._select
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def prepare(self, domains: list[str]) -> None:
        """Nothing to check before ordering: the pre-flight probe (on by default) checks the route."""

    def present(self, domain: str, token: str, validation: str) -> None:
        """Serve the challenge certificate for `validation` (the key authorization) to the SNI the CA
        sends for `domain` (`server_name`)."""
        check_token(token)
        self.start()
        context = self._new_context()
        key, cert = challenge_certificate(domain, validation)
        with tempfile.TemporaryDirectory(prefix="certrenew-tls-alpn-") as private:  # mode 0700
            pem = Path(private) / "challenge.pem"
            pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())
                            + cert.public_bytes(serialization.Encoding.PEM))
            context.load_cert_chain(pem)  # the ssl module reads certificates from files only
        with self._changed:
            if not self._changed.wait_for(lambda: server_name(domain) not in self._served, WAIT_FOR_NAME):
                raise CertrenewError(f"{domain}: another order kept validating it over {TLS_ALPN_01} for "
                                     f"{WAIT_FOR_NAME:g} s; this order is tried again next run")
            self._served[server_name(domain)] = (token, context)

    def wait_ready(self) -> None:
        """Nothing to wait for: a presented certificate is served at once."""

    def cleanup(self, domain: str, token: str) -> None:
        with self._changed:
            if self._served.get(server_name(domain), ("",))[0] == token:
                del self._served[server_name(domain)]
                self._changed.notify_all()

    def __enter__(self) -> "TlsAlpnResponder":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HANDSHAKE_TIMEOUT)
            self._thread = None
        with self._changed:
            self._served.clear()

    def start(self) -> None:
        """Bind the address and start serving, once; a busy or forbidden address is a clear error."""
        with self._changed:
            if self._thread is not None:
                return
            bound = contextlib.ExitStack()
            try:
                listener = bound.enter_context(self.address.listening())
            except OSError as error:
                raise CertrenewError(f"cannot listen on {self.address} for {TLS_ALPN_01} challenges: "
                                     f"{error.strerror or error}; is another certrenew run using it? Stop it, or set "
                                     "--tls-alpn-listen (and point the certrenew_tls_alpn backend's server in "
                                     "haproxy.cfg at it)") from error
            self._stop.clear()
            self._thread = threading.Thread(target=self._serve, args=(bound, listener), daemon=True,
                                            name="certrenew-tls-alpn")
            self._thread.start()
        log.debug("TLS-ALPN-01 responder listening on %s", self.address)

    def _serve(self, bound: contextlib.ExitStack, listener: socket.socket) -> None:
        """Accept until stopped, then close the listener (and remove its socket file)."""
        listener.settimeout(ACCEPT_POLL)
        try:
            while not self._stop.is_set():
                try:
                    connection, _ = listener.accept()
                except (TimeoutError, socket.timeout):
                    continue
                except OSError as error:  # e.g. EMFILE: wait for file descriptors to be freed
                    log.debug("TLS-ALPN-01 responder: cannot accept: %s", error)
                    time.sleep(ACCEPT_POLL)
                    continue
                if not self._slots.acquire(blocking=False):
                    connection.close()
                    continue
                threading.Thread(target=self._connection, args=(connection,), daemon=True).start()
        finally:
            bound.close()

    def _connection(self, connection: socket.socket) -> None:
        try:
            with connection:
                self._handshake(connection, time.monotonic() + HANDSHAKE_TIMEOUT)
        except (OSError, ValueError) as error:  # a slow, silent, vanished or refused client: just drop it
            log.debug("TLS-ALPN-01 responder: %s", error)
        finally:
            self._slots.release()

    def _handshake(self, connection: socket.socket, deadline: float) -> None:
        """Check the ClientHello offers acme-tls/1, then complete the handshake through memory buffers."""
        def receive(size: int) -> bytes:
            connection.settimeout(max(deadline - time.monotonic(), 0.001))
            data = connection.recv(size)
            if not data:
                raise ValueError("the client closed the connection")
            return data

        def receive_exactly(size: int) -> bytes:
            data = b""
            while len(data) < size:
                data += receive(size - len(data))
            return data

        header = receive_exactly(5)
        if int.from_bytes(header[3:5], "big") > MAX_RECORD:
            raise ValueError("a first record larger than TLS allows")
        record = header + receive_exactly(int.from_bytes(header[3:5], "big"))
        if not offers_acme_tls(record):
            raise ValueError(f"not a ClientHello offering ALPN {ACME_TLS_1}")
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self._context.wrap_bio(incoming, outgoing, server_side=True)
        incoming.write(record)
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    connection.sendall(outgoing.read())
                    incoming.write(receive(MAX_RECORD))
        finally:
            connection.sendall(outgoing.read())  # the last flight, or the alert that ends it

    def _select(self, tls: Any, sni: str | None, context: ssl.SSLContext) -> int | None:
        """SNI callback: swap in the named challenge certificate's context, or refuse the handshake (the
        base context holds no certificate, so nothing else could be sent anyway)."""
        entry = self._served.get((sni or "").lower().rstrip("."))
        if entry is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        tls.context = entry[1]
        return None

    @staticmethod
    def _new_context() -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8737 section 4
        context.set_alpn_protocols([ACME_TLS_1])
        return context
