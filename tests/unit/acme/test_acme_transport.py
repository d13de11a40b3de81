"""The transport: no answer outlives the deadline or exceeds MAX_RESPONSE."""

import datetime
import email.utils
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import trustme
from acme import messages

from certrenew.acme.account import new_account_key_pem
from certrenew.acme.transport import (
    MAX_RESPONSE,
    Deadline,
    Transport,
    _Network,
    clock_ahead,
    retry_after_seconds,
)
from certrenew.errors import CertrenewError


class Peer:
    """A plain HTTP peer on loopback that answers every request with `answer(connection)`."""

    def __init__(self, answer):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/dir"
        self.answer = answer
        self.received: list[bytes] = []
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
            self.received.append(connection.recv(65536))
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
    network = _Network(Deadline(2), scheme="http", key=None)
    started = time.monotonic()
    with pytest.raises(CertrenewError, match="time budget of 2 s"):
        network.get(Peer(answer).url)
    assert time.monotonic() - started < 3.5



def test_a_connection_the_ca_never_accepts_is_given_up_at_the_deadline():
    """The watchdog cuts only connected sockets: a connect that hangs (a firewall dropping SYNs) is
    bounded by the request's own timeout, which the deadline shortens."""
    with socket.create_server(("127.0.0.1", 0), backlog=0) as server:
        port = server.getsockname()[1]
        queued = []
        for _ in range(8):  # fill the accept queue: the kernel drops further SYNs
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
            queued.append(client)
        with socket.socket() as probe:  # the fault really happens: a connect now hangs
            probe.settimeout(0.5)
            with pytest.raises(TimeoutError):
                probe.connect(("127.0.0.1", port))
        started = time.monotonic()
        try:
            with pytest.raises(CertrenewError, match="time budget of 1 s"):
                _Network(Deadline(1), scheme="http", key=None).get(f"http://127.0.0.1:{port}/dir")
        finally:
            for client in queued:
                client.close()
    assert time.monotonic() - started < 10  # MAX_CALL_TIMEOUT (30 s) without the deadline's bound


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
        _Network(Deadline(10), scheme="http", key=None).get(Peer(answer).url)
    assert sum(sent) < 8 * MAX_RESPONSE


def test_an_answer_within_the_cap_is_read_whole():
    body = b'{"x": "' + b"a" * 100000 + b'"}'

    def answer(connection):
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                           % (len(body), body))
    assert _Network(Deadline(10), scheme="http", key=None).get(Peer(answer).url).content == body



def test_the_environment_is_read_once_per_ca_host_and_its_proxy_still_taken(monkeypatch):
    """requests reads the proxy variables and ~/.netrc for every request; certrenew once per CA host."""
    def answer(connection):
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    proxy = Peer(answer)
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", proxy.url.removesuffix("/dir"))
    reads, read = [], requests.utils.get_environ_proxies
    for module in (requests.utils, requests.sessions):  # the latter is where requests calls it from
        monkeypatch.setattr(module, "get_environ_proxies", lambda *args, **kwargs: (reads.append(args),
                                                                                    read(*args, **kwargs))[1])
    network = _Network(Deadline(10), scheme="http", key=None)
    for path in ("dir", "order/1", "cert/1"):
        network.get(f"http://ca.example/{path}")
    assert [request.split(b" ")[1] for request in proxy.received] == [
        b"http://ca.example/dir", b"http://ca.example/order/1", b"http://ca.example/cert/1"]
    assert len(reads) == 1


def test_requests_share_the_deadlines_one_watchdog_which_close_stops(monkeypatch):
    """A run sends about ten requests per certificate: none may start a thread of its own."""
    def answer(connection):
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    peer, deadline = Peer(answer), Deadline(60)
    before = set(threading.enumerate())
    networks = [_Network(deadline, scheme="http", key=None) for _ in range(2)]
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


class HttpsCA:
    """A CA on HTTPS (trustme's root) whose directory and nonces are fine, and whose other URLs are
    given by the test: a plain http:// one, or one that redirects to it."""

    def __init__(self, tmp_path, plain_url):
        ca = trustme.CA()
        self.ca_bundle = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_bundle))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(plain_url))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.base = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self, plain_url):
        base = lambda: self.base  # noqa: E731 (known once the server is bound)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/dir":
                    self.send_response(302)
                    self.send_header("Location", plain_url)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"newNonce": f"{base()}/nonce", "newAccount": f"{base()}/account",
                                   "newOrder": plain_url}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_HEAD(self):
                self.send_response(200)
                self.send_header("Replay-Nonce", "bm9uY2U")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass
        return Handler


ORDER = messages.NewOrder(identifiers=[messages.Identifier(typ=messages.IDENTIFIER_FQDN, value="a.example")])


@pytest.mark.parametrize("exchange", ["fetch", "post", "get", "redirect"])
def test_a_url_from_the_ca_that_is_not_https_is_refused_before_it_is_followed(tmp_path, exchange):
    asked = []
    plain = Peer(lambda connection: asked.append(connection))
    ca = HttpsCA(tmp_path, plain.url)
    try:
        transport = Transport(f"{ca.base}/dir", new_account_key_pem(), Deadline(30), str(ca.ca_bundle))
        calls = {"fetch": lambda: transport.fetch("fetch the order", plain.url),
                 "post": lambda: transport.post("create the order", transport.directory.newOrder, ORDER),
                 "get": lambda: transport.get("ask for renewal information", plain.url),
                 "redirect": lambda: transport.get("ask for renewal information", f"{ca.base}/renewal-info/x")}
        with pytest.raises(CertrenewError, match=rf"refusing {plain.url} from the CA: not an https:// URL"):
            calls[exchange]()
    finally:
        ca.server.shutdown()
        plain.server.close()
    assert asked == []  # nothing was sent to it


# Dates from the CA.

@pytest.fixture
def kolkata(monkeypatch):
    """This process in a timezone 5 h 30 min east of UTC (local time is what a naive datetime means)."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def answer_with(**headers: str) -> requests.Response:
    response = requests.Response()
    response.headers.update({name.replace("_", "-"): value for name, value in headers.items()})
    return response


def http_date(moment: datetime.datetime) -> str:
    return email.utils.format_datetime(moment, usegmt=True)


def test_a_retry_after_date_is_a_wait_from_the_answers_date_whatever_the_local_timezone(kolkata):
    assert time.localtime().tm_gmtoff == 5.5 * 3600  # the zone really is not UTC
    sent = datetime.datetime(2026, 12, 5, 12, 0, tzinfo=datetime.timezone.utc)
    later = answer_with(Retry_After=http_date(sent + datetime.timedelta(seconds=90)), Date=http_date(sent))
    assert retry_after_seconds(later) == 90.0
    assert retry_after_seconds(answer_with(Retry_After="7")) == 7.0
    assert retry_after_seconds(answer_with(Retry_After="soon")) is None
    assert retry_after_seconds(answer_with()) is None


def test_a_retry_after_date_without_the_answers_date_is_measured_from_now_in_utc(kolkata):
    """The library's parser gives a naive UTC time and compares it with local time: 5 h 30 min off here."""
    in_a_minute = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=60)
    wait = retry_after_seconds(answer_with(Retry_After=http_date(in_a_minute)))
    assert wait is not None and 55 <= wait <= 60


def test_the_cas_clock_is_read_from_the_date_of_its_answer():
    ahead = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=10)
    measured = clock_ahead(answer_with(Date=http_date(ahead)))
    assert measured is not None and abs(measured - datetime.timedelta(minutes=10)) < datetime.timedelta(seconds=5)
    assert clock_ahead(answer_with()) is None
    assert clock_ahead(answer_with(Date="yesterday")) is None


@pytest.mark.parametrize("kind", ["orderNotReady", "malformed", "unauthorized"])
def test_a_finalize_refused_at_the_first_look_is_none_whatever_problem_the_ca_names(kind, caplog):
    """RFC 8555 says orderNotReady; a CA saying anything else is asked again once the authorizations are valid
    (where a lasting refusal comes again, and is reported) rather than failing an order it may well issue."""
    def refuse(url, message):
        raise messages.Error(typ=f"urn:ietf:params:acme:error:{kind}", detail="authorizations pending")

    caplog.set_level("INFO", logger="certrenew")
    transport = Transport.__new__(Transport)
    transport.client = type("Client", (), {"_post": staticmethod(refuse)})()
    assert transport.post_if_ready("finalize the order", "https://ca/finalize", messages.CertificateRequest()) is None
    assert ("not saying orderNotReady but: authorizations pending" in caplog.text) == (kind != "orderNotReady")
