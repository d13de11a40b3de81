"""HAProxy bundles (leaf, chain, key in one PEM) and the facts read from a certificate."""

import datetime
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding

from certrenew.errors import CertrenewError, ConfigurationError
from certrenew.pki.keys import is_key_of, load_key

CLOCK_SKEW = datetime.timedelta(minutes=5)
"""How far in the future a new certificate's notBefore may be: our clock or the CA's may be a little off
(Boulder backdates an hour; pebble does not backdate at all)."""
CLOCK_AHEAD = datetime.timedelta(hours=1)
"""How far this host's clock may be ahead of the CA's: Let's Encrypt backdates an hour anyway, and no
renewal point (a fraction of a lifetime of days, an ARI window of hours) is finer than that."""


def check_clock(ca_ahead: datetime.timedelta | None) -> None:
    """Refuse to order while this host's clock is behind the CA's by more than CLOCK_SKEW (a CA
    that does not backdate issues certificates `check_issued` would throw away, an order each),
    or ahead of it by more than CLOCK_AHEAD (certificates look older than they are: renewed on
    every pass once past the renewal point, thrown away as expired once past their lifetime).
    A skew within both passes in silence; it shifts no renewal decision that matters.
    """
    if ca_ahead is None or -CLOCK_AHEAD <= ca_ahead <= CLOCK_SKEW:
        return
    behind = ca_ahead > CLOCK_SKEW
    harm = ("a certificate issued now would be refused as not yet valid" if behind else
            "certificates would look older than they are (renewed on every run, or thrown away as expired)")
    raise ConfigurationError(
        f"this host's clock is {abs(ca_ahead.total_seconds()) / 60:.0f} min {'behind' if behind else 'ahead of'} "
        f"the CA's (the Date of its answer): {harm}; nothing was ordered; sync the clock (chrony, "
        "systemd-timesyncd) and run again")


@dataclass(frozen=True)
class CertificateInfo:
    """What certrenew needs to know about a leaf certificate."""

    serial: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    domains: tuple[str, ...]
    """The DNS names of its SAN, then its IP addresses (in canonical form, as `domains` writes them)."""
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


def check_issued(fullchain_pem: bytes, key_pem: bytes, domains: Iterable[str], now: datetime.datetime) -> bytes:
    """The bundle for what the CA returned, once it is proven to be the certificate we ordered.

    HAProxy refuses a bundle whose key does not match, and serves a certificate for the
    wrong names or an expired one as if it were fine; what reaches the ssl dir must be
    a parsable chain, each certificate signed by the next, whose leaf carries our key,
    exactly our names (in any order: Boulder sorts them, pebble does not) and is valid now.
    The chain is kept as the CA sent it, however many intermediates.
    """
    try:
        blocks = pem_blocks(fullchain_pem)
    except CertrenewError as error:
        raise CertrenewError(f"the CA's answer is not a certificate chain: {error}") from error
    if not blocks:
        raise CertrenewError("the CA's answer is not a certificate chain: it holds no PEM certificate")
    try:
        chain = certificates(blocks)
    except CertrenewError as error:
        raise CertrenewError(f"the CA's answer is not a certificate chain: {error}") from error
    leaf = chain[0]
    if not is_key_of(load_key(key_pem), leaf):
        raise CertrenewError("the certificate the CA returned is not for our key")
    names, ordered = set(certificate_info(leaf).domains), {domain.lower() for domain in domains}
    if {name.lower() for name in names} != ordered:
        raise CertrenewError(f"the certificate the CA returned is for {', '.join(sorted(names)) or 'no name'}, "
                             f"not the ordered {', '.join(sorted(ordered))}")
    if now >= leaf.not_valid_after_utc:
        raise CertrenewError(f"the certificate the CA returned expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if now + CLOCK_SKEW < leaf.not_valid_before_utc:
        raise CertrenewError("the certificate the CA returned is not valid before "
                             f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    problem = chain_problem(chain)
    if problem:
        raise CertrenewError(f"the chain the CA returned is broken: {problem}")
    return build_bundle(fullchain_pem, key_pem)


def chain_problem(chain: list[x509.Certificate]) -> str | None:
    """Why `chain` is not each certificate signed by the next one, or None."""
    for number, (cert, issuer) in enumerate(zip(chain, chain[1:]), 1):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            return (f"certificate {number} ({cert.subject.rfc4514_string()}) is not signed by the next one "
                    f"({issuer.subject.rfc4514_string()})")
    return None


def check_bundle(bundle: bytes) -> CertificateInfo:
    """Prove a bundle is one HAProxy can load, and return its leaf: certificates, then the
    private key of the first.

    HAProxy refuses to load a bundle whose key does not match, so one reaching the ssl dir
    would fail the next reload (and every start after it). Checked for a pending bundle a
    run left, and again at install, whatever path a bundle came by.
    """
    try:
        blocks = pem_blocks(bundle)
        if len(blocks) < 2:
            raise CertrenewError("it is not a certificate chain followed by a key")
        chain = certificates(blocks[:-1])
    except CertrenewError as error:
        raise CertrenewError(f"cannot be parsed: {error}") from error
    try:
        key = load_key(blocks[-1])
    except (ValueError, TypeError, UnsupportedAlgorithm) as cause:
        raise CertrenewError(f"cannot be parsed: block {len(blocks)} is not a private key") from cause
    if not is_key_of(key, chain[0]):
        raise CertrenewError("holds a key that is not its certificate's")
    return certificate_info(chain[0])


def certificates(blocks: list[bytes]) -> list[x509.Certificate]:
    """Each PEM block as a certificate; CertrenewError naming the first that is not one."""
    chain = []
    for number, block in enumerate(blocks, 1):
        try:
            if not block.startswith(b"-----BEGIN CERTIFICATE-----\n"):
                raise ValueError
            chain.append(x509.load_pem_x509_certificate(block))
        except ValueError as cause:
            raise CertrenewError(f"block {number} is not a parsable certificate") from cause
    return chain


def leaf_certificate(pem: bytes) -> x509.Certificate:
    """The first certificate of a PEM chain or bundle: the leaf."""
    return x509.load_pem_x509_certificate(pem_blocks(pem)[0])


def leaf_info(pem: bytes) -> CertificateInfo:
    """Read the first certificate of a PEM chain or bundle."""
    return certificate_info(leaf_certificate(pem))


def serial_hex(number: int) -> str:
    """A serial as openssl and HAProxy print it: hex in whole bytes, so an even number of digits
    (lower case). One spelling in every output, record and hook, so that grep finds it."""
    digits = format(number, "x")
    return digits.zfill(len(digits) + len(digits) % 2)


def certificate_info(cert: x509.Certificate) -> CertificateInfo:
    return CertificateInfo(
        serial=serial_hex(cert.serial_number),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        domains=san_names(cert),
        fingerprint=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
    )


def san_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The names of the certificate's subjectAltName: its DNS names as it lists them, then its IP
    addresses (RFC 8738) in canonical form."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return (*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress)))
