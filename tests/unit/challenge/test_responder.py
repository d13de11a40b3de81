import http.server
import socket
import threading
import time

import pytest
import requests

from certrenew.challenge import responder as responder_module
from certrenew.challenge.responder import Responder
from certrenew.config.challenges import check_domains
from certrenew.errors import CertrenewError, UsageError
from certrenew.state.store import FileStore
from certrenew.system import httpd
from tests.harness.faults import held_open


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def responder():
    port = free_port()
    with Responder(f"127.0.0.1:{port}") as running:
        running.base = f"http://127.0.0.1:{port}"
        yield running


def get(responder, path, host="a.example", method="GET"):
    return requests.request(method, responder.base + path, headers={"Host": host}, timeout=5)


def test_serves_the_key_authorization_for_its_domain_only(responder):
    responder.present("a.example", "tok_en-1", "tok_en-1.thumb")
    answer = get(responder, "/.well-known/acme-challenge/tok_en-1", host="A.example:8080")
    assert (answer.status_code, answer.text) == (200, "tok_en-1.thumb")
    assert answer.headers["Content-Type"] == "text/plain"
    assert get(responder, "/.well-known/acme-challenge/tok_en-1", host="b.example").status_code == 404
    assert get(responder, "/.well-known/acme-challenge/tok_en-1", host="a.example.").text == "tok_en-1.thumb"
    head = get(responder, "/.well-known/acme-challenge/tok_en-1", method="HEAD")
    assert head.status_code == 200 and head.text == ""


def test_an_ip_address_is_answered_for_its_host_header_in_any_form(responder):
    responder.present("192.0.2.1", "tok4", "tok4.thumb")
    responder.present("2001:db8::1", "tok6", "tok6.thumb")
    assert get(responder, "/.well-known/acme-challenge/tok4", host="192.0.2.1").text == "tok4.thumb"
    for host in ("[2001:db8::1]", "[2001:DB8:0:0::1]:80"):
        assert get(responder, "/.well-known/acme-challenge/tok6", host=host).text == "tok6.thumb"
    assert get(responder, "/.well-known/acme-challenge/tok6", host="[2001:db8::2]").status_code == 404
    assert get(responder, "/.well-known/acme-challenge/tok4", host="192.0.2.2").status_code == 404


def test_refuses_everything_else(responder):
    responder.present("a.example", "tok", "tok.thumb")
    assert get(responder, "/.well-known/acme-challenge/other").status_code == 404
    assert get(responder, "/.well-known/acme-challenge/../../etc/passwd").status_code == 404
    assert get(responder, "/.well-known/acme-challenge/tok/").status_code == 404
    assert get(responder, "/").status_code == 404
    assert get(responder, "/.well-known/acme-challenge/tok", method="POST").status_code == 405


def test_cleanup_withdraws_the_token(responder):
    responder.present("a.example", "tok", "tok.thumb")
    responder.cleanup("a.example", "tok")
    assert get(responder, "/.well-known/acme-challenge/tok").status_code == 404


def test_listens_from_the_first_present_until_exit():
    port = free_port()
    with Responder(f"127.0.0.1:{port}") as responder:
        with pytest.raises(ConnectionRefusedError):  # nothing presented: the port stays closed
            socket.create_connection(("127.0.0.1", port), timeout=2)
        responder.present("a.example", "tok", "tok.thumb")
        responder.present("b.example", "tok2", "tok2.thumb")  # the same server
        assert requests.get(f"http://127.0.0.1:{port}/.well-known/acme-challenge/tok2",
                            headers={"Host": "b.example"}, timeout=5).text == "tok2.thumb"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_busy_port_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with Responder(f"127.0.0.1:{s.getsockname()[1]}") as responder:
            with pytest.raises(CertrenewError, match="cannot listen on 127.0.0.1"):
                responder.present("a.example", "tok", "tok.thumb")


# A run beside the daemon: one responder on the port serves every process's answers through the store.

def fetch(port, token, host):
    return requests.get(f"http://127.0.0.1:{port}/.well-known/acme-challenge/{token}", headers={"Host": host},
                        timeout=5)


def test_a_run_borrows_the_port_of_a_responder_serving_its_store(tmp_path):
    port, state = free_port(), tmp_path / "state"
    with Responder(f"127.0.0.1:{port}", FileStore(state)) as daemon, \
            Responder(f"127.0.0.1:{port}", FileStore(state)) as run:
        daemon.start()
        run.present("a.example", "tok", "tok.thumb")  # cannot bind: borrows the daemon's port
        assert (state / "challenges" / "tok.json").exists()
        assert fetch(port, "tok", "a.example").text == "tok.thumb"  # the daemon's responder answers it
        assert fetch(port, "tok", "b.example").status_code == 404  # for its domain only
        run.present("b.example", "tok2", "tok2.thumb")
        run.cleanup("a.example", "tok")
        assert fetch(port, "tok", "a.example").status_code == 404
        assert not (state / "challenges" / "tok.json").exists()
    assert list((state / "challenges").iterdir()) == []  # the run withdrew tok2 on exit, the probe at once


def test_a_run_whose_daemon_stopped_answers_its_challenges_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(responder_module, "LEND_GRACE", 0.3)  # the daemon waits this long for the run's answers
    port, state = free_port(), tmp_path / "state"
    with Responder(f"127.0.0.1:{port}", FileStore(state)) as run:
        with Responder(f"127.0.0.1:{port}", FileStore(state)) as daemon:
            daemon.start()
            run.present("a.example", "tok", "tok.thumb")  # borrowed
            assert (state / "challenges" / "tok.json").exists()
        with pytest.raises(requests.ConnectionError):  # the daemon is gone: nothing listens
            fetch(port, "tok", "a.example")
        run.present("b.example", "tok2", "tok2.thumb")  # the port is free: the run takes it
        assert fetch(port, "tok2", "b.example").text == "tok2.thumb"
        assert fetch(port, "tok", "a.example").text == "tok.thumb"  # and answers what it had published
        assert not (state / "challenges" / "tok2.json").exists()  # its own now: nothing published
        run.cleanup("a.example", "tok")
        assert not (state / "challenges" / "tok.json").exists()  # what it had published is withdrawn
        assert fetch(port, "tok", "a.example").status_code == 404


def lender_and_borrower(tmp_path):
    """(port, the daemon's responder serving it, a run's responder on the same port and state dir)."""
    port, state = free_port(), tmp_path / "state"
    daemon, run = Responder(f"127.0.0.1:{port}", FileStore(state)), Responder(f"127.0.0.1:{port}", FileStore(state))
    daemon.start()
    return port, daemon, run


def closing(responder):
    """`responder` closing in a thread of its own, which the caller joins."""
    thread = threading.Thread(target=responder.__exit__, args=(None, None, None))
    thread.start()
    return thread


def test_a_responder_that_lent_its_port_serves_the_borrowers_answers_until_they_are_withdrawn(tmp_path, monkeypatch):
    monkeypatch.setattr(responder_module, "LEND_SETTLE", 0.2)
    port, daemon, run = lender_and_borrower(tmp_path)
    with run:
        run.present("a.example", "tok", "tok.thumb")  # borrowed
        stopping = closing(daemon)
        time.sleep(0.5)  # past LEND_SETTLE: only the run's published answer keeps it open
        assert stopping.is_alive() and fetch(port, "tok", "a.example").text == "tok.thumb"
        run.cleanup("a.example", "tok")
        stopping.join(timeout=2)
        assert not stopping.is_alive()  # its answers withdrawn, the run no longer needs the port
        with pytest.raises(requests.ConnectionError):
            fetch(port, "tok", "a.example")


def test_a_lender_keeps_serving_a_moment_after_the_probe_for_answers_not_published_yet(tmp_path, monkeypatch):
    """The borrower publishes its answers only after its probe: a lender closing in between waits for them."""
    monkeypatch.setattr(responder_module, "LEND_SETTLE", 0.5)
    port, daemon, run = lender_and_borrower(tmp_path)
    with run:
        run.start(borrow=True)  # the probe, no answer published yet
        stopping = closing(daemon)
        run.present("a.example", "tok", "tok.thumb")
        assert fetch(port, "tok", "a.example").text == "tok.thumb"
        run.cleanup("a.example", "tok")
        stopping.join(timeout=2)
        assert not stopping.is_alive()


def test_a_lender_stops_waiting_after_its_grace_for_answers_a_killed_run_left(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(responder_module, "LEND_SETTLE", 0.0)
    monkeypatch.setattr(responder_module, "LEND_GRACE", 0.5)
    port, daemon, run = lender_and_borrower(tmp_path)
    run.present("a.example", "tok", "tok.thumb")  # borrowed; and the run is killed: never withdrawn
    started = time.monotonic()
    daemon.__exit__(None, None, None)
    assert 0.5 <= time.monotonic() - started < 2
    assert "after 0.5 s with answers still published" in caplog.text
    with pytest.raises(requests.ConnectionError):
        fetch(port, "tok", "a.example")


def test_a_responder_never_borrowed_closes_at_once_whatever_the_store_holds(tmp_path):
    port, state = free_port(), tmp_path / "state"
    FileStore(state).publish_challenge("tok", "a.example", "tok.thumb")  # another node's, say
    daemon = Responder(f"127.0.0.1:{port}", FileStore(state))
    daemon.start()
    assert fetch(port, "tok", "a.example").text == "tok.thumb"
    started = time.monotonic()
    daemon.__exit__(None, None, None)
    assert time.monotonic() - started < 0.5


def test_an_answer_a_process_owns_is_not_written_to_the_store(tmp_path):
    port, state = free_port(), tmp_path / "state"
    with Responder(f"127.0.0.1:{port}", FileStore(state)) as own:
        own.present("a.example", "tok", "tok.thumb")
        assert fetch(port, "tok", "a.example").text == "tok.thumb"
    assert not (state / "challenges").exists()


def test_a_port_held_by_something_else_is_not_borrowed(tmp_path, monkeypatch):
    monkeypatch.setattr(responder_module, "PROBE_TIMEOUT", 0.5)  # the silent holder's probe gives up soon
    port = free_port()
    with Responder(f"127.0.0.1:{port}", FileStore(tmp_path / "other")) as daemon, \
            Responder(f"127.0.0.1:{port}", FileStore(tmp_path / "state")) as run:
        daemon.start()  # a certrenew, but serving another state dir
        with pytest.raises(CertrenewError, match="does not answer this state dir's challenges"):
            run.present("a.example", "tok", "tok.thumb")
    assert list((tmp_path / "state" / "challenges").iterdir()) == []  # the probe was withdrawn
    with socket.socket() as s:  # not HTTP at all
        s.bind(("127.0.0.1", 0))
        s.listen()
        with Responder(f"127.0.0.1:{s.getsockname()[1]}", FileStore(tmp_path / "state")) as run:
            with pytest.raises(CertrenewError, match="does not answer this state dir's challenges"):
                run.present("a.example", "tok", "tok.thumb")


class _Always200(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.requests.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"hello from a catch-all web server\n")

    def log_message(self, *args):
        pass


def test_a_port_held_by_a_server_answering_200_to_everything_is_not_borrowed(tmp_path):
    """Only the probe's own answer proves the holder serves this store: a 200 is not enough."""
    _Always200.requests = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Always200)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Responder(f"127.0.0.1:{server.server_address[1]}", FileStore(tmp_path / "state")) as run:
            with pytest.raises(CertrenewError, match="does not answer this state dir's challenges"):
                run.present("a.example", "tok", "tok.thumb")
    finally:
        server.shutdown()
        server.server_close()
    assert [path.startswith("/.well-known/acme-challenge/") for path in _Always200.requests] == [True]  # probed


def test_the_daemon_itself_never_borrows(tmp_path):
    port, state = free_port(), tmp_path / "state"
    with Responder(f"127.0.0.1:{port}", FileStore(state)) as first, \
            Responder(f"127.0.0.1:{port}", FileStore(state)) as second:
        first.start()
        with pytest.raises(CertrenewError, match="cannot listen"):
            second.start()  # a daemon must own the port for its life, not lean on another process


def test_a_token_from_the_ca_that_is_not_base64url_is_refused(responder):
    with pytest.raises(CertrenewError, match="not base64url"):
        responder.present("a.example", "../../meta", "x")


def test_refuses_wildcards_and_has_nothing_to_wait_for():
    responder = Responder("127.0.0.1:1")
    check_domains(responder.challenge_type, ["a.example"])
    with pytest.raises(UsageError, match="wildcard certificates need the DNS-01 challenge"):
        check_domains(responder.challenge_type, ["*.example.com"])
    responder.wait_ready()


@pytest.mark.parametrize("bad", ["49494", "host:", ":80", "h:99999", "h:port"])
def test_listen_address_is_checked(bad):
    with pytest.raises(ValueError, match="or HOST:PORT"):
        Responder(bad)


def raw(responder, data: bytes, timeout=5) -> bytes:
    with socket.create_connection(("127.0.0.1", responder.address.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def test_answers_the_exact_key_authorization_as_text_plain(responder):
    responder.present("a.example", "tok", "tok.thumb")
    reply = raw(responder, b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: a.example\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Type: text/plain" in head
    assert b"Connection: close" in head and body == b"tok.thumb"


@pytest.mark.parametrize("request_head, status", [
    (b"BREW /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: a.example\r\n\r\n", b"405"),
    (b"GET /.well-known/acme-challenge/tok\r\n\r\n", b"400"),
    (b"GET /.well-known/acme-challenge/%2e%2e HTTP/1.1\r\nHost: a.example\r\n\r\n", b"404"),
    (b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: a.example\r\nX: " + b"y" * 9000 + b"\r\n\r\n",
     b"431"),
])
def test_refuses_bad_requests_with_a_tiny_body(responder, request_head, status):
    responder.present("a.example", "tok", "tok.thumb")
    reply = raw(responder, request_head)
    assert reply.split(b" ")[1] == status and len(reply.partition(b"\r\n\r\n")[2]) < 32


def test_slow_and_idle_clients_do_not_block_a_validation(responder):
    responder.present("a.example", "tok", "tok.thumb")
    threads = threading.active_count()  # other tests' servers may still be winding down: count ours only
    idle = [socket.create_connection(("127.0.0.1", responder.address.port)) for _ in range(200)]
    for sock in idle[:100]:
        sock.sendall(b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHo")  # a slowloris, mid-header
    try:
        started = time.monotonic()
        answer = get(responder, "/.well-known/acme-challenge/tok")
        # Blocked behind even one slowloris, it would wait out REQUEST_TIMEOUT; half of it is generous under load.
        assert answer.status_code == 200 and time.monotonic() - started < httpd.REQUEST_TIMEOUT / 2
    finally:
        for sock in idle:
            sock.close()
    assert threading.active_count() - threads < 5  # 200 connections are not 200 threads


def test_a_slow_client_is_cut_off_after_the_request_time_limit(monkeypatch):
    monkeypatch.setattr(httpd, "REQUEST_TIMEOUT", 0.5)
    port = free_port()
    with Responder(f"127.0.0.1:{port}") as responder:
        responder.present("a.example", "tok", "tok.thumb")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            started = time.monotonic()
            sock.sendall(b"GET / HTTP/1.1\r\n")
            assert sock.recv(100) == b""  # closed by the responder, without an answer
            assert 0.4 < time.monotonic() - started < 3


def test_connections_beyond_the_bound_close_the_oldest(monkeypatch):
    monkeypatch.setattr(httpd, "MAX_CONNECTIONS", 3)
    port = free_port()
    with Responder(f"127.0.0.1:{port}") as responder:
        responder.present("a.example", "tok", "tok.thumb")
        held = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(3)]
        time.sleep(0.2)
        reply = requests.get(f"http://127.0.0.1:{port}/.well-known/acme-challenge/tok",
                             headers={"Host": "a.example"}, timeout=2)
        assert reply.text == "tok.thumb"
        assert held[0].recv(100) == b""  # the oldest made room
        for sock in held:
            sock.close()


def test_the_cap_holds_under_a_burst_and_validation_still_works(monkeypatch, open_files):
    """2000 idle connections as fast as the client can open them; the responder never holds more than the cap."""
    monkeypatch.setattr(httpd, "MAX_CONNECTIONS", 64)
    port = free_port()
    flood = min(2000, open_files - 200)
    with Responder(f"127.0.0.1:{port}") as responder:
        responder.present("a.example", "tok", "tok.thumb")
        held, most = [], 0
        try:
            for index in range(flood):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", port))
                held.append(sock)
                if index % 100 == 0:
                    most = max(most, held_open(port))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the responder works through the backlog
                most = max(most, held_open(port))
                answer = requests.get(f"http://127.0.0.1:{port}/.well-known/acme-challenge/tok",
                                      headers={"Host": "a.example"}, timeout=5)
                if answer.text == "tok.thumb":
                    break
            assert answer.text == "tok.thumb"
            most = max(most, held_open(port))
        finally:
            for sock in held:
                sock.close()
    assert flood >= 900 and 0 < most <= 64 + 1, (flood, most)
