"""The challenge types a certificate may name, and the names each can validate at all.

Known here, below every solver: the configuration refuses a spec before any solver
exists or anything is touched (see `certrenew.acme.solver` for what a solver does).
"""

import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from certrenew.errors import CertrenewError, UsageError
from certrenew.pki.domains import is_ip_address, normalize_domain

HTTP_01 = "http-01"
DNS_01 = "dns-01"
TLS_ALPN_01 = "tls-alpn-01"
RESPONDER, STATELESS = "responder", "stateless"
MODES = (RESPONDER, STATELESS)
"""The --http-01-mode values: certrenew's responder behind HAProxy answers, or every HAProxy node by itself."""
TOKEN = re.compile(r"[A-Za-z0-9_-]{1,200}")
"""A challenge token (RFC 8555 section 8.1: base64url, no padding; CAs send 43 characters); it
becomes a URL path and a file name in the store (under NAME_MAX with its suffix), so nothing
else is taken, from the CA or from a request."""


def check_token(token: str) -> str:
    """`token` if it is one (see TOKEN); else CertrenewError: a CA that sends anything else is not followed."""
    if not isinstance(token, str) or not TOKEN.fullmatch(token):
        raise CertrenewError(f"refusing challenge token {token!r} from the CA: not base64url (RFC 8555 section 8.1)")
    return token


def refuse_wildcard(domain: str) -> None:
    """The domain check of a solver the CA asks on the host itself (HTTP-01, TLS-ALPN-01 by RFC 8737
    section 3): a wildcard has no host to ask."""
    if domain.startswith("*."):
        raise UsageError(
            f"invalid domain {domain!r}: wildcard certificates need the DNS-01 challenge; "
            "HTTP-01 and TLS-ALPN-01 cannot validate them"
        )


def check_dns01_domain(domain: str) -> None:
    """The domain check of DNS-01: a DNS name, optionally with a whole wildcard first label ("*.example.com")."""
    base = domain.removeprefix("*.")
    if "*" in base:
        raise UsageError(f"invalid domain {domain!r}: a wildcard must be the whole first label, as in *.example.com")
    if is_ip_address(base):
        raise UsageError(f"{domain} is an IP address, which DNS-01 cannot validate (no zone holds its TXT record; "
                         f"RFC 8738): give it a certificate of its own with the {HTTP_01} challenge")
    normalize_domain(base)


DOMAIN_CHECKS: Mapping[str, Callable[[str], None]] = MappingProxyType({
    HTTP_01: refuse_wildcard, DNS_01: check_dns01_domain, TLS_ALPN_01: refuse_wildcard,
})
"""Each challenge type's rule for the names it can validate; a new solver adds its own."""


def check_domains(challenge_type: str, domains: Iterable[str]) -> None:
    """Raise UsageError unless `challenge_type` is known and can validate every domain."""
    check = DOMAIN_CHECKS.get(challenge_type)
    if check is None:
        raise UsageError(f"unknown challenge type {challenge_type!r}; choose one of {', '.join(DOMAIN_CHECKS)}")
    for domain in domains:
        check(domain)
