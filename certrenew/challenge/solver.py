"""The challenge solver interface: how an order proves control of a name.

The HTTP-01 responder is one solver; a DNS-01 provider is another, the TLS-ALPN-01 responder a third. A solver only
publishes and withdraws what the CA will look up; the order flow stays the same.
Which names a challenge type can validate at all is known below, in `certrenew.config.challenges`.
"""

import re
from typing import Protocol

from certrenew.errors import CertrenewError

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
