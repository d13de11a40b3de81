"""The challenge solver interface: how an order proves control of a name.

The HTTP-01 responder is one solver; a DNS-01 provider is another one later. A solver
only publishes and withdraws what the CA will look up; the order flow stays the same.
"""

from typing import Protocol


class ChallengeSolver(Protocol):
    """Publishes validation data where the CA will look for it."""

    challenge_type: str
    """The ACME challenge type this solver answers, e.g. "http-01"."""

    def present(self, domain: str, token: str, validation: str) -> None:
        """Make `validation` visible to the CA for `domain` until `cleanup`."""

    def cleanup(self, domain: str, token: str) -> None:
        """Withdraw what `present` published; must not fail if it is already gone."""
