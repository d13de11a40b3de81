"""HAProxy bundles (leaf, chain, key in one PEM) and the facts read from a certificate."""

import datetime
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certrenew.errors import CertrenewError


@dataclass(frozen=True)
class CertificateInfo:
    """What certrenew needs to know about a leaf certificate."""

    serial: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    domains: tuple[str, ...]
    fingerprint: str

    @property
    def lifetime(self) -> datetime.timedelta:
        return self.not_after - self.not_before


def pem_blocks(pem: bytes) -> list[bytes]:
    """Split PEM text into its blocks, each ending in one newline, blank lines dropped."""
    blocks, current = [], []
    for line in pem.replace(b"\r\n", b"\n").split(b"\n"):
        line = line.strip()
        if not line:
            continue
        current.append(line)
        if line.startswith(b"-----END "):
            blocks.append(b"\n".join(current) + b"\n")
            current = []
    if current:
        raise CertrenewError("malformed PEM: a block has no END line")
    return blocks


def build_bundle(fullchain_pem: bytes, key_pem: bytes) -> bytes:
    """Leaf, then chain, then key, with no blank line anywhere.

    HAProxy's Runtime API ends a payload at the first blank line, so a bundle with one
    would be cut short when pushed over the socket.
    """
    blocks = pem_blocks(fullchain_pem) + pem_blocks(key_pem)
    if not blocks[0].startswith(b"-----BEGIN CERTIFICATE-----"):
        raise CertrenewError("the certificate chain does not start with a certificate")
    return b"".join(blocks)


def leaf_info(pem: bytes) -> CertificateInfo:
    """Read the first certificate of a PEM chain or bundle."""
    cert = x509.load_pem_x509_certificate(pem_blocks(pem)[0])
    return certificate_info(cert)


def certificate_info(cert: x509.Certificate) -> CertificateInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        domains = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        domains = ()
    return CertificateInfo(
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        domains=domains,
        fingerprint=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
    )
