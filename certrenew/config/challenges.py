"""The challenge types a certificate may name, and the names each can validate at all.

Known here, below every solver: the configuration refuses a spec before any solver
exists or anything is touched (see `certrenew.challenge.solver` for the solvers).
"""

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from certrenew.errors import UsageError
from certrenew.pki.domains import is_ip_address, normalize_domain

HTTP_01 = "http-01"
DNS_01 = "dns-01"
TLS_ALPN_01 = "tls-alpn-01"
RESPONDER, STATELESS = "responder", "stateless"
MODES = (RESPONDER, STATELESS)
"""The --http-01-mode values: certrenew's responder behind HAProxy answers, or every HAProxy node by itself."""


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
