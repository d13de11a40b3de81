"""Publishing DNS-01 records by RFC 2136 dynamic update, signed with a TSIG key.

This is what BIND, Knot, PowerDNS and most self-hosted DNS servers accept. The key file
is the one `tsig-keygen` writes and BIND's `include` reads, so the operator makes the key
once and gives the same file to both. It is a secret like a private key, and read like
one (`certrenew.config.dns`): a file that others can read is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from certrenew.challenge.dns01 import TxtRecord
from certrenew.config.dns import DnsServer, TsigKey
from certrenew.errors import CertrenewError

TTL = 60
"""Seconds resolvers may cache the challenge record: short, since it lives only for one order."""
UPDATE_TIMEOUT = 10.0
_TSIG_ERRORS = MappingProxyType({"PeerBadKey": "BADKEY", "PeerBadSignature": "BADSIG", "PeerBadTime": "BADTIME",
                                 "PeerBadTruncation": "BADTRUNC"})
"""dnspython's exception for each TSIG error, by the name RFC 8945 and BIND's logs give it."""


class Rfc2136Publisher:
    """A `RecordPublisher` sending signed dynamic updates to one primary server.

    Each update adds or deletes one TXT value, never the whole RRset, so a wildcard and
    its base name (same record, two values) and concurrent orders for the same name all
    keep their values until each cleans up its own.
    """

    def __init__(self, server: DnsServer, key: TsigKey) -> None:
        self.server = server
        self.key = key

    def check(self, zone: str) -> None:
        """Send a signed update that only asks that the zone's SOA exist and changes nothing
        (RFC 2136 section 2.4 allows an update with prerequisites alone): the server checks
        our key and that it is the primary for `zone`, before any order exists."""
        import dns.name

        self._send(zone, f"an update of zone {zone}", lambda update: update.present(dns.name.from_text(zone), "SOA"))

    def add(self, record: TxtRecord) -> None:
        self._change(record, "add")

    def remove(self, record: TxtRecord) -> None:
        self._change(record, "delete")

    def _change(self, record: TxtRecord, action: str) -> None:
        """Add or delete one TXT value, never the whole RRset."""
        import dns.name
        import dns.rdataclass
        import dns.rdatatype
        import dns.rdtypes.ANY.TXT

        name = dns.name.from_text(record.name)
        rdata = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [record.value.encode()])

        def change(update) -> None:
            if action == "add":
                update.add(name, TTL, rdata)
            else:
                update.delete(name, rdata)

        doing = "adding" if action == "add" else "deleting"
        self._send(record.zone, f"the update {doing} {record.name} TXT in zone {record.zone}", change)

    def _send(self, zone: str, what: str, build: Callable[[Any], None]) -> None:
        """Send the update `build` fills in for `zone`; CertrenewError naming the server's answer if refused."""
        import dns.exception
        import dns.query
        import dns.rcode
        import dns.tsig
        import dns.update

        update = dns.update.UpdateMessage(zone, keyring=dns.tsig.Key(self.key.name, self.key.secret,
                                                                      self.key.algorithm))
        build(update)
        refused = f"DNS server {self.server} refused {what}"
        try:
            response = dns.query.tcp(update, self.server.ip(), timeout=UPDATE_TIMEOUT, port=self.server.port)
        except dns.tsig.PeerError as error:  # RFC 8945: NOTAUTH with the TSIG error in the unsigned answer
            code = _TSIG_ERRORS.get(type(error).__name__, type(error).__name__)
            raise CertrenewError(f"{refused}: it answered NOTAUTH, TSIG error {code} "
                                 f"(check the key {self.key.name!r} and its secret)") from error
        except (dns.exception.DNSException, OSError) as error:
            raise CertrenewError(f"DNS server {self.server} did not answer {what}: "
                                 f"{error or type(error).__name__}") from error
        if response.rcode() != dns.rcode.NOERROR:
            raise CertrenewError(f"{refused}: it answered {dns.rcode.to_text(response.rcode())}")
