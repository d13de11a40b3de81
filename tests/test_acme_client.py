"""The order flow's own decisions, with the CA faked where it answers (the transport's job)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from certrenew.acme_account import new_account_key_pem
from certrenew.acme_client import AcmeClient
from certrenew.acme_transport import Deadline, Transport
from certrenew.errors import CertrenewError
from certrenew.metrics import Telemetry


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


def test_telemetry_counts_every_request_and_every_failed_one():
    answers = [500, 500, 200]

    class FlakyDirectory(BaseHTTPRequestHandler):
        def do_GET(self):
            status = answers.pop(0)
            problem = {"type": "urn:ietf:params:acme:error:serverInternal", "detail": "try again"}
            body = json.dumps({"newNonce": "http://ca/nonce", "newAccount": "http://ca/account",
                               "newOrder": "http://ca/order"} if status == 200 else problem).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if status == 200 else "application/problem+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), FlakyDirectory) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        telemetry = Telemetry()
        try:
            Transport("http://127.0.0.1:%d/dir" % server.server_address[1], new_account_key_pem(),
                      Deadline(30), counter=telemetry)
        finally:
            server.shutdown()
    assert answers == []  # the two server errors were retried
    assert (telemetry.acme_requests, telemetry.acme_errors) == (3, 2)
