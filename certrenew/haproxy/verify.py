"""Proof that HAProxy serves a certificate: a TLS handshake per endpoint and name.

The check compares the leaf's SHA-256 fingerprint with the bundle's, so nothing but
that very certificate passes (not an older one, not another CA's for the same
names). The chain is not verified: the fingerprint is stronger, and an endpoint may
be an internal address that no public name matches.
"""

import hashlib
import logging
import socket
import ssl
import time
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric import rsa

from certrenew.errors import CertrenewError
from certrenew.pki.bundle import certificate_info, leaf_certificate
from certrenew.pki.domains import is_ip_address
from certrenew.system.hostport import split_host_port

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 5.0
NO_SNI = ("; a TLS client sends no SNI for an IP address, so HAProxy serves it the bind's default certificate: "
          "make this one the default (its bundle the first crt of the bind, or default-crt)")
"""A TLS client names no IP address in SNI (RFC 6066), nor does this check: what it sees for one is what
every client connecting to that address sees."""
POLL_INTERVAL = 0.2


def _context(rsa_key: bool) -> ssl.SSLContext:
    """A client that accepts any certificate; for an RSA bundle, one that offers only RSA ciphers.

    With an ECDSA and an RSA certificate for the same names HAProxy picks ECDSA for
    every client that supports it, so only a client limited to RSA (TLS 1.2, aRSA)
    is shown the RSA one.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if rsa_key:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("aRSA")
    return context


def served_fingerprint(endpoint: str, sni: str, rsa_key: bool = False) -> str:
    """SHA-256 of the leaf certificate `endpoint` serves for `sni`."""
    with socket.create_connection(split_host_port(endpoint), timeout=HANDSHAKE_TIMEOUT) as raw:
        with _context(rsa_key).wrap_socket(raw, server_hostname=sni) as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True) or b"").hexdigest()


def wait_served(endpoints: Sequence[str], bundle: bytes, grace: float) -> None:
    """Wait up to `grace` seconds until every endpoint serves `bundle` for every name in it.

    A reload hands over to the new worker asynchronously, hence the grace period;
    after a Runtime API commit the first look normally succeeds.
    """
    if not endpoints:
        return
    leaf = leaf_certificate(bundle)
    info = certificate_info(leaf)
    rsa_key = isinstance(leaf.public_key(), rsa.RSAPublicKey)
    pending = [(endpoint, name) for endpoint in endpoints for name in info.domains]
    deadline = time.monotonic() + grace
    while True:
        seen = {}
        for endpoint, name in pending:
            try:
                seen[endpoint, name] = served_fingerprint(endpoint, name, rsa_key)
            except OSError as error:  # ssl.SSLError included
                seen[endpoint, name] = f"gives no TLS handshake for {name} ({error})"
        pending = [where for where, fingerprint in seen.items() if fingerprint != info.fingerprint]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL)
    if pending:
        endpoint, name = pending[0]
        what = seen[endpoint, name]
        if not what.startswith("gives no"):
            what = f"serves another certificate for {name} (SHA-256 {what[:16]}…)"
        more = f", and {len(pending) - 1} more endpoint/name pairs" if len(pending) > 1 else ""
        raise CertrenewError(
            f"served-certificate check: {endpoint} {what}, not the new one (serial {info.serial}){more}"
            + (NO_SNI if is_ip_address(name) else "")
        )
    log.debug("every endpoint serves serial %s", info.serial)
