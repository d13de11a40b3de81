import datetime

import pytest

from certrenew.config import parse_duration
from certrenew.renewal.policy import (
    BUDGET_PERIOD,
    ORDER_BUDGET,
    ari_check_due,
    backoff,
    budget_ends,
    decide,
    next_wake,
    renew_at,
)
from certrenew.state.store import CertificateRecord

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def record(lifetime_days: float, issued_days_ago: float, domains=("a.example",), key_type="ecdsa-p256"):
    not_before = NOW - issued_days_ago * DAY
    return CertificateRecord("a.example", list(domains), key_type, serial="1",
                             not_before=not_before, not_after=not_before + lifetime_days * DAY)


def test_renews_with_a_third_of_the_lifetime_left():
    assert renew_at(record(90, 0)) == NOW + 60 * DAY
    assert renew_at(record(45, 0)) == NOW + 30 * DAY


def test_short_lived_certificates_renew_at_half():
    assert renew_at(record(6, 0)) == NOW + 3 * DAY


def test_not_due_then_due():
    assert not decide(record(90, 59), ["a.example"], "ecdsa-p256", NOW).due
    assert decide(record(90, 61), ["a.example"], "ecdsa-p256", NOW).due
    assert decide(record(90, 91), ["a.example"], "ecdsa-p256", NOW).reason == "expired"


def test_changes_and_force_make_it_due():
    fresh = record(90, 1)
    assert decide(None, ["a.example"], "ecdsa-p256", NOW).reason == "no certificate yet"
    assert decide(fresh, ["a.example", "b.example"], "ecdsa-p256", NOW).reason == "domains changed"
    assert decide(fresh, ["a.example"], "rsa2048", NOW).reason == "key type changed"
    assert decide(fresh, ["a.example"], "ecdsa-p256", NOW, force=True).reason == "forced"


def test_a_failed_first_attempt_stays_due():
    failed = CertificateRecord("a.example", ["a.example"], "ecdsa-p256", last_error="boom", failures=1)
    assert decide(failed, ["a.example"], "ecdsa-p256", NOW).due


def test_renew_before_overrides_the_lifetime_rule():
    assert decide(record(90, 50), ["a.example"], "ecdsa-p256", NOW, renew_before=45 * DAY).due
    assert not decide(record(90, 50), ["a.example"], "ecdsa-p256", NOW, renew_before=30 * DAY).due


def test_an_earlier_ari_time_wins_and_a_later_one_does_not_delay():
    early = record(90, 10)
    early.ari_renew_at = NOW - DAY
    assert "ARI" in decide(early, ["a.example"], "ecdsa-p256", NOW).reason
    late = record(90, 61)
    late.ari_renew_at = NOW + 10 * DAY
    assert decide(late, ["a.example"], "ecdsa-p256", NOW).due


def test_a_window_that_closed_before_the_certificate_was_issued_is_not_about_it():
    fresh = record(90, 0)
    fresh.issued_at = NOW
    fresh.ari_window_start, fresh.ari_window_end = NOW - 2 * DAY, NOW - DAY  # the CA's answer for the new one
    fresh.ari_renew_at = NOW - 1.5 * DAY
    assert not decide(fresh, ["a.example"], "ecdsa-p256", NOW).due
    assert renew_at(fresh) == NOW + 60 * DAY  # the lifetime rule
    assert next_wake([(fresh, ["a.example"], "ecdsa-p256")], NOW, DAY) == NOW + DAY
    fresh.ari_window_end = NOW + datetime.timedelta(seconds=1)  # open when it was issued: it asks to renew it
    assert "ARI" in decide(fresh, ["a.example"], "ecdsa-p256", NOW).reason
    older = record(90, 10)  # no issued_at (a record from before it was kept): its notBefore stands in
    older.ari_window_start, older.ari_window_end, older.ari_renew_at = NOW - 2 * DAY, NOW - DAY, NOW - 1.5 * DAY
    assert "ARI" in decide(older, ["a.example"], "ecdsa-p256", NOW).reason  # a mass revocation's window


def test_the_order_budget_is_a_rolling_day_of_certificates_issued_with_the_same_settings():
    hour = datetime.timedelta(hours=1)
    spent = record(90, 0)
    assert ORDER_BUDGET == 3 and BUDGET_PERIOD == DAY
    spent.recent_issues, spent.issued_settings = [NOW - 30 * hour, NOW - 20 * hour, NOW - 2 * hour], "S"
    assert budget_ends(spent, "S", NOW) is None  # the first fell out of the day
    spent.recent_issues.append(NOW - hour)
    assert budget_ends(spent, "S", NOW) == NOW + 4 * hour  # when the one 20 h ago falls out
    assert budget_ends(spent, "S", NOW + 4 * hour) is None
    assert budget_ends(spent, "other names, key type or CA", NOW) is None  # a fresh budget
    assert budget_ends(None, "S", NOW) is None
    ahead = datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)  # a record edited, a clock set back
    spent.recent_issues = [ahead, ahead, ahead]
    assert budget_ends(spent, "S", NOW) == NOW + DAY


def test_the_daemon_wakes_for_an_ari_window_earlier_than_the_lifetime_rule():
    asked_early = record(90, 1)
    asked_early.ari_renew_at = NOW + 10 * datetime.timedelta(minutes=1)
    assert wake(asked_early) == NOW + 10 * datetime.timedelta(minutes=1)
    assert renew_at(asked_early) == asked_early.ari_renew_at
    assert "not due until 2026-06-01 00:10 UTC" in decide(asked_early, *A, NOW).reason


def test_a_wake_time_in_the_past_is_now():
    overdue_check = record(90, 1)
    overdue_check.ari_next_check = NOW - HOUR
    assert wake(overdue_check) == NOW


def test_failures_back_off_unless_forced():
    failing = CertificateRecord("a.example", ["a.example"], "ecdsa-p256", failures=2, last_error="boom",
                                next_attempt=NOW + DAY)
    decision = decide(failing, ["a.example"], "ecdsa-p256", NOW)
    assert not decision.due and decision.deferred and "boom" in decision.reason
    assert decide(failing, ["a.example"], "ecdsa-p256", NOW, force=True).due
    assert [backoff(n) for n in (1, 2, 3)] == [datetime.timedelta(minutes=m) for m in (5, 10, 20)]
    assert backoff(30) == backoff(10**6) == datetime.timedelta(days=1)  # any count a record may hold


def test_the_back_off_is_at_most_a_twelfth_of_the_certificates_lifetime_and_never_more_than_a_day():
    six_days = datetime.timedelta(days=6)
    assert backoff(1, six_days) == datetime.timedelta(minutes=5)  # the first waits stay as they are
    assert backoff(30, six_days) == datetime.timedelta(hours=12)  # 6 tries in its 3-day margin, not 3
    assert backoff(30, datetime.timedelta(days=90)) == datetime.timedelta(days=1)
    assert backoff(30, datetime.timedelta(seconds=30)) == datetime.timedelta(seconds=2.5)


def test_ari_check_waits_for_retry_after_and_stops_at_expiry():
    checked = record(90, 10)
    assert not ari_check_due(checked, NOW)  # the CA has no ARI: never
    checked.ari_next_check = NOW + DAY
    assert not ari_check_due(checked, NOW)
    checked.ari_next_check = NOW  # the very moment the CA named
    assert ari_check_due(checked, NOW)
    expired = record(90, 91)
    expired.ari_next_check = NOW - DAY  # a check that would be due, but the certificate expired
    assert not ari_check_due(expired, NOW)


def test_durations():
    assert parse_duration("30d") == 30 * DAY and parse_duration("1.5h") == datetime.timedelta(minutes=90)
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("30 days")


HOUR = datetime.timedelta(hours=1)
A = (["a.example"], "ecdsa-p256")


def wake(*records, renew_before=None):
    return next_wake([(r, *A) for r in records], NOW, HOUR, renew_before)


def test_the_daemon_wakes_at_the_earliest_renewal_time_or_after_the_check_interval():
    assert wake() == NOW + HOUR  # nothing managed: the regular check only
    assert wake(record(90, 1)) == NOW + HOUR  # due in 59 days
    assert wake(record(30 / 86400, 0)) == NOW + datetime.timedelta(seconds=15)  # a 30-second certificate
    assert wake(record(90, 1), record(0.001, 0), record(90, 2)) == NOW + 0.0005 * DAY
    assert wake(record(90, 1), renew_before=89 * DAY - datetime.timedelta(minutes=5)) == NOW + datetime.timedelta(
        minutes=5)


def test_a_certificate_due_now_or_never_issued_wakes_at_once():
    assert wake(None) == NOW
    assert wake(record(90, 61)) == NOW
    assert next_wake([(record(90, 1), ["b.example"], "ecdsa-p256")], NOW, HOUR) == NOW  # domains changed


def test_the_next_ari_check_wakes_it_but_not_after_expiry():
    asks = record(90, 1)
    asks.ari_next_check = NOW + 10 * datetime.timedelta(minutes=1)
    assert wake(asks) == NOW + 10 * datetime.timedelta(minutes=1)
    expired_meanwhile = record(0.001, 0)
    expired_meanwhile.ari_next_check = expired_meanwhile.not_after + DAY
    assert wake(expired_meanwhile) == renew_at(expired_meanwhile)


def test_a_back_off_holds_the_wake_until_it_ends_and_our_own_mistake_waits_for_the_check():
    backing_off = CertificateRecord("a.example", ["a.example"], "ecdsa-p256", failures=2, last_error="CA down",
                                    next_attempt=NOW + 10 * datetime.timedelta(minutes=1))
    assert wake(backing_off) == NOW + 10 * datetime.timedelta(minutes=1)
    mistake = CertificateRecord("a.example", ["a.example"], "ecdsa-p256", failures=1, last_error="bad ACL")
    assert wake(mistake) == NOW + HOUR  # not a retry loop
    ended = CertificateRecord("a.example", ["a.example"], "ecdsa-p256", failures=1, last_error="CA down",
                              next_attempt=NOW - HOUR)
    assert wake(ended) == NOW
    recovered = record(90, 1)
    recovered.failures, recovered.next_attempt = 1, NOW - HOUR  # an ARI check that failed: renewal time rules
    assert wake(recovered) == NOW + HOUR


def test_a_certificate_from_another_ca_is_due_at_once():
    now = datetime.datetime.now(datetime.timezone.utc)
    record = CertificateRecord("a", ["a.example"], "ecdsa-p256", serial="1", not_before=now - datetime.timedelta(days=1),
                               not_after=now + datetime.timedelta(days=89), directory="https://staging.example/dir")
    decision = decide(record, ["a.example"], "ecdsa-p256", now, directories=("https://production.example/dir",))
    assert decision.due and decision.reason == "CA changed (issued by https://staging.example/dir)"
    assert not decide(record, ["a.example"], "ecdsa-p256", now, directories=("https://staging.example/dir",)).due
    record.directory = None  # recorded before the CA was: taken as the current one, nothing reissued
    assert not decide(record, ["a.example"], "ecdsa-p256", now, directories=("https://production.example/dir",)).due


def test_a_certificate_from_a_fallback_ca_is_kept_until_its_renewal():
    now = datetime.datetime.now(datetime.timezone.utc)
    record = CertificateRecord("a", ["a.example"], "ecdsa-p256", serial="1", not_before=now - datetime.timedelta(days=1),
                               not_after=now + datetime.timedelta(days=89), directory="https://second.example/dir")
    cas = ("https://first.example/dir", "https://second.example/dir")
    assert not decide(record, ["a.example"], "ecdsa-p256", now, directories=cas).due


def test_the_daemon_wakes_at_once_for_a_certificate_from_another_ca():
    from_staging = record(90, 1)
    from_staging.directory = "https://staging.example/dir"
    certificates = [(from_staging, *A)]
    assert next_wake(certificates, NOW, HOUR, directories=("https://production.example/dir",)) == NOW
    assert next_wake(certificates, NOW, HOUR, directories=("https://staging.example/dir",)) == NOW + HOUR


def test_a_revoked_certificate_is_due_at_once_and_wakes_the_daemon():
    revoked = record(90, 1)
    revoked.revoked = NOW - DAY
    assert decide(revoked, ["a.example"], "ecdsa-p256", NOW).reason == "revoked at 2026-05-31 00:00 UTC"
    assert next_wake([(revoked, ["a.example"], "ecdsa-p256")], NOW, DAY) == NOW
