"""How DNS-01 certificates publish their records: the server, the TSIG key, the hook, as the settings give them.

Read and checked here, at the bottom, so a bad one is refused before anything is
touched; the solver that uses them (`certrenew.challenge.dns01`) is built by the run.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import shlex
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certrenew.config.challenges import DNS_01
from certrenew.errors import CertrenewError, UsageError
from certrenew.pki.domains import normalize_domain
from certrenew.system.limits import MAX_KEY_FILE, Unfit, read_regular

DNS_PORT = 53
PROPAGATION_TIMEOUT = 120.0
"""Seconds wait_ready waits for every authoritative server (--dns-propagation-timeout)."""
ALGORITHMS = ("hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512")
"""What tsig-keygen writes and dnspython signs with; hmac-md5 is left out as broken."""

_STRING = r'"([^"\\]*)"'
_KEY_FILE = re.compile(
    rf'\s*key\s+{_STRING}\s*\{{\s*algorithm\s+([A-Za-z0-9-]+)\s*;\s*secret\s+{_STRING}\s*;\s*\}}\s*;\s*'
)
"""The one statement tsig-keygen writes: key "NAME" { algorithm ALG; secret "BASE64"; };

dnspython's own tsigkeyring.from_file (recent releases only) accepts trailing garbage and a missing
algorithm; a key file is checked strictly instead, so a mistake is refused at start."""


@dataclass(frozen=True)
class DnsServer:
    """A DNS server to talk to: a host name or IP address, and a port."""

    host: str
    port: int = DNS_PORT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def ip(self) -> str:
        """Its IP address (dnspython sends only to addresses); a host name is resolved by the system."""
        try:
            return str(socket.getaddrinfo(self.host, self.port, proto=socket.IPPROTO_UDP)[0][4][0])
        except OSError as error:
            raise CertrenewError(f"DNS server {self}: cannot resolve {self.host!r}: {error}") from error


def parse_dns_server(text: str) -> DnsServer:
    """HOST[:PORT] (an IPv6 address in brackets when a port follows) as a DnsServer; UsageError if malformed."""
    host, port = text, str(DNS_PORT)
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or rest and not rest.startswith(":"):
            host = ""
        port = rest[1:] if rest else port
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise UsageError(f"invalid DNS server {text!r}: the port must be a number from 1 to 65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            normalize_domain(host)
        except UsageError as cause:
            raise UsageError(f"invalid DNS server {text!r}: expected HOST[:PORT], e.g. ns1.example.com "
                             "or 192.0.2.53:5353") from cause
    return DnsServer(host, int(port))


@dataclass(frozen=True)
class TsigKey:
    """A TSIG key as BIND names it: the key name, its HMAC algorithm and the secret."""

    name: str
    algorithm: str
    secret: bytes = field(repr=False)


def load_tsig_key(path: str | Path) -> TsigKey:
    """Read a tsig-keygen key file; UsageError (one line) if unreadable, too open, malformed or of an unknown algorithm."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = read_regular(path, MAX_KEY_FILE).decode("ascii")
    except (OSError, UnicodeDecodeError, Unfit) as error:
        raise UsageError(f"TSIG key file {path}: cannot read it: {getattr(error, 'strerror', None) or error}") from error
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"TSIG key file {path} is readable by others (mode {stat.S_IMODE(mode):04o}); "
                         f"chmod 600 it: it is a secret")
    match = _KEY_FILE.fullmatch(text)
    if match is None:
        raise UsageError(f'TSIG key file {path}: expected one key "NAME" {{ algorithm ALG; secret "BASE64"; }}; '
                         "as tsig-keygen writes it")
    name, algorithm, secret = match.groups()
    algorithm = algorithm.lower()
    if algorithm not in ALGORITHMS:
        raise UsageError(f"TSIG key file {path}: unknown algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
    try:
        decoded = base64.b64decode(secret, validate=True)
    except binascii.Error as cause:
        raise UsageError(f"TSIG key file {path}: the secret is not base64") from cause
    if not name or not decoded:
        raise UsageError(f"TSIG key file {path}: the key name and the secret must not be empty")
    return TsigKey(name, algorithm, decoded)


def split_dns_hook(command: str) -> list[str]:
    """A DNS hook (--dns-hook) as argv, split as it will be run; UsageError if it cannot be."""
    try:
        argv = shlex.split(command)
    except ValueError as error:
        raise UsageError(f"invalid DNS hook {command!r}: {error}") from error
    if not argv:
        raise UsageError("the DNS hook command is empty")
    return argv


@dataclass(frozen=True)
class DnsSettings:
    """How a DNS-01 certificate's records get published and checked (see `certrenew.challenge.dns01`, which
    `certrenew.renewal` builds the solver of).

    Hashable: the certificates of a run that share these settings share one solver.
    """

    server: DnsServer | None = None
    tsig_key: TsigKey | None = None
    hook: str | None = None
    zone: str | None = None
    propagation_timeout: float = PROPAGATION_TIMEOUT


DNS_OPTIONS = ("dns_server", "tsig_key", "dns_zone", "dns_hook", "dns_propagation_timeout")
"""The options that say how a DNS-01 certificate publishes its records."""


def dns_settings(challenge: str, options: Mapping[str, Any]) -> DnsSettings | None:
    """A certificate's DNS settings from its DNS_OPTIONS (None unless it uses DNS-01), checked together.

    The TSIG key file is read here, so a bad one is refused before anything is touched.
    """
    if challenge != DNS_01:
        return None
    server, tsig_key, hook = options.get("dns_server"), options.get("tsig_key"), options.get("dns_hook")
    if hook and tsig_key:
        raise UsageError("DNS-01 publishes with a TSIG key (--tsig-key) or a hook (--dns-hook), not both")
    if tsig_key and not server:
        raise UsageError("a TSIG key (--tsig-key) needs the DNS server that takes the updates (--dns-server)")
    if not hook and not tsig_key:
        raise UsageError("DNS-01 needs a DNS server and a TSIG key (--dns-server, --tsig-key) or a hook (--dns-hook)")
    return DnsSettings(server, load_tsig_key(tsig_key) if tsig_key else None, hook, options.get("dns_zone"),
                       options.get("dns_propagation_timeout", PROPAGATION_TIMEOUT))
