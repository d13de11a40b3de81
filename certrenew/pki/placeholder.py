"""A self-signed placeholder so HAProxy can start with `crt <dir>` before any real certificate.

HAProxy refuses to start when a `crt` directory is empty. The placeholder names a
reserved `.invalid` host, so it can never be mistaken for a site's certificate.
"""

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from certrenew.errors import UsageError
from certrenew.pki.bundle import build_bundle
from certrenew.pki.keys import generate_key, key_to_pem
from certrenew.system.atomicfile import write_atomic

PLACEHOLDER_NAME = "placeholder.certrenew.invalid"
PLACEHOLDER_FILE = "000-certrenew-placeholder.pem"


def write_placeholder(ssl_dir: Path) -> Path:
    """Create the placeholder bundle in `ssl_dir` unless it is there already; return its path."""
    path = ssl_dir / PLACEHOLDER_FILE
    if path.exists():
        return path
    if ssl_dir.exists() and not ssl_dir.is_dir():
        raise UsageError(f"the ssl dir {ssl_dir} is not a directory (--ssl-dir)")
    try:
        ssl_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the ssl dir {ssl_dir}: {error.strerror} (--ssl-dir)") from error
    key = generate_key("ecdsa-p256")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PLACEHOLDER_NAME)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(PLACEHOLDER_NAME)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_atomic(path, build_bundle(cert.public_bytes(serialization.Encoding.PEM), key_to_pem(key)))
    return path
