"""The order flow's own decisions, with the CA faked where it answers (the transport's job)."""

import pytest

from certrenew.acme_client import AcmeClient
from certrenew.errors import CertrenewError


class FussyCA(AcmeClient):
    """An AcmeClient whose CA (no network) refuses orders naming a replaced certificate, or all orders."""

    def __init__(self, refuse_all=False):
        self.refuse_all = refuse_all
        self.orders = []

    def _new_order(self, domains, csr_pem, replaces, profile):
        self.orders.append(replaces)
        if replaces or self.refuse_all:
            raise CertrenewError("the CA refused to create the order: no, thanks")  # as the transport says it
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
