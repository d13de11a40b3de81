import base64
import datetime
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme
from acme import messages
from cryptography import x509

from certrenew.acme_client import AcmeClient, Deadline, RenewalWindow, ari_cert_id, new_account_key_pem
from certrenew.errors import CertrenewError
from certrenew.metrics import Telemetry


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
            AcmeClient("http://127.0.0.1:%d/dir" % server.server_address[1], new_account_key_pem(),
                       Deadline(30), telemetry=telemetry)
        finally:
            server.shutdown()
    assert answers == []  # the two server errors were retried
    assert (telemetry.acme_requests, telemetry.acme_errors) == (3, 2)
