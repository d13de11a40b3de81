"""The transport: no answer outlives the deadline or exceeds MAX_RESPONSE."""

import socket
import threading
import time

import pytest
import requests

from certrenew.acme_transport import MAX_RESPONSE, Deadline, _Network
from certrenew.errors import CertrenewError


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



def test_requests_share_the_deadlines_one_watchdog_which_close_stops(monkeypatch):
    """A run sends about ten requests per certificate: none may start a thread of its own."""
    def answer(connection):
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    peer, deadline = Peer(answer), Deadline(60)
    before = set(threading.enumerate())
    networks = [_Network(deadline, key=None) for _ in range(2)]
    [watchdog] = [thread for thread in set(threading.enumerate()) - before if thread.name == "certrenew-deadline"]
    here, started, start = threading.get_ident(), [], threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start",
                        lambda thread: (started.append(thread) if threading.get_ident() == here else None,
                                        start(thread))[1])
    for network in networks * 5:
        assert network.get(peer.url).content == b"{}"
    assert started == []
    deadline.close()
    watchdog.join(timeout=5)
    assert not watchdog.is_alive()
