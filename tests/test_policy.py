import datetime

from certrenew.policy import decide, renew_at
from certrenew.store import CertificateRecord

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
