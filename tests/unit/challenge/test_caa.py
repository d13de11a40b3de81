"""CAA verdicts (RFC 8659, RFC 8657) from records as a resolver returns them; the lookups themselves
run against BIND in tests/integration/test_caa_order.py."""

import pytest

from certrenew.challenge import caa

ACCOUNT = "https://ca.example/acct/7"


@pytest.fixture
def records(monkeypatch):
    """records(where, [(flags, tag, value)]): what the lookup finds for every name."""
    def use(where: str, found: list) -> None:
        monkeypatch.setattr(caa, "_relevant", lambda name, resolver: (where, found))
    return use


def verdict(name="www.example.com", method="http-01", identities=("ca.example",)):
    return caa.verdict(name, list(identities), ACCOUNT, method, None)


def test_no_issue_record_lets_any_ca_issue(records):
    records("", [])
    assert verdict().allowed is True
    records("example.com", [(0, "iodef", "mailto:security@example.com")])
    assert verdict().allowed is True


@pytest.mark.parametrize("value, allowed", [
    ("ca.example", True), ("CA.Example.", True), ("other.example", False), (";", False),
    (f"ca.example; accounturi={ACCOUNT}", True), ("ca.example; accounturi=https://ca.example/acct/8", False),
    ("ca.example; validationmethods=dns-01,http-01", True), ("ca.example; validationmethods=dns-01", False),
])
def test_an_issue_record_names_the_ca_the_account_and_the_methods_it_allows(records, value, allowed):
    records("example.com", [(0, "issue", value)])
    assert verdict().allowed is allowed


def test_one_allowing_record_among_several_is_enough(records):
    records("example.com", [(0, "issue", "other.example"), (0, "issue", "ca.example")])
    assert verdict().allowed is True


def test_a_wildcard_reads_issuewild_when_there_is_one(records):
    records("example.com", [(0, "issue", "ca.example"), (0, "issuewild", ";")])
    assert verdict("*.example.com").allowed is False
    assert verdict("www.example.com").allowed is True
    records("example.com", [(0, "issue", "ca.example")])
    assert verdict("*.example.com").allowed is True


def test_an_unknown_critical_property_forbids_every_ca(records):
    records("example.com", [(0, "issue", "ca.example"), (128, "tbs", "unknown")])
    assert "critical and unknown" in verdict().detail and verdict().allowed is False


def test_without_the_cas_issuer_domain_the_verdict_is_left_to_the_ca(records):
    records("example.com", [(0, "issue", "ca.example")])
    assert verdict(identities=()).allowed is None and "--caa-identity" in verdict(identities=()).detail


def test_an_ip_address_has_no_caa(records):
    records("example.com", [(0, "issue", ";")])
    assert verdict("192.0.2.1").allowed is True


def test_the_pin_record_names_the_ca_the_account_and_the_method():
    assert caa.pin_record("example.com", "ca.example", ACCOUNT, "http-01") == \
        f'example.com. CAA 0 issue "ca.example; accounturi={ACCOUNT}; validationmethods=http-01"'
