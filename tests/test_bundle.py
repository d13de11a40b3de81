import pytest
import trustme

from certrenew.bundle import build_bundle, leaf_info, pem_blocks
from certrenew.errors import CertrenewError


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
