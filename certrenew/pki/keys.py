"""Private keys and certificate signing requests."""

import ipaddress
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certrenew.pki.domains import is_ip_address
from certrenew.pki.keytypes import KEY_TYPES, check_key_type

_CURVES = MappingProxyType({"ecdsa-p256": ec.SECP256R1, "ecdsa-p384": ec.SECP384R1})


def generate_key(key_type: str):
    """A fresh private key of `key_type` (a new key for every certificate)."""
    check_key_type(key_type)
    if key_type in _CURVES:
        return ec.generate_private_key(_CURVES[key_type]())
    return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))


def key_to_pem(key) -> bytes:
    """PKCS#8 PEM without encryption: HAProxy reads the key from the bundle unattended."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes):
    return serialization.load_pem_private_key(pem, password=None)


def is_key_of(key, certificate: x509.Certificate) -> bool:
    """Whether `key` (private) is the key `certificate` was issued for: HAProxy refuses a bundle where it is not."""
    return _spki(key.public_key()) == _spki(certificate.public_key())


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def make_csr(key, domains: list[str]) -> bytes:
    """A PEM CSR naming every domain (an IP address as an iPAddress) in the SAN.

    The first domain is also the common name when it is a DNS name that fits the
    64-character limit of that field; CAs read the SAN either way (and Let's Encrypt
    puts no IP address in a common name).
    """
    subject = ([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])]
               if len(domains[0]) <= 64 and not is_ip_address(domains[0]) else [])
    names = [x509.IPAddress(ipaddress.ip_address(d)) if is_ip_address(d) else x509.DNSName(d) for d in domains]
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(subject))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def key_type_of(public_key) -> str | None:
    """The certrenew key type name of a public key, or None for any other kind."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384"}.get(public_key.curve.name)
    if isinstance(public_key, rsa.RSAPublicKey):
        name = f"rsa{public_key.key_size}"
        return name if name in KEY_TYPES else None
    return None
