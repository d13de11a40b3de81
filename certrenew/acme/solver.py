"""What an order asks of a challenge solver: how it proves control of a name.

The order flow (`orders`) defines the interface it needs; the solvers of `certrenew.challenge`
meet it without importing it (a Protocol): the HTTP-01 responder is one, a DNS-01 provider
another, the TLS-ALPN-01 responder a third. A solver only publishes and withdraws what the CA
will look up; the order flow stays the same. Which names a challenge type can validate at all,
and what a token may be, is known below, in `certrenew.config.challenges`.
"""

from typing import Protocol


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
