"""verify.wait_served against a real TLS server on loopback serving a trustme certificate."""

import time

import pytest
import trustme

from certrenew.errors import CertrenewError
from certrenew.haproxy import verify
from certrenew.pki.bundle import build_bundle

NAME = "site.example"


def bundle_of(cert: trustme.LeafCert) -> bytes:
    return build_bundle(b"".join(blob.bytes() for blob in cert.cert_chain_pems), cert.private_key_pem.bytes())


def handshakes(server: dict, at_least: int) -> int:
    """The server's handshake count, once it reaches `at_least` (the server thread may lag the client)."""
    deadline = time.monotonic() + 5
    while server["handshakes"] < at_least and time.monotonic() < deadline:
        time.sleep(0.01)
    return server["handshakes"]


def test_the_served_certificate_passes_at_the_first_look(serving):
    cert = trustme.CA().issue_cert(NAME, f"www.{NAME}")
    endpoint = serving(cert)
    started = time.monotonic()
    verify.wait_served([endpoint], bundle_of(cert), grace=10)
    assert time.monotonic() - started < 5
    assert handshakes(serving.servers[0], at_least=2) == 2  # one per name


def test_another_certificate_for_the_same_names_fails_after_the_grace(serving):
    ca = trustme.CA()
    endpoint = serving(ca.issue_cert(NAME))
    started = time.monotonic()
    with pytest.raises(CertrenewError, match=f"{endpoint} serves another certificate for {NAME}"):
        verify.wait_served([endpoint], bundle_of(ca.issue_cert(NAME)), grace=0.5)
    assert 0.5 <= time.monotonic() - started < 10
    assert handshakes(serving.servers[0], at_least=2) >= 2  # it looked again within the grace


def test_no_endpoint_means_nothing_to_check():
    verify.wait_served([], b"not even a bundle", grace=1)


def test_an_ip_address_is_checked_as_a_client_connecting_to_it_sees_it_without_sni(serving):
    ca = trustme.CA()
    ours = ca.issue_cert("127.0.0.1")
    endpoint = serving(ours)
    verify.wait_served([endpoint], bundle_of(ours), grace=0)
    assert serving.servers[0]["sni"] == [None]  # RFC 6066: no IP address in SNI, as no client sends one

    other = serving(ca.issue_cert("127.0.0.1"))
    with pytest.raises(CertrenewError, match="a TLS client sends no SNI for an IP address, so HAProxy serves it "
                                             "the bind's default certificate: make this one the default"):
        verify.wait_served([other], bundle_of(ours), grace=0)
