"""When a certificate is due: the renewal decision, made from stored state alone.

Nothing here touches the network or imports the ACME stack, so a run where nothing is
due stays cheap. The CA's renewal information (ARI, RFC 9773) enters as the times
stored in the record; fetching it is the ACME client's job.
"""

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from certrenew.state.store import CertificateRecord
from certrenew.system.strenum import StrEnum

SHORT_LIVED = datetime.timedelta(days=10)
FIRST_BACKOFF = datetime.timedelta(minutes=5)
MAX_BACKOFF = datetime.timedelta(days=1)
MAX_DOUBLINGS = int(MAX_BACKOFF / FIRST_BACKOFF).bit_length()
"""Doublings of FIRST_BACKOFF that reach MAX_BACKOFF."""
BACKOFF_SHARE = 12
"""The back-off is at most this fraction (1/12) of the certificate's lifetime: a 6-day certificate, renewed with
3 days left, waits at most 12 h between attempts (6 tries in its margin, not 3), a 90-day one still a day."""
ORDER_BUDGET = 3
"""Certificates the CA may issue for one certificate name within BUDGET_PERIOD, whatever asks for more (an
ARI window, a clock far off, a bug): Let's Encrypt allows 5 for the same names a week. The first, a change of
names or key type, and one to spare; beyond that only the operator's --force orders."""
BUDGET_PERIOD = datetime.timedelta(days=1)
RENEWAL_JITTER = datetime.timedelta(minutes=15)
"""On a fleet each node wakes for a due certificate at a random time up to this after its renewal time, so the
orders are shared out rather than all placed by the node whose clock runs fastest (scripts/simulate: the busiest
of 50 nodes placed 9 % of the orders, against 100 % without; docs/simulation.md). At most JITTER_SHARE of the
certificate's lifetime: 15 min of a 90-day certificate's month-long window, 0.3 s of a 30-second one."""
JITTER_SHARE = 100


class Action(StrEnum):
    """What a run did for one certificate."""

    ISSUED = "issued"
    RENEWED = "renewed"
    INSTALLED = "installed"
    """A pending certificate a previous run issued, installed now."""
    UNCHANGED = "unchanged"
    DEFERRED = "deferred"
    """Backing off after failures."""
    FAILED = "failed"


@dataclass(frozen=True)
class Decision:
    due: bool
    reason: str
    deferred: bool = False
    """Due, but held back after recent failures (see `backoff`)."""


def utc_now() -> datetime.datetime:
    """The time every decision is made at: aware, in UTC, as certificates and records state theirs."""
    return datetime.datetime.now(datetime.timezone.utc)


def lifetime_renew_at(record: CertificateRecord, renew_before: datetime.timedelta | None = None) -> datetime.datetime:
    """When the lifetime rule says to renew: with a third of the lifetime left, or `renew_before`.

    Certificates shorter than ten days renew at half their lifetime, so a 6-day
    certificate still has days, not hours, of slack when a renewal fails.
    """
    assert record.not_after is not None and record.not_before is not None  # only an issued certificate has one
    if renew_before is not None:
        return record.not_after - renew_before
    lifetime = record.not_after - record.not_before
    fraction = 2 if lifetime < SHORT_LIVED else 3
    return record.not_after - lifetime / fraction


def renew_at(record: CertificateRecord, renew_before: datetime.timedelta | None = None) -> datetime.datetime:
    """The earlier of the lifetime rule and the time picked in the CA's ARI window.

    An ARI window earlier than the rule is how a CA asks for early renewal (say, before a
    mass revocation); the rule stays the safety net when ARI is silent.
    """
    when = lifetime_renew_at(record, renew_before)
    ari = ari_renew_at(record)
    return when if ari is None else min(when, ari)


def ari_renew_at(record: CertificateRecord) -> datetime.datetime | None:
    """The time picked in the CA's ARI window, if that window is about this certificate.

    A window that had closed when the certificate was issued cannot ask to replace it: it is
    its predecessor's, or the CA's mistake, or a clock far off. Followed, it would renew each new
    certificate at once, for ever (the daemon every few seconds); ignored, the lifetime rule
    holds until the CA's next answer.
    """
    issued = record.issued_at or record.not_before
    end = record.ari_window_end
    if issued is not None and end is not None and end <= issued:
        return None
    return record.ari_renew_at


def recent_issues(record: CertificateRecord | None, settings: str, now: datetime.datetime) -> list[datetime.datetime]:
    """The times the CA issued a certificate for `record` with these `settings` (`CertificateSpec.order_settings`)
    within `budget_period` before `now`, oldest first.

    Issues with other settings do not count: a change of names, key type or CA is the operator's,
    once, not a loop; a certificate from the staging CA must not hold back the production one.
    """
    if record is None or record.issued_settings != settings:
        return []
    return sorted(when for when in record.recent_issues if when > now - budget_period(record))


def renewal_jitter(records: Iterable[CertificateRecord | None]) -> datetime.timedelta:
    """The most a fleet's node delays waking for a due certificate: RENEWAL_JITTER, or a JITTER_SHARE of the
    shortest lifetime among `records` if smaller (one wake serves every certificate then due)."""
    lifetimes = [record.not_after - record.not_before for record in records
                 if record is not None and record.not_before is not None and record.not_after is not None]
    return min([RENEWAL_JITTER, *(lifetime / JITTER_SHARE for lifetime in lifetimes)])


def budget_period(record: CertificateRecord | None) -> datetime.timedelta:
    """BUDGET_PERIOD, or the lifetime of the record's certificate if shorter: one renewed at half its lifetime
    is issued twice a lifetime, so ORDER_BUDGET a day would let a certificate of under 16 h expire (a private
    CA's hour-long ones, say); a loop is still held to ORDER_BUDGET a lifetime."""
    if record is None or record.not_before is None or record.not_after is None:
        return BUDGET_PERIOD
    return max(min(BUDGET_PERIOD, record.not_after - record.not_before), datetime.timedelta(seconds=1))


def budget_ends(record: CertificateRecord | None, settings: str, now: datetime.datetime) -> datetime.datetime | None:
    """When the certificate may be ordered again, if it has had ORDER_BUDGET certificates with these
    `settings` within `budget_period`; None while it may be ordered now. An issue recorded in the future (a
    clock set back since, a record edited) counts as now: a day's wait, not one until then (or an overflow)."""
    issues = recent_issues(record, settings, now)
    return min(issues[-ORDER_BUDGET], now) + budget_period(record) if len(issues) >= ORDER_BUDGET else None


def minutes(when: datetime.datetime) -> str:
    """`when` as "YYYY-MM-DD HH:MM", for reports; isoformat is twice as fast as strftime, and a
    run or status over 10,000 certificates formats 10,000 or 20,000 times."""
    return when.isoformat(" ", "minutes")[:16]


def backoff(failures: int, lifetime: datetime.timedelta | None = None) -> datetime.timedelta:
    """How long to wait after `failures` failures in a row: 5 min, doubling, at most a day, and at most
    1/BACKOFF_SHARE of the current certificate's `lifetime` (a short-lived one has a short margin to retry
    in). The doubling stops past a day: a record's count may be any whole number, and 5 min * 2**1000000
    overflows."""
    cap = MAX_BACKOFF if lifetime is None else min(MAX_BACKOFF, lifetime / BACKOFF_SHARE)
    return min(FIRST_BACKOFF * 2 ** min(max(failures - 1, 0), MAX_DOUBLINGS), cap)


def ari_check_due(record: CertificateRecord | None, now: datetime.datetime) -> bool:
    """Whether to ask the CA for fresh renewal information about this certificate now."""
    return (
        record is not None
        and record.not_after is not None
        and record.ari_next_check is not None
        and now >= record.ari_next_check
        and now < record.not_after
    )


def decide(
    record: CertificateRecord | None,
    domains: list[str],
    key_type: str,
    now: datetime.datetime,
    force: bool = False,
    renew_before: datetime.timedelta | None = None,
    directories: tuple[str, ...] | None = None,
) -> Decision:
    """Whether the certificate named by `record` must be (re)issued now, and why."""
    reason = due_reason(record, domains, key_type, now, renew_before, directories)
    if force:
        return Decision(True, "forced")
    if reason is None:
        assert record is not None and record.not_after is not None  # else there would be a reason
        when = renew_at(record, renew_before)
        return Decision(False, f"not due until {minutes(when)} UTC (expires {record.not_after.date()})")
    if record is not None and record.next_attempt is not None and now < record.next_attempt:
        return Decision(
            False,
            f"{reason}, but failed {record.failures} time(s) in a row (last: {record.last_error}); "
            f"next attempt after {minutes(record.next_attempt)} UTC (or use --force)",
            deferred=True,
        )
    return Decision(True, reason)


def due_reason(record: CertificateRecord | None, domains: list[str], key_type: str, now: datetime.datetime,
               renew_before: datetime.timedelta | None = None,
               directories: tuple[str, ...] | None = None) -> str | None:
    """Why the certificate is due now, or None if it is not; back-off and --force aside.

    A certificate from a CA not in `directories` (the ACME directory URLs the run is told
    to use: the CA and its fallbacks) is due at once: a switch from staging to production
    must not keep the staging certificate until it expires; one a fallback issued is kept
    until its renewal, which tries the first CA again. A record that predates the field is
    taken as from the current CA.
    """
    if record is None or record.not_after is None:
        return "no certificate yet"
    if record.revoked is not None:
        return f"revoked at {minutes(record.revoked)} UTC"
    if directories is not None and record.directory is not None and record.directory not in directories:
        return f"CA changed (issued by {record.directory})"
    if record.domains != domains:
        return "domains changed"
    if record.key_type != key_type:
        return "key type changed"
    if now >= record.not_after:
        return "expired"
    ari = ari_renew_at(record)
    if ari is not None and now >= ari:
        return f"the CA's renewal window (ARI) says renew since {minutes(ari)}"
    when = lifetime_renew_at(record, renew_before)
    if now >= when:
        return f"due since {minutes(when)}"
    return None


def next_wake(certificates: Iterable[tuple[CertificateRecord | None, Sequence[str], str]], now: datetime.datetime,
              check_interval: datetime.timedelta, renew_before: datetime.timedelta | None = None,
              directories: tuple[str, ...] | None = None) -> datetime.datetime:
    """When a daemon that just ran a pass should run the next: the earliest moment any certificate
    (record, domains, key type) needs one, and at the latest `check_interval` from `now`. A
    certificate from a CA not in `directories` is due at once.

    A certificate needs a pass when it falls due (its renewal time or the CA's ARI window), when its
    renewal information is to be fetched again, or when its back-off ends. One that failed through a
    mistake on our side (no back-off) waits for the regular check, or for a fix and SIGHUP: asking
    again at once would fail the same way. A time in the past means now.
    """
    wake = now + check_interval
    for record, domains, key_type in certificates:
        if record is not None and record.failures and (record.next_attempt is None or record.next_attempt > now):
            when = record.next_attempt
        elif due_reason(record, list(domains), key_type, now, renew_before, directories) is not None:
            when = now
        else:
            assert record is not None and record.not_after is not None  # else it would be due
            when = renew_at(record, renew_before)
            if record.ari_next_check is not None and record.ari_next_check < record.not_after:
                when = min(when, record.ari_next_check)
        if when is not None:
            wake = min(wake, max(when, now))
    return wake
