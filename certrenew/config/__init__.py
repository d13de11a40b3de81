"""What a run is asked to do: settings and the certificates to manage.

Each setting is declared once, as an `Option`; the command line, the environment
(`CERTRENEW_<NAME>`) and the TOML config file all read it from that declaration, and
they override each other in that order.
"""

import datetime
import math
import os
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from certrenew.config.challenges import DNS_01, HTTP_01, MODES, RESPONDER, STATELESS, TLS_ALPN_01, check_domains
from certrenew.config.dns import (
    DNS_OPTIONS,
    PROPAGATION_TIMEOUT,
    DnsServer,
    DnsSettings,
    dns_settings,
    parse_dns_server,
    split_dns_hook,
)
from certrenew.errors import UsageError
from certrenew.pki.domains import is_ip_address, normalize_domain, normalize_domains
from certrenew.pki.keytypes import DEFAULT_KEY_TYPE, KEY_TYPES, check_key_type
from certrenew.system.command import split_command
from certrenew.system.hostport import check_address, check_host_port, split_host_port
from certrenew.system.limits import MAX_CONFIG, Unfit, read_regular
from certrenew.system.listen import DEFAULT_LISTEN, DEFAULT_TLS_ALPN_LISTEN, check_listen, parse_listen

_P = TypeVar("_P", str, Path)
LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
DEFAULT_CONFIG = Path("/etc/certrenew/certrenew.toml")

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,200}")
WILDCARD_PREFIX = "_wildcard."
"""A wildcard certificate's default name: `*.example.com` -> `_wildcard.example.com` (as mkcert names it)."""
IP_PREFIX = "ip-"
"""An IP address certificate's default name: `192.0.2.1` -> `ip-192.0.2.1`, `2001:db8::1` -> `ip-2001-db8--1`."""
_CRT_STORE = re.compile(r"@[^/\s]+/\S+")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([dhms])$")
_UNITS = MappingProxyType({"d": "days", "h": "hours", "m": "minutes", "s": "seconds"})
MAX_SECONDS = 86400.0
"""The longest --timeout or --lock-timeout: a day. Anything longer is a typo, not a budget."""
MAX_CONCURRENCY = 64
"""The most orders at once: each is a thread with its own connections to the CA, and a public CA's
rate limits stop far fewer; a larger number is a typo, not a plan."""
MAX_RENEW_BEFORE = datetime.timedelta(days=1000)
"""Longer than any certificate lives: a longer --renew-before would renew on every run."""


@dataclass(frozen=True)
class CertificateSpec:
    """One certificate to keep valid: its file name in the ssl dir, its names, its key."""

    name: str
    domains: tuple[str, ...]
    key_type: str = DEFAULT_KEY_TYPE
    profile: str | None = None
    """An ACME profile (e.g. "shortlived") to ask for; only where the CA's directory lists it."""
    challenge: str = HTTP_01
    """The ACME challenge type that proves control of the names (see `certrenew.acme.solver`)."""
    dns: DnsSettings | None = None
    """For DNS-01: where and how its records are published."""
    crt_list_options: str = ""
    """What follows the bundle's path on its line of the --crt-list file: `[bind options]` and SNI filters."""
    crt_store: str | None = None
    """The crt-store entry (`@<store>/<alias>`) HAProxy loads the bundle's file as, to replace it under that name."""
    checked: bool = field(default=False, init=False, compare=False, repr=False)
    """Made by `certificate_specs`, which normalized its domains and checked its name: a run over
    10,000 need not check them again. Not an argument, and never copied by `dataclasses.replace`."""

    @property
    def solver_key(self) -> Hashable:
        """Which of a run's solvers answers this certificate: the one of its challenge type,
        for DNS-01 the one of its DNS settings (they may differ from certificate to certificate)."""
        return self.dns if self.dns is not None else self.challenge

    def order_settings(self, directory: str) -> str:
        """What an order depends on (these settings and the CA's directory URL), to tell a retry from a
        new attempt: a change ends a back-off (one earned against a mistyped URL ends when it is fixed)
        and starts a fresh order budget (a switch from staging to production is not a loop)."""
        return f"{','.join(self.domains)} {self.key_type} {self.profile or '-'} {self.challenge} {directory}"


@dataclass(frozen=True)
class Ca:
    """A CA to order from: its ACME directory, the bundle its TLS is checked against, and the binding its
    new account takes."""

    directory: str
    ca_bundle: str | None = None
    eab_kid: str | None = None
    eab_hmac_key_file: Path | None = None


@dataclass(frozen=True)
class AcmeSettings:
    """The account and the CAs it orders from: what the issuer, revoke and the CA checks use."""

    directory: str = LETSENCRYPT
    staging: bool = False
    email: str | None = None
    agree_tos: bool = False
    eab_kid: str | None = None
    eab_hmac_key_file: Path | None = None
    ca_bundle: str | None = None
    fallback_directory: tuple[str, ...] = ()
    fallback_ca: tuple[Ca, ...] = ()
    """What a config file's [ca."URL"] tables give a fallback CA of its own: a CA bundle, an account binding."""
    timeout: float = 300.0
    caa_check: bool = False
    caa_resolver: DnsServer | None = None
    caa_identity: tuple[str, ...] = ()

    @property
    def directory_url(self) -> str:
        return LETSENCRYPT_STAGING if self.staging and self.directory == LETSENCRYPT else self.directory

    @property
    def cas(self) -> tuple[Ca, ...]:
        """The CAs in the order an order tries them: the directory with the top-level CA bundle and account
        binding, then each fallback with its own (`fallback_ca`). A binding's key id belongs to one CA, so a
        fallback has none unless its table gives one; its CA bundle is the top-level one unless given."""
        first = Ca(self.directory_url, self.ca_bundle, self.eab_kid, self.eab_hmac_key_file)
        own = {ca.directory: ca for ca in self.fallback_ca}
        fallbacks = [own.get(url, Ca(url)) for url in self.fallback_directory if url != first.directory]
        return (first, *(replace(ca, ca_bundle=ca.ca_bundle or self.ca_bundle) for ca in fallbacks))

    @property
    def directory_urls(self) -> tuple[str, ...]:
        """Every CA a certificate may come from without being reissued."""
        return tuple(ca.directory for ca in self.cas)


@dataclass(frozen=True)
class HaproxySettings:
    """The HAProxy this node installs into and checks: what the installer, revoke and the pre-flight use."""

    ssl_dir: Path = Path("/etc/haproxy/ssl")
    reload_command: str = "systemctl reload haproxy"
    haproxy_socket: tuple[str, ...] = ()
    crt_list: Path | None = None
    haproxy_config: tuple[Path, ...] = ()
    verify_endpoint: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResponderSettings:
    """Where the HTTP-01 and TLS-ALPN-01 responders listen, and how the self-check reaches them."""

    listen: str = DEFAULT_LISTEN
    tls_alpn_listen: str = DEFAULT_TLS_ALPN_LISTEN
    self_check: bool = True
    self_check_address: str | None = None
    self_check_tls_address: str | None = None
    http_01_mode: str = RESPONDER
    http_01_node: tuple[str, ...] = ()


@dataclass(frozen=True)
class CertificateDefaults:
    """What a certificate takes when it does not say (a [[certificate]] table, or the domains of `issue`)."""

    key_type: str = DEFAULT_KEY_TYPE
    profile: str | None = None
    challenge: str = HTTP_01
    dns_server: DnsServer | None = None
    tsig_key: Path | None = None
    dns_zone: str | None = None
    dns_hook: str | None = None
    dns_propagation_timeout: float = PROPAGATION_TIMEOUT
    crt_list_options: str | None = None

    def dns(self) -> DnsSettings | None:
        """The DNS settings of a certificate that takes these (see `dns_settings`)."""
        return dns_settings(self.challenge, {name: getattr(self, name) for name in DNS_OPTIONS})


@dataclass(frozen=True)
class HookSettings:
    """The operator's commands around a run and after each certificate served."""

    pre_hook: str | None = None
    post_hook: str | None = None
    deploy_hook: str | None = None
    hook_timeout: float = 60.0


@dataclass(frozen=True)
class DaemonSettings:
    """What only the daemon and the metrics use: its timer and where the metrics go."""

    metrics_file: Path | None = None
    metrics_listen: str | None = None
    check_interval: datetime.timedelta = datetime.timedelta(hours=1)
    reconcile_interval: datetime.timedelta = datetime.timedelta(minutes=15)
    """On a shared store: how often the daemon compares all its HAProxy serves with the store, whatever its
    watch brought (the backstop for a missed event); 15 min, the interval docs/simulation.md chose."""


@dataclass(frozen=True)
class FleetSettings:
    """How this node reaches a shared store (etcd) and names itself in it: what `open_store` uses."""

    node_name: str | None = None
    """This node in the fleet's lock holders; None: the host name."""
    store_ca_bundle: Path | None = None
    store_cert: Path | None = None
    store_key: Path | None = None
    store_user: str | None = None
    store_password_file: Path | None = None
    store_key_file: Path | None = None


_SLICES = MappingProxyType({"acme": AcmeSettings, "haproxy": HaproxySettings, "responder": ResponderSettings,
                            "certificate": CertificateDefaults, "hooks": HookSettings, "daemon": DaemonSettings,
                            "fleet": FleetSettings})
_SLICE_OF = MappingProxyType({option.name: where for where, kind in _SLICES.items() for option in fields(kind)})
"""Which slice of `Settings` holds each option, by the option's name."""


@dataclass(frozen=True)
class Settings:
    """Where to get certificates from, where to keep them, and how to make HAProxy serve them.

    Made of slices, each handed whole to the component that uses it (the issuer gets `acme`,
    the installer `haproxy`, ...), and the few settings of the run itself. Each slice's
    fields are named after their options (`Settings.of`, `option`).
    """

    acme: AcmeSettings = field(default_factory=AcmeSettings)
    haproxy: HaproxySettings = field(default_factory=HaproxySettings)
    responder: ResponderSettings = field(default_factory=ResponderSettings)
    certificate: CertificateDefaults = field(default_factory=CertificateDefaults)
    hooks: HookSettings = field(default_factory=HookSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    fleet: FleetSettings = field(default_factory=FleetSettings)
    state_dir: Path = Path("/var/lib/certrenew")
    renew_before: datetime.timedelta | None = None
    concurrency: int = 4
    lock_timeout: float = 300.0
    store: str | None = None
    lock_ttl: float = 60.0
    force: bool = False

    @classmethod
    def of(cls, **options: Any) -> "Settings":
        """Settings from options by their names, as the command line, the environment and the config file give them."""
        return cls().with_options(**options)

    def with_options(self, **options: Any) -> "Settings":
        """A copy with these options (by their names) changed."""
        changes: dict[str | None, dict[str, Any]] = {}
        for name, value in options.items():
            changes.setdefault(_SLICE_OF.get(name), {})[name] = value
        own = changes.pop(None, {})
        own.update((where, replace(getattr(self, where), **values)) for where, values in changes.items()
                   if where is not None)
        return replace(self, **own)

    def option(self, name: str) -> Any:
        """The value of the option `name`, in whichever slice holds it."""
        where = _SLICE_OF.get(name)
        return getattr(getattr(self, where) if where else self, name)


def parse_duration(text: str) -> datetime.timedelta:
    """"30d", "12h", "90m" or "45s" as a timedelta."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"invalid duration {text!r}: write a number and d, h, m or s, e.g. 30d or 12h")
    return datetime.timedelta(**{_UNITS[match[2]]: float(match[1])})


def split_key_types(key_types: str | list[str]) -> list[str]:
    """One key type, or an ECDSA and an RSA one (a list, or separated by a comma) for a dual certificate."""
    items = key_types.split(",") if isinstance(key_types, str) else key_types
    types = [check_key_type(str(item).strip()) for item in items]
    if not types:
        raise UsageError("no key type given: name one, or an ECDSA and an RSA one")
    if len(types) > 1 and sorted(t.startswith("rsa") for t in types) != [False, True]:
        raise UsageError(f"a dual certificate takes one ECDSA and one RSA key type (e.g. ecdsa-p256,rsa2048), "
                         f"not {','.join(types)}")
    return types


def check_key_types(key_types: str) -> str:
    """The `key_type` option: kept as written, checked here so a bad one fails before the CA is asked."""
    split_key_types(key_types)
    return key_types


def certificate_specs(name: str | None, domains: Sequence[str], key_types: str | list[str], profile: str | None = None,
                      challenge: str = HTTP_01, dns: DnsSettings | None = None,
                      crt_list_options: str | None = None, crt_store: str | None = None) -> list[CertificateSpec]:
    """The certificates kept for `name` (by default named after the first domain): one `<name>`, or for
    a dual certificate `<name>.<key type>` per key type; `domains` are normalized here.

    HAProxy holding an ECDSA and an RSA certificate for the same names serves ECDSA to
    clients that support it and RSA to the others. Each is issued, renewed and recorded
    on its own, and a run installs both in one batch. Names the challenge type cannot
    validate (a wildcard over HTTP-01) are refused here, before anything is touched.
    """
    normalized = tuple(normalize_domains(list(domains)))
    check_domains(challenge, normalized)
    name = check_certificate_name(name if name is not None else default_certificate_name(normalized[0]))
    types = split_key_types(key_types)
    if crt_store is not None and len(types) > 1:
        raise UsageError(f"crt_store names one certificate, not the {len(types)} of a dual one: give each its own "
                         "[[certificate]] and crt-store entry")
    names = [name] if len(types) == 1 else [check_certificate_name(f"{name}.{t}") for t in types]
    specs = [CertificateSpec(n, normalized, t, profile, challenge, dns, crt_list_options or "", crt_store)
             for n, t in zip(names, types)]
    for spec in specs:
        object.__setattr__(spec, "checked", True)  # frozen, and no argument: only this function sets it
    return specs


def default_certificate_name(domain: str) -> str:
    """A certificate is named after its first domain; a wildcard's `*` would be a glob in a file name, an IPv6
    address's `:` a separator in HAProxy's Runtime API commands and in PATH-like lists, so both are replaced."""
    if domain.startswith("*."):
        return WILDCARD_PREFIX + domain[2:]
    return IP_PREFIX + domain.replace(":", "-") if is_ip_address(domain) else domain


def _flag(raw: str | bool) -> bool:
    """A boolean as the environment (or a `--flag`/`--no-flag` pair, already a bool) gives it."""
    if isinstance(raw, bool):
        return raw
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected 1/true/yes/on or 0/false/no/off, not {raw!r}")


def env_flag(name: str, environ: Mapping[str, str] = os.environ) -> bool | None:
    """The boolean environment variable `name`, or None if unset; parsed as every boolean setting is."""
    if name not in environ:
        return None
    try:
        return _flag(environ[name])
    except ValueError as error:
        raise UsageError(f"invalid {name}: {error}") from error


def _concurrency(value: int) -> int:
    if not 1 <= value <= MAX_CONCURRENCY:
        raise ValueError(f"must be a whole number from 1 to {MAX_CONCURRENCY}")
    return value


def _seconds(zero_allowed: bool) -> Callable[[float], float]:
    """A check for a number of seconds: finite, not negative (nor zero unless allowed), at most a day."""
    def check(value: float) -> float:
        if not (math.isfinite(value) and (value >= 0 if zero_allowed else value > 0) and value <= MAX_SECONDS):
            low = "0" if zero_allowed else "more than 0"
            raise ValueError(f"must be a number of seconds from {low} to {MAX_SECONDS:g} (a day)")
        return value
    return check


def _renew_before(text: str) -> datetime.timedelta:
    try:
        duration = parse_duration(text)
    except OverflowError:
        duration = MAX_RENEW_BEFORE
    if duration >= MAX_RENEW_BEFORE:
        raise ValueError(f"{text.strip()} is longer than any certificate lives (at most {MAX_RENEW_BEFORE.days - 1}d)")
    return duration


def _check_interval(text: str) -> datetime.timedelta:
    try:
        duration = parse_duration(text)
    except OverflowError:
        duration = datetime.timedelta.max
    if not datetime.timedelta(seconds=1) <= duration <= datetime.timedelta(seconds=MAX_SECONDS):
        raise ValueError(f"{text.strip()} is not between 1s and 1d")
    return duration


def _node_name(name: str) -> str:
    if not name.strip() or any(not char.isprintable() for char in name):
        raise ValueError(f"{name!r} is not a node name: printable text, not empty")
    return name


def _command(text: str) -> str:
    """The reload command or a hook, checked for shell-like quoting now, so a typo fails before the CA is asked."""
    split_command(text)
    return text


def _challenge(challenge: str) -> str:
    check_domains(challenge, ())
    return challenge


def _http_01_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{mode!r} is not one of {', '.join(MODES)}")
    return mode


def _profile(name: str) -> str:
    if name.split() != [name]:
        raise ValueError(f"{name!r} is not a profile name (e.g. shortlived)")
    return name


def _dns_zone(zone: str) -> str:
    zone = normalize_domain(zone)
    if "*" in zone or is_ip_address(zone):
        raise ValueError(f"{zone!r} is not a zone name")
    return zone


def _dns_hook(command: str) -> str:
    split_dns_hook(command)  # as it will be run: an unclosed quote fails here
    return command


def _directory_url(url: str) -> str:
    """The CA's directory: HTTPS only, since TLS is what makes the answers the CA's. Over plain HTTP anyone
    on the path could hand back a chain of their own for our key and names, and it would pass every check."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"{url!r} is not an https:// URL, e.g. {LETSENCRYPT}")
    return url


def _eab_kid(kid: str) -> str:
    if kid.split() != [kid]:
        raise ValueError(f"{kid!r} is not a key id: give it as the CA wrote it")
    return kid


def _crt_list_options(text: str) -> str:
    """One crt-list line's options: what a line break would end, or a `#` turn into a comment, cannot be."""
    if any(char in text for char in "\r\n#"):
        raise ValueError(f"{text!r}: a crt-list line's options cannot hold a line break or a '#'")
    return text


def _existing_file(path: _P) -> _P:
    if not Path(path).is_file():
        raise ValueError(f"{path} does not exist")
    return path


_TOML_TYPES: Mapping[type, tuple[type | tuple[type, ...], str]] = MappingProxyType({
    bool: (bool, "true or false"), float: ((int, float), "a number"), int: (int, "a whole number"),
    str: (str, "a string"), Path: (str, "a string"),
})


@dataclass(frozen=True)
class Option:
    """A setting as the command line, the environment and the config file see it."""

    name: str
    help: str
    kind: type = str
    metavar: str | None = None
    check: Callable[[Any], Any] | None = None
    repeated: bool = False
    """A list: the option given several times, a comma- or space-separated variable, a TOML list."""

    @property
    def cli(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "CERTRENEW_" + self.name.upper()

    def from_text(self, raw: str | list[str]) -> Any:
        """The value of a command-line argument (a list of them if repeated) or an environment variable."""
        if self.repeated:
            if isinstance(raw, list):  # given on the command line: each counts, an empty one too
                return tuple(self._one(item) for item in raw)
            return tuple(self._one(item) for item in re.split(r"[,\s]+", raw.strip()) if item)
        return self._one(raw)

    def _one(self, raw: Any) -> Any:
        return self._checked(_flag(raw) if self.kind is bool else self._kind(raw))

    def _kind(self, raw: Any) -> Any:
        """`raw` as this option's type; an empty path is refused, as Path("") is the current directory
        (an empty CERTRENEW_STATE_DIR would put the account key wherever certrenew was started)."""
        if self.kind is Path and not str(raw).strip():
            raise ValueError("must not be empty")
        return self.kind(raw)

    def from_toml(self, value: Any) -> Any:
        if self.repeated:
            if isinstance(value, str):  # haproxy_socket = "/run/haproxy/admin.sock": a list of one, plainly meant
                value = [value]
            if not isinstance(value, list):
                raise ValueError("must be a list, e.g. [\"...\", \"...\"]")
            return tuple(self._one_from_toml(item) for item in value)
        return self._one_from_toml(value)

    def _one_from_toml(self, value: Any) -> Any:
        accepted, described = _TOML_TYPES[self.kind]
        if not isinstance(value, accepted) or (self.kind is not bool and isinstance(value, bool)):
            raise ValueError(f"must be {described}")
        return self._checked(self._kind(value))

    def _checked(self, value: Any) -> Any:
        return self.check(value) if self.check else value


OPTIONS = (
    Option("directory", "ACME directory URL, https:// (default Let's Encrypt)", metavar="URL", check=_directory_url),
    Option("staging", "use Let's Encrypt's staging CA", bool),
    Option("email", "contact address for the ACME account", metavar="ADDR"),
    Option("agree_tos", "agree to the CA's terms of service (needed to register an account)", bool),
    Option("eab_kid", "external account binding: the key id the CA gave, for a CA that binds new accounts to "
           "an account with it (ZeroSSL, Google, SSL.com, Sectigo)", metavar="KID", check=_eab_kid),
    Option("eab_hmac_key_file", "external account binding: a file (mode 600) holding the HMAC key the CA gave "
           "with the key id, base64url; read only when an account is created", Path, "PATH"),
    Option("fallback_directory", "ACME directory URL of a CA to order from when the one before cannot issue "
           "(unreachable, 5xx, rate-limited, validation failing); repeat for several, tried in order",
           metavar="URL", check=_directory_url, repeated=True),
    Option("ca_bundle", "CA bundle to verify the ACME server (default: system store or REQUESTS_CA_BUNDLE)",
           metavar="PATH", check=_existing_file),
    Option("state_dir", "accounts, keys, certificates and records (default /var/lib/certrenew)", Path, "DIR"),
    Option("ssl_dir", "HAProxy's crt directory, one <name>.pem per certificate (default /etc/haproxy/ssl)",
           Path, "DIR"),
    Option("listen", "where the HTTP-01 responder listens, behind HAProxy: a unix socket path (default "
           f"{DEFAULT_LISTEN}) or HOST:PORT", metavar="PATH|HOST:PORT", check=check_listen),
    Option("tls_alpn_listen", "where the TLS-ALPN-01 responder listens, behind HAProxy's TCP frontend on port 443 "
           f"(default {DEFAULT_TLS_ALPN_LISTEN}); only while a {TLS_ALPN_01} certificate is ordered",
           metavar="PATH|HOST:PORT", check=check_listen),
    Option("reload_command", "how to reload HAProxy, run without a shell (default 'systemctl reload haproxy')",
           metavar="CMD", check=_command),
    Option("key_type", f"{' | '.join(KEY_TYPES)} (default {DEFAULT_KEY_TYPE}); an ECDSA and an RSA type "
           "separated by a comma for a dual certificate", metavar="TYPE", check=check_key_types),
    Option("profile", "ACME profile to ask for, where the CA's directory lists profiles", metavar="NAME",
           check=_profile),
    Option("renew_before", "renew this long before expiry, e.g. 30d or 12h (default: with a third of the "
           "lifetime left, half for certificates under 10 days; earlier if the CA's ARI window says so)",
           metavar="DURATION", check=_renew_before),
    Option("concurrency", "certificates ordered at the same time (default 4, gentle on a public CA; at most "
           f"{MAX_CONCURRENCY})", int, "N", _concurrency),
    Option("timeout", "time budget for talking to the CA, in seconds (default 300)", float, "SECONDS", _seconds(zero_allowed=False)),
    Option("lock_timeout", "how long to wait for another run holding the state dir, in seconds (default 300)",
           float, "SECONDS", _seconds(zero_allowed=True)),
    Option("store", "where the state lives: a directory (default: --state-dir), or an etcd cluster shared by a "
           "fleet of nodes, etcd://HOST:PORT[,HOST:PORT...]/PREFIX", metavar="DIR|URL"),
    Option("node_name", "this node's name in a shared store's locks, as other nodes see who holds one (default: "
           "the host name)", metavar="NAME", check=_node_name),
    Option("store_ca_bundle", "etcd store: the CA bundle that signed etcd's server certificates (turns TLS on)",
           Path, "PATH", _existing_file),
    Option("store_cert", "etcd store: this node's client certificate (PEM; turns TLS on), with its key in it or in "
           "--store-key", Path, "PATH", _existing_file),
    Option("store_key", "etcd store: the private key of --store-cert, if not in that file", Path, "PATH",
           _existing_file),
    Option("store_user", "etcd store: the etcd user to log in as (its password in --store-password-file)",
           metavar="NAME"),
    Option("store_password_file", "etcd store: a file (mode 600) holding the password of --store-user",
           Path, "PATH"),
    Option("store_key_file", "etcd store (required): a file (mode 600) holding the fleet's key, 32 random bytes in "
           "base64 (`head -c 32 /dev/urandom | base64`), that encrypts every private key kept in etcd; the same "
           "on every node", Path, "PATH"),
    Option("lock_ttl", "how long a certificate's lock outlives a certrenew that stopped without exiting "
           "(paused, frozen), in seconds (default 60); one that exits lets go at once", float, "SECONDS",
           _seconds(zero_allowed=False)),
    Option("force", "renew even if not due", bool),
    Option("self_check", "before ordering, fetch a probe from http://NAME/.well-known/acme-challenge/ as the CA "
           "would, and fail without an order when it does not reach the responder (default on)", bool),
    Option("self_check_address", "where the self-check connects instead of NAME:80 (split-horizon DNS, HAProxy "
           "on another port)", metavar="HOST:PORT", check=check_host_port),
    Option("self_check_tls_address", f"where the self-check of a {TLS_ALPN_01} certificate connects instead of "
           "NAME:443", metavar="HOST:PORT", check=check_host_port),
    Option("haproxy_socket", "an HAProxy Runtime API (admin stats socket: a unix path or ipv4@HOST:PORT) to "
           "update in memory, no reload; repeat for several HAProxy processes", metavar="ADDR",
           check=check_address, repeated=True),
    Option("crt_list", "HAProxy's crt-list file a bind loads (`crt-list PATH`): each certificate is served by a "
           "line of it naming its bundle in the ssl dir, added (and removed by revoke --delete) by certrenew",
           Path, "PATH"),
    Option("crt_list_options", "what follows the bundle on its crt-list line: [bind options] and SNI filters, "
           "in HAProxy's syntax, e.g. '[alpn h2] www.example.com'", metavar="TEXT", check=_crt_list_options),
    Option("haproxy_config", "HAProxy configuration to check with 'haproxy -c' before any reload; repeat "
           "for several -f files", Path, "PATH", repeated=True),
    Option("verify_endpoint", "after installing, check that this TLS address serves the new certificate for "
           "every name, else roll back; repeat for several HAProxy nodes", metavar="HOST:PORT",
           check=check_host_port, repeated=True),
    Option("metrics_file", "after each run, write Prometheus metrics to this file (for node_exporter's "
           "textfile collector)", Path, "PATH"),
    Option("metrics_listen", "daemon: serve /metrics and /healthz on this address (off unless set; never "
           "the responder's port)", metavar="HOST:PORT", check=check_host_port),
    Option("check_interval", "daemon: look at the certificates at least this often, e.g. 30m (default 1h; up "
           "to 5%% earlier at random, so a fleet does not ask the CA in step)", metavar="DURATION",
           check=_check_interval),
    Option("reconcile_interval", "daemon on a shared store (etcd): compare every certificate this node's HAProxy "
           "serves with the store's at least this often, and install what differs, e.g. 5m (default 15m)",
           metavar="DURATION", check=_check_interval),
    Option("challenge", f"how to prove control of the names: {HTTP_01} (default, through HAProxy), {DNS_01} "
           f"(TXT records; needed for wildcards) or {TLS_ALPN_01} (through HAProxy's port 443, when port 80 is "
           "closed)", metavar="TYPE", check=_challenge),
    Option("http_01_mode", f"who answers {HTTP_01}: {RESPONDER} (default, certrenew's responder behind HAProxy) or "
           f"{STATELESS} (HAProxy itself, from the account's key thumbprint, on every node alike: put the lines "
           "`certrenew haproxy-config` prints in each node's config; no responder runs)", metavar="MODE",
           check=_http_01_mode),
    Option("http_01_node", f"a fleet's {HTTP_01} ({STATELESS}, or on a shared store): an HAProxy node's port-80 "
           "address the pre-flight probe (and `certrenew check`) proves answers the CA, instead of NAME:80; repeat "
           "for every node",
           metavar="HOST:PORT", check=check_host_port, repeated=True),
    Option("dns_server", "DNS-01: the primary DNS server to update (RFC 2136) and to find zones and name "
           "servers at", metavar="HOST[:PORT]", check=parse_dns_server),
    Option("tsig_key", "DNS-01: TSIG key file as tsig-keygen writes it (mode 600) to sign the updates with",
           Path, "PATH"),
    Option("dns_zone", "DNS-01: the zone to update (default: found by SOA lookup)", metavar="ZONE",
           check=_dns_zone),
    Option("dns_hook", "DNS-01: publish through this command instead, run without a shell as "
           "'CMD add|remove RECORD VALUE'", metavar="CMD", check=_dns_hook),
    Option("dns_propagation_timeout", "DNS-01: how long to wait until every name server of the zone "
           "answers the record, in seconds (default 120)", float, "SECONDS", _seconds(zero_allowed=True)),
    Option("caa_check", "before ordering, look up each name's CAA records (RFC 8659) and refuse, without an "
           "order, a name they forbid to this CA, account or challenge (default off)", bool),
    Option("caa_resolver", "CAA: the DNS resolver to ask (default: the system's)", metavar="HOST[:PORT]",
           check=parse_dns_server),
    Option("caa_identity", "CAA: the CA's issuer domain (e.g. letsencrypt.org) when its directory lists none "
           "(caaIdentities); repeat for several", metavar="DOMAIN", check=_dns_zone, repeated=True),
    Option("pre_hook", "run before a run that has work (not on a no-op); if it fails, nothing is renewed",
           metavar="CMD", check=_command),
    Option("post_hook", "run after a run that had work, even if the work or the pre-hook failed",
           metavar="CMD", check=_command),
    Option("deploy_hook", "run once for each certificate HAProxy serves since this run, with CERTRENEW_NAME, "
           "_DOMAINS, _BUNDLE, _SERIAL, _NOT_AFTER and _ACTION in its environment", metavar="CMD",
           check=_command),
    Option("hook_timeout", "seconds a hook may run before it is killed (default 60)", float, "SECONDS",
           _seconds(zero_allowed=False)),
)
OPTION_NAMED = MappingProxyType({option.name: option for option in OPTIONS})
STORE_OPTIONS = ("state_dir", "store", "lock_ttl", *(field.name for field in fields(FleetSettings)))
"""Where the state is and how to reach it: every command that reads the state takes them."""
CLI_ONLY = frozenset({"force"})
"""Options that make sense for one invocation, not as a standing setting in a file."""


@dataclass(frozen=True)
class ConfigFile:
    """A parsed config file: top-level settings and the certificates it manages."""

    path: Path
    settings: dict = field(default_factory=dict)
    certificates: list[CertificateSpec] = field(default_factory=list)


def build_settings(cli: Mapping[str, Any], config: ConfigFile | None = None,
                   environ: Mapping[str, str] = os.environ) -> Settings:
    """Settings from the command line, else the environment, else the config file, else defaults."""
    values = dict(config.settings) if config else {}
    for option in OPTIONS:
        if option.env in environ:
            try:
                values[option.name] = option.from_text(environ[option.env])
            except (ValueError, UsageError) as error:
                raise UsageError(f"invalid {option.env}: {error}") from error
        if cli.get(option.name) is not None:
            try:
                values[option.name] = option.from_text(cli[option.name])
            except (ValueError, UsageError) as error:
                raise UsageError(f"invalid {option.cli}: {error}") from error
    settings = Settings.of(**values)
    acme, listen, metrics_listen = settings.acme, settings.responder.listen, settings.daemon.metrics_listen
    if acme.staging and acme.directory != LETSENCRYPT:
        raise UsageError(f"--staging and --directory ({acme.directory}) both name a CA; pass one")
    if (acme.eab_kid is None) != (acme.eab_hmac_key_file is None):
        raise UsageError("an external account binding takes both the key id (--eab-kid) and the file of its HMAC "
                         "key (--eab-hmac-key-file)")
    if settings.responder.http_01_node and settings.responder.http_01_mode != STATELESS and not settings.store:
        raise UsageError(f"--http-01-node names the HAProxy nodes of a fleet, each answering {HTTP_01}: by "
                         f"itself (--http-01-mode {STATELESS}), or from a shared store (--store etcd://...)")
    fleet = settings.fleet
    if (fleet.store_user is None) != (fleet.store_password_file is None):
        raise UsageError("an etcd login takes both the user (--store-user) and the file of its password "
                         "(--store-password-file)")
    if fleet.store_key is not None and fleet.store_cert is None:
        raise UsageError("--store-key is the key of a client certificate: give the certificate too (--store-cert)")
    unlisted = sorted({ca.directory for ca in acme.fallback_ca} - set(acme.fallback_directory))
    if unlisted:
        raise UsageError(f'[ca."{unlisted[0]}"] describes no fallback CA: add it to fallback_directory '
                         "(--fallback-directory), or remove the table")
    if metrics_listen and split_host_port(metrics_listen)[1] == parse_listen(listen).port:
        # The responder's port is the one the internet reaches through HAProxy.
        raise UsageError(f"the metrics address {metrics_listen} (--metrics-listen) uses the responder's "
                         f"port (--listen {listen}); choose another port")
    return settings


def check_certificate_name(name: str) -> str:
    """A certificate name becomes `<ssl-dir>/<name>.pem`: keep it a plain, visible file name."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UsageError(
            f"invalid certificate name {name!r}: use letters, digits, dots, hyphens and underscores, "
            "starting with a letter, digit or underscore"
        )
    return name


def load_config(path: Path) -> ConfigFile:
    """Read and validate a TOML config file; every error names the file and the key.

    Whatever is in its place, the answer is a config or one UsageError: a FIFO, a device,
    a directory or a file over MAX_CONFIG is refused unread (`limits.read_regular`), and
    TOML nested too deeply for the parser (RecursionError) is refused like any other error.
    """
    import tomli  # here: `certrenew NAME` without a config file parses no TOML

    try:
        data = tomli.loads(read_regular(path, MAX_CONFIG, commands=True).decode())
    except Unfit as unfit:
        raise UsageError(f"cannot read config file {path}: {unfit}") from unfit
    except OSError as error:
        raise UsageError(f"cannot read config file {path}: {error.strerror}") from error
    except (tomli.TOMLDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise UsageError(f"{path}: {error}") from error

    settings = {}
    for key, value in data.items():
        if key in ("certificate", "ca"):
            continue
        if key not in OPTION_NAMED or key in CLI_ONLY:
            raise _unknown_key(str(path), key, [*sorted(set(OPTION_NAMED) - CLI_ONLY), "[[certificate]]", '[ca."URL"]'])
        try:
            settings[key] = OPTION_NAMED[key].from_toml(value)
        except (ValueError, UsageError) as error:
            raise UsageError(f"{path}: {key}: {error}") from error

    cas = data.get("ca", {})
    if not isinstance(cas, dict):
        raise UsageError(f'{path}: \'ca\' must be tables, one per fallback CA: write [ca."https://..."]')
    if cas:
        settings["fallback_ca"] = tuple(_fallback_ca(path, url, table) for url, table in cas.items())

    tables = data.get("certificate", [])
    if not isinstance(tables, list):
        raise UsageError(f"{path}: 'certificate' must be an array of tables: write [[certificate]]")
    certificates = [spec for index, table in enumerate(tables, 1)
                    for spec in _certificate(path, index, table, settings)]
    names: set[str] = set()
    for spec in certificates:
        if spec.name in names:
            raise UsageError(f"{path}: two certificates are named {spec.name!r}")
        names.add(spec.name)
    return ConfigFile(path, settings, certificates)


CA_KEYS = ("ca_bundle", "eab_kid", "eab_hmac_key_file")
"""What a [ca."URL"] table may give its fallback CA."""


def _fallback_ca(path: Path, url: str, table: Any) -> Ca:
    where = f'{path}: [ca."{url}"]'
    if not isinstance(table, dict):
        raise UsageError(f"{where}: must be a table")
    unknown = table.keys() - set(CA_KEYS)
    if unknown:
        raise UsageError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(CA_KEYS)})")
    try:
        directory = _directory_url(url)
    except ValueError as error:
        raise UsageError(f"{where}: {error}") from error
    own = {}
    for key in CA_KEYS:
        if key in table:
            try:
                own[key] = OPTION_NAMED[key].from_toml(table[key])
            except (ValueError, UsageError) as error:
                raise UsageError(f"{where}: {key}: {error}") from error
    if ("eab_kid" in own) != ("eab_hmac_key_file" in own):
        raise UsageError(f"{where}: an external account binding takes both eab_kid and eab_hmac_key_file")
    return Ca(directory, **own)


def _unknown_key(where: str, key: str, known: Sequence[str]) -> UsageError:
    """The key meant (agree-tos, written as on the command line, is agree_tos), else every known one."""
    import difflib  # here: only a mistake needs it

    close = difflib.get_close_matches(key.replace("-", "_"), known, n=1, cutoff=0.7)
    if close:
        return UsageError(f"{where}: unknown key {key!r}: did you mean {close[0]!r}?")
    return UsageError(f"{where}: unknown key {key!r} (known: {', '.join(known)})")


CERTIFICATE_OPTIONS = ("challenge", *DNS_OPTIONS, "crt_list_options")
"""The options a [[certificate]] table may set for itself, besides its names, key type and profile."""
CERTIFICATE_KEYS = ("name", "domains", "key_type", "profile", "crt_store", *CERTIFICATE_OPTIONS)


def _certificate(path: Path, index: int, table: Any, defaults: dict) -> list[CertificateSpec]:
    where = f"{path}: certificate #{index}"
    if not isinstance(table, dict):
        raise UsageError(f"{where}: must be a table")
    unknown = table.keys() - CERTIFICATE_KEYS
    if unknown:
        raise _unknown_key(where, sorted(unknown)[0], CERTIFICATE_KEYS)
    domains = table.get("domains")
    if isinstance(domains, str):  # domains = "example.com": a list of one
        domains = [domains]
    if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
        raise UsageError(f"{where}: domains must be a list of strings")
    try:  # checked as the top-level key is: "short lived" would reach the CA, and fail there with a back-off
        profile = OPTION_NAMED["profile"].from_toml(table["profile"]) if "profile" in table else defaults.get("profile")
    except ValueError as error:
        raise UsageError(f"{where}: profile {error}") from error
    crt_store = table.get("crt_store")
    if crt_store is not None and not (isinstance(crt_store, str) and _CRT_STORE.fullmatch(crt_store)):
        raise UsageError(f"{where}: crt_store must name a crt-store entry as HAProxy does, '@<store>/<alias>'")
    key_types = table.get("key_type", defaults.get("key_type", DEFAULT_KEY_TYPE))
    if not isinstance(key_types, (str, list)):
        raise UsageError(f"{where}: key_type must be a string, or a list of an ECDSA and an RSA type")
    own = {}
    for key in CERTIFICATE_OPTIONS:
        if key in table:
            try:
                own[key] = OPTION_NAMED[key].from_toml(table[key])
            except (ValueError, UsageError) as error:
                raise UsageError(f"{where}: {key}: {error}") from error
    challenge = own.get("challenge", defaults.get("challenge", HTTP_01))
    if challenge != DNS_01 and own.keys() & DNS_OPTIONS:
        raise UsageError(f"{where}: {sorted(own.keys() & DNS_OPTIONS)[0]} is for a certificate with "
                         f'challenge = "{DNS_01}"')
    try:
        return certificate_specs(table.get("name"), domains, key_types, profile, challenge,
                                 dns_settings(challenge, {**defaults, **own}) if challenge == DNS_01 else None,
                                 own.get("crt_list_options", defaults.get("crt_list_options")), crt_store)
    except UsageError as error:
        raise UsageError(f"{where}: {error}") from error
