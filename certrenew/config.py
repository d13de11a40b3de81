"""What a run is asked to do: settings and the certificates to manage."""

import re
from dataclasses import dataclass
from pathlib import Path

from certrenew.errors import UsageError
from certrenew.keys import DEFAULT_KEY_TYPE

LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


@dataclass(frozen=True)
class CertificateSpec:
    """One certificate to keep valid: its file name in the ssl dir, its names, its key."""

    name: str
    domains: tuple[str, ...]
    key_type: str = DEFAULT_KEY_TYPE


@dataclass(frozen=True)
class Settings:
    """Where to get certificates from, where to keep them, and how to make HAProxy serve them."""

    directory_url: str = LETSENCRYPT
    email: str | None = None
    agree_tos: bool = False
    ca_bundle: str | None = None
    state_dir: Path = Path("/var/lib/certrenew")
    ssl_dir: Path = Path("/etc/haproxy/ssl")
    listen: str = "127.0.0.1:49494"
    reload_command: str = "systemctl reload haproxy"
    timeout: float = 300.0
    force: bool = False


def check_certificate_name(name: str) -> str:
    """A certificate name becomes `<ssl-dir>/<name>.pem`: keep it a plain, visible file name."""
    if not _NAME.match(name):
        raise UsageError(
            f"invalid certificate name {name!r}: use letters, digits, dots, hyphens and underscores, "
            "starting with a letter or digit"
        )
    return name
