"""The challenge solver interface: how an order proves control of a name.

The HTTP-01 responder is one solver; a DNS-01 provider is another, the TLS-ALPN-01 responder a third. A solver only
publishes and withdraws what the CA will look up; the order flow stays the same.
Which names a challenge type can validate at all is known here, without the solver:
the configuration refuses a spec before any solver exists or anything is touched.
"""

import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Protocol

from certrenew.errors import CertrenewError, UsageError
from certrenew.pki.domains import is_ip_address, normalize_domain

HTTP_01 = "http-01"
DNS_01 = "dns-01"
TLS_ALPN_01 = "tls-alpn-01"
TOKEN = re.compile(r"[A-Za-z0-9_-]{1,200}")
"""A challenge token (RFC 8555 section 8.1: base64url, no padding; CAs send 43 characters); it
becomes a URL path and a file name in the store (under NAME_MAX with its suffix), so nothing
else is taken, from the CA or from a request."""


def check_token(token: str) -> str:
    """`token` if it is one (see TOKEN); else CertrenewError: a CA that sends anything else is not followed."""
    if not isinstance(token, str) or not TOKEN.fullmatch(token):
        raise CertrenewError(f"refusing challenge token {token!r} from the CA: not base64url (RFC 8555 section 8.1)")
    return token


class ChallengeSolver(Protocol):
    """Publishes validation data where the CA will look for it (lego's Provider + PreSolver).

    Created by the caller (the run, the daemon) and handed to the issuer by challenge
    type; one that holds a resource (a port) is a context manager the caller enters.
    It must be thread-safe: several orders run at once.
    """

    challenge_type: str
    """The ACME challenge type this solver answers: "http-01", "dns-01", "tls-alpn-01"."""

    def prepare(self, domains: list[str]) -> None:
        """Check, before the order is created, what can be checked without the validation values
        (DNS-01: the zones exist and the server takes our signed updates), so that a setup that
        cannot work fails without leaving an order behind; raise CertrenewError naming the fault."""

    def present(self, domain: str, token: str, validation: str) -> None:
        """Make `validation` visible to the CA for `domain` until `cleanup`.

        `validation` is the key authorization for http-01 and tls-alpn-01, the TXT value for dns-01;
        `domain` is the identifier as ordered, "*.example.com" for a wildcard.
        """

    def wait_ready(self) -> None:
        """Block until everything presented is visible to the CA (DNS propagation), within the
        solver's own bound; called once per order before the challenges are answered."""

    def cleanup(self, domain: str, token: str) -> None:
        """Withdraw what `present` published; must not fail if it is already gone."""


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
