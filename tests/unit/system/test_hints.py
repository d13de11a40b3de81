"""Errors that name the fix: hints from the CA's problem documents (as pebble and Let's Encrypt
write them), an untrusted CA, and which of the CA's refusals are ours to fix."""

import pytest
import requests
from acme import messages

from certrenew.acme.transport import Transport, _is_transient
from certrenew.errors import CertrenewError, ConfigurationError
from certrenew.system import hints

NAME = "example.com"
URL = f"http://{NAME}/.well-known/acme-challenge/EteD_DgwLkY15Iwzn_4fgZHeobTP6teHif7WWcyq1UM"


@pytest.mark.parametrize(("code", "detail", "expected"), [
    # pebble
    ("connection", f"127.0.0.9: Fetching {URL}: dial tcp 127.0.0.9:80: connect: connection refused",
     hints.no_listener(NAME)),
    ("unauthorized", f"Non-200 status code from HTTP: {URL} returned 503", hints.ROUTE),
    ("unauthorized", 'The key authorization file from the server did not match this challenge "a" != "b"',
     hints.ROUTE),
    ("dns", f"DNS problem: NXDOMAIN looking up A for {NAME}", hints.dns_record(NAME)),
    # Let's Encrypt (boulder)
    ("unauthorized", f'66.96.149.18: Invalid response from {URL}: 404', hints.ROUTE),
    ("connection", f"66.96.149.18: Fetching {URL}: Connection refused", hints.no_listener(NAME)),
    ("connection", f"66.96.149.18: Fetching {URL}: Timeout during connect (likely firewall problem)",
     hints.no_answer(NAME)),
    ("dns", f"DNS problem: NXDOMAIN looking up A for {NAME} - check that a DNS record exists for this domain",
     hints.dns_record(NAME)),
    ("dns", f"no valid A records found for {NAME}; no valid AAAA records found for {NAME}", hints.dns_record(NAME)),
    ("caa", f"CAA record for {NAME} prevents issuance", None),
    ("connection", "Fetching: some other network error", None),
])
def test_validation_hint(code, detail, expected):
    assert hints.validation_hint(code, detail, NAME) == expected


@pytest.mark.parametrize(("code", "detail", "expected"), [  # pebble 2.4
    ("unauthorized", 'Cannot negotiate ALPN protocol "acme-tls/1" for tls-alpn-01 challenge', hints.TLS_ROUTE),
    ("connection", f"127.0.0.9: Connecting to {NAME}:443: dial tcp 127.0.0.9:443: connect: connection refused",
     hints.no_listener(NAME, 443)),
])
def test_a_tls_alpn_01_validation_hint_names_port_443_and_its_alpn_route(code, detail, expected):
    assert hints.validation_hint(code, detail, NAME, "tls-alpn-01") == expected


def test_untrusted_ca_names_the_reason_and_ca_bundle():
    error = ("HTTPSConnectionPool(host='127.0.0.1', port=14000): Max retries exceeded with url: /dir (Caused by "
             "SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
             "self-signed certificate (_ssl.c:992)')))")
    message = hints.untrusted_ca("https://ca.example/dir", error)
    assert "is not trusted (certificate verify failed: self-signed certificate)" in message
    assert "--ca-bundle" in message


def test_a_tls_verification_failure_is_not_retried():
    assert not _is_transient(requests.exceptions.SSLError("certificate verify failed"))
    assert _is_transient(requests.exceptions.ConnectionError("refused"))


@pytest.mark.parametrize(("code", "kind"), [("invalidContact", ConfigurationError),
                                            ("invalidProfile", ConfigurationError),
                                            ("rejectedIdentifier", CertrenewError)])
def test_a_problem_our_settings_fix_is_a_configuration_error(code, kind):
    transport = Transport.__new__(Transport)  # no directory needed to translate an error

    def refuse():
        raise messages.Error(typ=f"urn:ietf:params:acme:error:{code}", detail="no")

    with pytest.raises(CertrenewError, match="the CA refused to register the account: no") as raised:
        transport.call("register the account", refuse)
    assert type(raised.value) is kind
    assert raised.value.backoff is (kind is CertrenewError)
