"""The DNS-01 solver: publish a TXT record, wait until every authoritative server has it.

How the record gets into the zone is a `RecordPublisher` (lego's DNS "provider"):
an RFC 2136 update signed with TSIG (`rfc2136`), or an operator's hook (`dnshook`).
What stays the same for both lives here: the record name, finding the zone, and the
propagation wait, which asks the zone's authoritative servers directly rather than a
resolver, so no cache hides the new value and the CA sees what we saw.

dnspython is imported inside the functions that talk DNS: a run in which nothing is
due (the cheap, common case) never loads it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from certrenew.config.challenges import DNS_01
from certrenew.config.dns import PROPAGATION_TIMEOUT, DnsServer
from certrenew.errors import CertrenewError
from certrenew.system.runcontext import RunContext

log = logging.getLogger(__name__)

QUERY_TIMEOUT = 5.0
"""Seconds one DNS query may take; a server that does not answer is asked again later."""
FIRST_POLL, MAX_POLL = 0.5, 8.0
"""Back-off between propagation checks: a primary answers at once, secondaries need a NOTIFY and a transfer."""


def challenge_record(domain: str) -> str:
    """The TXT record name the CA queries for `domain`: a wildcard and its base name share it (RFC 8555 8.4)."""
    return "_acme-challenge." + domain.removeprefix("*.")


@dataclass(frozen=True)
class TxtRecord:
    """One validation value at one record name, as a publisher adds and removes it."""

    domain: str
    """The identifier as ordered, e.g. "*.example.com"."""
    name: str
    """The record name without a trailing dot, e.g. "_acme-challenge.example.com"."""
    zone: str
    """The zone that holds `name`, without a trailing dot."""
    value: str


class RecordPublisher(Protocol):
    """Puts a TXT value into a zone and takes it out again (one value, never the whole RRset)."""

    def check(self, zone: str) -> None:
        """Raise CertrenewError if `add` into `zone` cannot work, as far as can be told before an order exists."""

    def add(self, record: TxtRecord) -> None:
        """Add `record.value` next to any values already at `record.name`; raise CertrenewError on failure."""

    def remove(self, record: TxtRecord) -> None:
        """Remove only `record.value`; a value already gone is not an error."""


class Dns01Solver:
    """A `ChallengeSolver` for dns-01 over any `RecordPublisher`.

    `server` is asked which zone holds a record (SOA), which servers are authoritative
    for it (NS, and their addresses), and is itself checked for the new values; without
    it the system resolver finds zone and NS set. `zone` skips the SOA lookup. Thread-safe:
    several orders present, wait and clean up at once, each waiting only for what it
    presented itself, so one order's slow zone does not hold up another's.

    Use it as a context manager for the run: on the way out (a signal included) it
    withdraws whatever an order abandoned in mid-flight still has published.
    """

    challenge_type = DNS_01

    def __init__(self, publisher: RecordPublisher, server: DnsServer | None = None, zone: str | None = None,
                 propagation_timeout: float = PROPAGATION_TIMEOUT, context: RunContext | None = None) -> None:
        self.publisher = publisher
        self.context = context or RunContext()
        """What cancels the waits, and lets a withdrawal in progress finish before the process ends."""
        self.server = server
        self.zone = zone.rstrip(".").lower() if zone else None
        self.propagation_timeout = propagation_timeout
        self._lock = threading.Lock()
        self._presented: dict[tuple[str, str], tuple[TxtRecord, int]] = {}
        """(domain, token) -> the record published and the thread that presented it."""
        self._zones: dict[str, str] = {}
        """Record name -> its zone, as found by `prepare` or the first `present`."""

    def __enter__(self) -> Dns01Solver:
        return self

    def __exit__(self, *exc_info) -> None:
        with self._lock:
            abandoned = list(self._presented)
        for domain, token in abandoned:
            self.cleanup(domain, token)

    def prepare(self, domains: list[str]) -> None:
        """Find each record's zone and have the publisher check it, before any order exists.

        A zone that is not there, or a server that refuses our TSIG key, then fails the
        certificate without leaving a pending order and its authorizations at the CA.
        """
        for zone in sorted({self._zone_of(challenge_record(domain)) for domain in domains}):
            self.publisher.check(zone)

    def present(self, domain: str, token: str, validation: str) -> None:
        name = challenge_record(domain)
        record = TxtRecord(domain, name, self._zone_of(name), validation)
        self.publisher.add(record)
        with self._lock:
            self._presented[(domain, token)] = (record, threading.get_ident())
        log.debug("published %s TXT %r in zone %s", name, validation, record.zone)

    def cleanup(self, domain: str, token: str) -> None:
        with self._lock:
            entry = self._presented.pop((domain, token), None)
        if entry is None:
            return
        record = entry[0]
        try:
            with self.context.finishing():  # after a signal, the process waits for this before it ends
                self.publisher.remove(record)
        except Exception as error:  # a stale TXT value is harmless; the certificate is what matters
            log.warning("could not remove %s TXT %r: %s", record.name, record.value, error)

    def wait_ready(self) -> None:
        """Return once every authoritative server of each zone answers every value this thread presented."""
        me = threading.get_ident()
        with self._lock:
            records = [record for record, owner in self._presented.values() if owner == me]
        if not records:
            return
        deadline = time.monotonic() + self.propagation_timeout  # the NS look-ups count too
        zones = {zone: self._authoritative_servers(zone, deadline) for zone in {record.zone for record in records}}
        pending: dict[tuple[DnsServer, str], set[str]] = {}
        for record in records:
            for server in zones[record.zone]:
                pending.setdefault((server, record.name), set()).add(record.value)
        interval = FIRST_POLL
        last_seen: dict[tuple[DnsServer, str], str] = {}
        while True:
            for (server, name), values in list(pending.items()):
                try:
                    seen = _txt_values(server, name, min(QUERY_TIMEOUT, max(deadline - time.monotonic(), 0.1)))
                except CertrenewError as error:
                    last_seen[(server, name)] = str(error)
                    continue
                if values <= seen:
                    del pending[(server, name)]
                else:
                    last_seen[(server, name)] = "missing value " + ", ".join(map(repr, sorted(values - seen)))
            if not pending:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                (server, name), values = next(iter(pending.items()))
                raise CertrenewError(
                    f"DNS-01: {name} TXT not visible at {server} after {self.propagation_timeout:g} s "
                    f"({last_seen[(server, name)]})" + (f"; {len(pending) - 1} more pending" if len(pending) > 1 else "")
                )
            self.context.sleep(min(interval, remaining))
            interval = min(interval * 2, MAX_POLL)

    def _resolver(self):
        import dns.exception
        import dns.resolver

        if self.server is None:
            try:
                return dns.resolver.Resolver()
            except dns.exception.DNSException as error:  # no usable /etc/resolv.conf
                raise CertrenewError(f"DNS-01: the system resolver is not usable ({error}); "
                                     "give a DNS server") from error
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.server.ip()]
        resolver.port = self.server.port
        resolver.lifetime = QUERY_TIMEOUT * 2
        return resolver

    def _zone_of(self, name: str) -> str:
        if self.zone:
            return self.zone
        zone = self._zones.get(name)
        if zone is None:
            zone = self._zones[name] = self._find_zone(name)
        return zone

    def _find_zone(self, name: str) -> str:
        """The zone holding `name`: walk up its labels asking for an SOA (dnspython's zone_for_name)."""
        import dns.exception
        import dns.resolver

        resolver = self._resolver()
        where = f"at {self.server}" if self.server else f"through the system resolver ({_servers(resolver)})"
        try:
            zone = dns.resolver.zone_for_name(name + ".", resolver=resolver, lifetime=QUERY_TIMEOUT * 3)
        except dns.exception.DNSException as error:
            raise CertrenewError(f"DNS-01: cannot find the zone of {name} {where}: {_said(error)}") from error
        return zone.to_text(omit_final_dot=True)

    def _authoritative_servers(self, zone: str, deadline: float) -> list[DnsServer]:
        """The configured server, plus one address of every NS name of `zone` that resolves before `deadline`.

        An NS whose address is the configured server's is that server (which may listen on
        another port). A name that does not resolve is left out with a warning: it is not
        ours to fix, and the CA cannot reach it either. The look-ups end at `deadline` (the
        propagation timeout's), so many names that never answer do not hold the order longer.
        """
        import dns.exception
        import dns.resolver

        resolver = self._resolver()
        servers = [self.server] if self.server else []
        known = {self.server.ip()} if self.server else set()
        try:
            names = sorted(rdata.target.to_text()
                           for rdata in resolver.resolve(zone + ".", "NS", lifetime=_lifetime(resolver, deadline)))
        except dns.exception.DNSException as error:
            log.warning("DNS-01: no NS set for %s (%s); checking only %s", zone, _said(error),
                        self.server or "nothing")
            names = []
        for name in names:
            address = _first_address(resolver, name, deadline)
            if address is None and time.monotonic() >= deadline:
                log.warning("DNS-01: the propagation timeout ran out looking up NS %s of %s; not checking it",
                            name, zone)
            elif address is None:
                log.warning("DNS-01: NS %s of %s does not resolve; not checking it", name, zone)
            elif address not in known:
                known.add(address)
                servers.append(DnsServer(address))
        if not servers:
            raise CertrenewError(f"DNS-01: found no authoritative server for {zone} to check")
        return servers


def _servers(resolver) -> str:
    return ", ".join(str(server) for server in resolver.nameservers)


def _said(error: Exception) -> str:
    """dnspython's error in one sentence: a timeout once, not once for every try of every server."""
    import dns.resolver

    if isinstance(error, dns.resolver.LifetimeTimeout):
        return f"no answer within {error.kwargs['timeout']:.0f} s"
    return str(error)


def _lifetime(resolver, deadline: float) -> float:
    """How long a look-up may take: the resolver's own limit, cut at `deadline` (at least a moment)."""
    return max(min(resolver.lifetime, deadline - time.monotonic()), 0.1)


def _first_address(resolver, name: str, deadline: float) -> str | None:
    """One address of `name`, IPv4 first: the CA reaches a name server by any one of them.
    None when it has none, or `deadline` passed before it was found."""
    import dns.exception

    for rdtype in ("A", "AAAA"):
        if time.monotonic() >= deadline:
            return None
        try:
            return resolver.resolve(name, rdtype, lifetime=_lifetime(resolver, deadline))[0].address
        except dns.exception.DNSException:
            continue
    return None


def _txt_values(server: DnsServer, name: str, timeout: float) -> set[str]:
    """The TXT values `server` itself answers for `name` (no recursion); CertrenewError saying what went wrong."""
    import dns.exception
    import dns.flags
    import dns.message
    import dns.query
    import dns.rcode
    import dns.rdatatype

    query = dns.message.make_query(name + ".", "TXT")
    query.flags &= ~dns.flags.RD
    try:
        response, _ = dns.query.udp_with_fallback(query, server.ip(), timeout=timeout, port=server.port)
    except (dns.exception.DNSException, OSError) as error:
        raise CertrenewError(f"no answer: {error or type(error).__name__}") from error
    if response.rcode() != dns.rcode.NOERROR:
        raise CertrenewError(f"it answered {dns.rcode.to_text(response.rcode())}")
    return {b"".join(rdata.strings).decode(errors="replace") for rrset in response.answer
            if rrset.rdtype == dns.rdatatype.TXT for rdata in rrset}

