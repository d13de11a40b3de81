import datetime

import pytest
import trustme

from certrenew.errors import CertrenewError, ConfigurationError
from certrenew.pki.bundle import (
    CLOCK_AHEAD,
    CLOCK_SKEW,
    build_bundle,
    check_bundle,
    check_clock,
    check_issued,
    leaf_info,
    pem_blocks,
)


@pytest.fixture
def ca():
    return trustme.CA()


@pytest.fixture
def issued(ca):
    return ca.issue_cert("a.example", "b.example")


def test_bundle_is_leaf_chain_key_without_blank_lines(ca, issued):
    leaf, key = issued.cert_chain_pems[0].bytes(), issued.private_key_pem.bytes()
    messy_chain = leaf + b"\n\n" + ca.cert_pem.bytes().replace(b"\n", b"\r\n") + b"\r\n\r\n"
    bundle = build_bundle(messy_chain, b"\n" + key + b"\n\n")
    assert b"\n\n" not in bundle and b"\r" not in bundle
    assert bundle == leaf.strip() + b"\n" + ca.cert_pem.bytes().strip() + b"\n" + key.strip() + b"\n"


def test_leaf_info_reads_names_and_dates(issued):
    info = leaf_info(issued.cert_chain_pems[0].bytes())
    assert info.domains == ("a.example", "b.example")
    assert info.not_after > info.not_before
    assert len(info.fingerprint) == 64


def test_refuses_a_chain_that_is_not_a_certificate(issued):
    with pytest.raises(CertrenewError, match="does not start with a certificate"):
        build_bundle(issued.private_key_pem.bytes(), issued.private_key_pem.bytes())
    with pytest.raises(CertrenewError, match="no END line"):
        pem_blocks(b"-----BEGIN CERTIFICATE-----\nabc\n")


# What the CA returns is proven before it is kept (check_issued).

NOW = datetime.datetime.now(datetime.timezone.utc)


def chain_of(issued) -> bytes:
    return b"".join(blob.bytes() for blob in issued.cert_chain_pems)


def test_check_issued_accepts_our_certificate_whatever_the_order_of_names(issued):
    key = issued.private_key_pem.bytes()
    bundle = check_issued(chain_of(issued), key, ["B.example", "a.example"], NOW)
    assert bundle == build_bundle(chain_of(issued), key)


def test_check_issued_keeps_every_intermediate():
    intermediate = trustme.CA().create_child_ca().create_child_ca()
    issued = intermediate.issue_cert("a.example")
    assert len(issued.cert_chain_pems) == 3
    bundle = check_issued(chain_of(issued), issued.private_key_pem.bytes(), ["a.example"], NOW)
    assert pem_blocks(bundle)[:3] == [blob.bytes() for blob in issued.cert_chain_pems]


def refused(issued, match: str, chain: bytes | None = None, key: bytes | None = None,
            domains=("a.example", "b.example"), now=NOW) -> None:
    with pytest.raises(CertrenewError, match=match) as caught:
        check_issued(chain_of(issued) if chain is None else chain,
                     issued.private_key_pem.bytes() if key is None else key, domains, now)
    assert "\n" not in str(caught.value)


def test_refuses_a_leaf_for_another_key(ca, issued):
    other = ca.issue_cert("a.example", "b.example")
    refused(issued, "not for our key", chain=chain_of(other))


def test_refuses_a_leaf_for_other_names(issued):
    refused(issued, r"is for a\.example, b\.example, not the ordered a\.example, c\.example",
            domains=("a.example", "c.example"))
    refused(issued, "not the ordered a.example$", domains=("a.example",))


def test_refuses_a_leaf_not_valid_now(ca):
    expired = ca.issue_cert("a.example", not_before=NOW - datetime.timedelta(days=10),
                            not_after=NOW - datetime.timedelta(days=1))
    refused(expired, "expired on", domains=("a.example",))
    future = ca.issue_cert("a.example", not_before=NOW + datetime.timedelta(hours=1),
                           not_after=NOW + datetime.timedelta(days=90))
    refused(future, "not valid before", domains=("a.example",))
    slightly_ahead = ca.issue_cert("a.example", not_before=NOW + datetime.timedelta(minutes=2),
                                   not_after=NOW + datetime.timedelta(days=90))
    check_issued(chain_of(slightly_ahead), slightly_ahead.private_key_pem.bytes(), ["a.example"], NOW)


def test_the_validity_window_is_cut_at_its_edges(ca):
    """Expired the very second it ends; too early once past the five minutes of clock skew."""
    ends_now = ca.issue_cert("a.example", not_before=NOW - datetime.timedelta(days=10), not_after=NOW)
    refused(ends_now, "expired on", domains=("a.example",))
    too_early = ca.issue_cert("a.example", not_before=NOW + datetime.timedelta(minutes=6),
                              not_after=NOW + datetime.timedelta(days=90))
    refused(too_early, "not valid before", domains=("a.example",))


@pytest.mark.parametrize("body, match", [
    (b"", "holds no PEM certificate"),
    (b"<html><body>502 Bad Gateway</body></html>\n", "no END line"),
    (bytes(range(256)) * 4, "no END line"),
    (b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n", "block 1 is not"),
])
def test_refuses_a_body_that_is_not_a_certificate_chain(issued, body, match):
    refused(issued, "not a certificate chain: .*" + match, chain=body)


def test_refuses_garbage_around_the_chain(issued):
    refused(issued, "no END line", chain=chain_of(issued) + b"trailing garbage\n")
    refused(issued, "block 1 is not", chain=b"<html>\n" + chain_of(issued))
    refused(issued, "block 2 is not", chain=chain_of(issued) + issued.private_key_pem.bytes())


def test_refuses_a_chain_whose_certificates_do_not_sign_each_other(issued):
    stranger = trustme.CA().cert_pem.bytes()
    refused(issued, "chain .* is broken: certificate 1 .* is not signed by the next one",
            chain=issued.cert_chain_pems[0].bytes() + stranger)


# A bundle is proven loadable before it is installed (check_bundle).

def test_check_bundle_reads_the_leaf_of_a_chain_with_intermediates():
    intermediate = trustme.CA().create_child_ca()
    issued = intermediate.issue_cert("a.example")
    bundle = build_bundle(chain_of(issued), issued.private_key_pem.bytes())
    assert len(pem_blocks(bundle)) == 3
    assert check_bundle(bundle) == leaf_info(chain_of(issued))


def test_check_bundle_refuses_a_key_that_is_not_the_leafs(ca, issued):
    other = ca.issue_cert("a.example")
    with pytest.raises(CertrenewError, match="holds a key that is not its certificate's"):
        check_bundle(build_bundle(chain_of(issued), other.private_key_pem.bytes()))


@pytest.mark.parametrize("part", ["certificate", "key"])
def test_check_bundle_refuses_a_lone_block(issued, part):
    block = chain_of(issued) if part == "certificate" else issued.private_key_pem.bytes()
    with pytest.raises(CertrenewError, match="cannot be parsed: it is not a certificate chain followed by a key"):
        check_bundle(block)


def test_an_order_is_refused_only_when_this_hosts_clock_is_off_the_cas_beyond_what_harms_nothing():
    for ca_ahead in (None, CLOCK_SKEW, -CLOCK_AHEAD):
        check_clock(ca_ahead)  # within what check_issued tolerates, or what shifts no renewal, or unknown
    with pytest.raises(ConfigurationError, match="clock is 6 min behind the CA's.*not yet valid.*sync the clock"):
        check_clock(CLOCK_SKEW + datetime.timedelta(minutes=1))
    with pytest.raises(ConfigurationError, match="clock is 61 min ahead of the CA's.*renewed on every run.*sync the clock"):
        check_clock(-CLOCK_AHEAD - datetime.timedelta(minutes=1))
    with pytest.raises(ConfigurationError, match="clock is 144000 min ahead of the CA's"):
        check_clock(-datetime.timedelta(days=100))  # past any certificate's lifetime


def test_ip_addresses_of_the_san_are_names_of_the_certificate_in_canonical_form(ca):
    """RFC 8738: the CA puts an ordered IP address in an iPAddress SAN entry, not a dNSName."""
    issued = ca.issue_cert("a.example", "2001:db8:0::1", "192.0.2.1")
    fullchain, key = issued.cert_chain_pems[0].bytes() + ca.cert_pem.bytes(), issued.private_key_pem.bytes()
    assert leaf_info(fullchain).domains == ("a.example", "2001:db8::1", "192.0.2.1")
    check_issued(fullchain, key, ["192.0.2.1", "2001:db8::1", "a.example"], datetime.datetime.now(datetime.timezone.utc))
    with pytest.raises(CertrenewError, match="not the ordered 192.0.2.1, 2001:db8::1, a.example, b.example"):
        check_issued(fullchain, key, ["192.0.2.1", "2001:db8::1", "a.example", "b.example"],
                     datetime.datetime.now(datetime.timezone.utc))
def test_a_serial_is_spelt_as_openssl_spells_it_everywhere(tmp_path):
    import subprocess

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding

    from certrenew.cli.status import CertificateStatus

    key, name = ec.generate_private_key(ec.SECP256R1()), x509.Name.from_rfc4514_string("CN=a.example")
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(0x7f438e1de1d7180).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(Encoding.PEM))
    openssl = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", tmp_path / "cert.pem"],
                             capture_output=True, text=True, check=True).stdout.strip()
    serial = leaf_info(cert.public_bytes(Encoding.PEM)).serial  # what run, records and CERTRENEW_SERIAL say
    assert openssl == "serial=07F438E1DE1D7180" and serial == "07f438e1de1d7180"
    row = CertificateStatus("a", ["a.example"], "ok", "7f438e1de1d7180", None, None, None, None, 0)  # an older record
    assert row.to_json()["serial"] == serial
