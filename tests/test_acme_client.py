import base64
import datetime

import pytest
import trustme
from acme import messages
from cryptography import x509

from certrenew.acme_client import AcmeClient, RenewalWindow, ari_cert_id
from certrenew.errors import CertrenewError


def test_ari_cert_id_is_authority_key_id_dot_serial():
    cert = x509.load_pem_x509_certificate(trustme.CA().issue_cert("a.example").cert_chain_pems[0].bytes())
    aki, serial = ari_cert_id(cert).split(".")
    assert "=" not in aki + serial
    aki_ext = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert base64.urlsafe_b64decode(aki + "=" * (-len(aki) % 4)) == aki_ext.key_identifier
    decoded = base64.urlsafe_b64decode(serial + "=" * (-len(serial) % 4))
    assert int.from_bytes(decoded, "big", signed=True) == cert.serial_number


def test_window_pick_stays_inside():
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    window = RenewalWindow(start, start + datetime.timedelta(days=2), start)
    assert all(start <= window.pick() <= window.end for _ in range(100))


class FussyCA(AcmeClient):
    """An AcmeClient whose CA (no network) refuses orders naming a replaced certificate, or all orders."""

    def __init__(self, refuse_all=False):
        self.refuse_all = refuse_all
        self.orders = []

    def _new_order(self, domains, csr_pem, replaces, profile):
        self.orders.append(replaces)
        if replaces or self.refuse_all:
            raise messages.Error.with_code("malformed", detail="no, thanks")
        return "order"


def test_an_order_refused_for_replaces_is_sent_once_more_without_it():
    client = FussyCA()
    assert client._create_order(["a.example"], b"csr", "AKI.SERIAL", None) == "order"
    assert client.orders == ["AKI.SERIAL", None]


def test_an_order_refused_anyway_fails_after_that_one_retry():
    client = FussyCA(refuse_all=True)
    with pytest.raises(CertrenewError, match="refused to create the order: no, thanks"):
        client._create_order(["a.example"], b"csr", "AKI.SERIAL", None)
    assert client.orders == ["AKI.SERIAL", None]
    with pytest.raises(CertrenewError):
        client._create_order(["a.example"], b"csr", None, None)
    assert client.orders == ["AKI.SERIAL", None, None]
