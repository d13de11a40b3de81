import socket

import pytest
import requests

from certrenew.errors import CertrenewError
from certrenew.responder import Responder, parse_listen


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
    head = get(responder, "/.well-known/acme-challenge/tok_en-1", method="HEAD")
    assert head.status_code == 200 and head.text == ""


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


def test_port_is_free_after_exit():
    port = free_port()
    with Responder(f"127.0.0.1:{port}"):
        pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_busy_port_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(CertrenewError, match="cannot listen on 127.0.0.1"):
            Responder(f"127.0.0.1:{s.getsockname()[1]}").__enter__()


@pytest.mark.parametrize("bad", ["49494", "host:", ":80", "h:99999", "h:port"])
def test_listen_address_is_checked(bad):
    with pytest.raises(CertrenewError, match="invalid listen address"):
        parse_listen(bad)
