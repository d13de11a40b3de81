import base64
import datetime
import socket
import threading
import time

import pytest
import requests
import trustme
from acme import messages
from cryptography import x509

from certrenew.acme_client import MAX_RESPONSE, AcmeClient, Deadline, RenewalWindow, _Network, ari_cert_id
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


# The transport: no answer outlives the deadline or exceeds MAX_RESPONSE.

class Peer:
    """A plain HTTP peer on loopback that answers every request with `answer(connection)`."""

    def __init__(self, answer):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/dir"
        self.answer = answer
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(connection,), daemon=True).start()

    def _one(self, connection):
        with connection:
            connection.recv(65536)
            try:
                self.answer(connection)
            except OSError:
                pass


def drip(data: bytes):
    def answer(connection):
        for byte in data:
            connection.sendall(bytes([byte]))
            time.sleep(0.2)
    return answer


@pytest.mark.parametrize("answer", [
    drip(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + b" " * 1000),
    drip(b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 1000),
], ids=["body", "headers"])
def test_a_dripping_peer_is_cut_at_the_deadline(answer):
    network = _Network(Deadline(2), key=None)
    started = time.monotonic()
    with pytest.raises(CertrenewError, match="time budget of 2 s"):
        network.get(Peer(answer).url)
    assert time.monotonic() - started < 3.5


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_RESPONSE + 1),
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
], ids=["declared", "chunked"])
def test_an_answer_larger_than_the_cap_is_refused(head):
    sent = []

    def answer(connection):
        connection.sendall(head)
        block = b"x" * 65536
        for _ in range(64):
            connection.sendall(b"%x\r\n%s\r\n" % (len(block), block) if b"chunked" in head else block)
            sent.append(len(block))
    with pytest.raises(requests.RequestException, match="larger than 1024 KiB"):
        _Network(Deadline(10), key=None).get(Peer(answer).url)
    assert sum(sent) < 8 * MAX_RESPONSE


def test_an_answer_within_the_cap_is_read_whole():
    body = b'{"x": "' + b"a" * 100000 + b'"}'

    def answer(connection):
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                           % (len(body), body))
    assert _Network(Deadline(10), key=None).get(Peer(answer).url).content == body
