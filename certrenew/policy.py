"""When a certificate is due: the renewal decision, made from stored state alone.

Nothing here touches the network or imports the ACME stack, so a run where nothing is
due stays cheap.
"""

import datetime
from dataclasses import dataclass

from certrenew.store import CertificateRecord

SHORT_LIVED = datetime.timedelta(days=10)


@dataclass(frozen=True)
class Decision:
    due: bool
    reason: str


def renew_at(record: CertificateRecord) -> datetime.datetime:
    """When the lifetime rule says to renew: with a third of the lifetime left.

    Certificates shorter than ten days renew at half their lifetime, so a 6-day
    certificate still has days, not hours, of slack when a renewal fails.
    """
    lifetime = record.not_after - record.not_before
    fraction = 2 if lifetime < SHORT_LIVED else 3
    return record.not_after - lifetime / fraction


def decide(
    record: CertificateRecord | None,
    domains: list[str],
    key_type: str,
    now: datetime.datetime,
    force: bool = False,
) -> Decision:
    """Whether the certificate named by `record` must be (re)issued now, and why."""
    if record is None or record.not_after is None:
        return Decision(True, "no certificate yet")
    if record.domains != domains:
        return Decision(True, "domains changed")
    if record.key_type != key_type:
        return Decision(True, "key type changed")
    if force:
        return Decision(True, "forced")
    if now >= record.not_after:
        return Decision(True, "expired")
    when = renew_at(record)
    if now >= when:
        return Decision(True, f"due since {when:%Y-%m-%d %H:%M}")
    return Decision(False, f"not due until {when:%Y-%m-%d %H:%M} UTC (expires {record.not_after:%Y-%m-%d})")
