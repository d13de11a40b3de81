"""CAA (RFC 8659, with RFC 8657's accounturi and validationmethods): may this CA issue for a name?

The CA looks the records up at validation and refuses a name they forbid it; that refusal
counts against its failed-validation limit, and says less than the record does. With
--caa-check, each name's records are looked up first, as the CA would (at the name, then
at each parent until a set is found; a wildcard's `issuewild` when the set has one), and
a name they forbid to this CA, this account or this challenge is refused before any order,
quoting the record. An IP address has no CAA (RFC 8738 section 7) and is always allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from certrenew.config.dns import DnsServer
from certrenew.errors import ConfigurationError
from certrenew.pki.domains import is_ip_address

TIMEOUT = 5.0
"""Seconds for one name's lookups: a resolver that does not answer makes the verdict "cannot tell"."""


@dataclass(frozen=True)
class Verdict:
    """What a name's CAA records say for this CA, account and challenge."""

    name: str
    allowed: bool | None
    """None: cannot tell (no answer from the resolver, or the CA's issuer domain is unknown)."""
    detail: str


def verdict(name: str, identities: Sequence[str], account_uri: str | None, method: str,
            resolver: DnsServer | None) -> Verdict:
    """Whether the CA known by `identities` (its issuer domains) may issue for `name` to the account at
    `account_uri` (None: not registered yet) validating by `method`; asked of `resolver` (None: the system's)."""
    if is_ip_address(name):
        return Verdict(name, True, "an IP address: CAA does not apply")
    wildcard = name.startswith("*.")
    try:
        found, records = _relevant(name.removeprefix("*."), resolver)
    except _Unanswered as error:
        return Verdict(name, None, f"cannot look up its CAA records ({error}); the CA checks them at validation")
    tag = "issuewild" if wildcard and any(tag == "issuewild" for _, tag, _ in records) else "issue"
    relevant = [(flags, value) for flags, record_tag, value in records if record_tag == tag]
    critical = [f'{found} CAA {flags} {record_tag} "{value}"' for flags, record_tag, value in records
                if flags & 128 and record_tag not in ("issue", "issuewild", "iodef", "issuemail", "issuevmc")]
    if critical:
        return Verdict(name, False, f"{critical[0]} is critical and unknown to CAs, so none may issue: remove it")
    if not relevant:
        return Verdict(name, True, f"no CAA {tag} record ({'none' if not records else 'others'} at {found or 'any parent'}):"
                                   " any CA may issue")
    if not identities:
        return Verdict(name, None, f"has CAA {tag} records at {found}, but the CA's directory names no issuer domain "
                                   "(caaIdentities): set --caa-identity to check them")
    quoted = [f'{found} CAA {flags} {tag} "{value}"' for flags, value in relevant]
    ours = {identity.lower().rstrip(".") for identity in identities}
    reasons = []
    for (flags, value), record in zip(relevant, quoted):
        issuer, parameters = _parse(value)
        if issuer not in ours:
            reasons.append(f"{record} names {issuer or 'no CA'}")
        elif "accounturi" in parameters and parameters["accounturi"] != account_uri:
            reasons.append(f"{record} pins another account (this one is {account_uri or 'not registered yet'})")
        elif "validationmethods" in parameters and method not in parameters["validationmethods"].split(","):
            reasons.append(f"{record} allows {parameters['validationmethods']}, not {method}")
        else:
            return Verdict(name, True, f"{record} allows this CA")
    return Verdict(name, False, f"its CAA records do not let this CA ({', '.join(sorted(ours))}) issue to this account "
                                f"over {method}: {'; '.join(reasons)}; publish "
                                f"{pin_record(found, identities[0], account_uri, method)} (or use another CA, account or "
                                "challenge)")


def require(names: Sequence[str], identities: Sequence[str], account_uri: str | None, method: str,
            resolver: DnsServer | None) -> None:
    """ConfigurationError (no back-off: the records are the operator's) for the first name CAA forbids."""
    for name in names:
        found = verdict(name, identities, account_uri, method, resolver)
        if found.allowed is False:
            raise ConfigurationError(f"{name}: {found.detail}; nothing was ordered")


def pin_record(name: str, identity: str, account_uri: str | None, method: str) -> str:
    """The record that lets only this CA, this account and this challenge issue for `name` and below (RFC 8657)."""
    account = f"; accounturi={account_uri}" if account_uri else ""
    return f'{name}. CAA 0 issue "{identity}{account}; validationmethods={method}"'


class _Unanswered(Exception):
    """The resolver did not answer a CAA query."""


def _relevant(name: str, resolver: DnsServer | None) -> tuple[str, list[tuple[int, str, str]]]:
    """The first non-empty CAA set at `name` or a parent (RFC 8659 section 3), as (where, [(flags, tag, value)]);
    ("", []) when there is none up to the top-level domain."""
    import dns.exception
    import dns.resolver

    ask = dns.resolver.Resolver(configure=resolver is None)
    if resolver is not None:
        ask.nameservers, ask.port = [resolver.ip()], resolver.port
    labels = name.rstrip(".").split(".")
    for start in range(len(labels)):
        where = ".".join(labels[start:])
        try:
            answer = ask.resolve(where + ".", "CAA", raise_on_no_answer=False, lifetime=TIMEOUT)
        except dns.resolver.NXDOMAIN:
            continue
        except dns.exception.DNSException as error:
            raise _Unanswered(f"{where}: {error or type(error).__name__}") from error
        records = [(rdata.flags, rdata.tag.decode("ascii", "replace").lower(), rdata.value.decode("utf-8", "replace"))
                   for rdata in answer.rrset or ()]
        if records:
            return where, records
    return "", []


def _parse(value: str) -> tuple[str, dict[str, str]]:
    """An issue value, "ca.example; accounturi=...; validationmethods=http-01", as (issuer domain, parameters)."""
    issuer, *pairs = value.split(";")
    parameters = {}
    for pair in pairs:
        key, _, parameter = pair.strip().partition("=")
        if key:
            parameters[key.strip().lower()] = parameter.strip()
    return issuer.strip().lower().rstrip("."), parameters
