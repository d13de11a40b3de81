"""Stateless HTTP-01 on a fleet of three real HAProxy nodes (127.0.0.1, .2, .3 on the same ports) in front of
a real pebble, with no certrenew responder running: node 1 runs certrenew, and each name resolves (for pebble)
to one node, which answers the CA by itself with the lines `certrenew haproxy-config` printed. A node without
them, or with another account's thumbprint, stops `certrenew check` and a run before any order."""

import contextlib
import re
import socket
import time

import pytest

from certrenew.acme.account import new_account_key_pem
from certrenew.challenge.stateless import thumbprint
from tests.harness.faultproxy import FaultProxy
from tests.harness.lab import LOOPBACK, fleet_address

WWW, API = "www.fleet.test", "api.fleet.test"


def _lines(output: str) -> tuple[list[str], list[str]]:
    """The global and frontend lines of `certrenew haproxy-config`'s output, without comments."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in output.splitlines():
        if line and not line.startswith((" ", "#")):
            current = sections.setdefault(line, [])
        elif line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return sections.get("global", []), sections["frontend http"]


def _snippet(lab, env=None, *args: str) -> tuple[list[str], list[str]]:
    made = lab.certrenew("haproxy-config", "--create-account", *args, env=env)
    assert made.returncode == 0, made.stderr
    return _lines(made.stdout)


def _add_to_node_1(lab, global_lines, frontend_lines) -> None:
    """Add the lines to the lab's HAProxy and wait until they answer: after a reload the old worker
    (with the responder's ACL only) may take a connection for a moment longer."""
    lab.add_haproxy_lines(global_lines, frontend_lines)
    deadline = time.monotonic() + 10
    while not _get(lab, b"/.well-known/acme-challenge/ready").startswith(b"HTTP/1.1 200"):
        assert time.monotonic() < deadline, "node 1 does not answer with the lines after its reload"
        time.sleep(0.1)


def _fleet_env(lab, env=None) -> dict[str, str]:
    nodes = ",".join(f"{fleet_address(index)}:{lab.http_port}" for index in (1, 2, 3))
    return {"CERTRENEW_HTTP_01_MODE": "stateless", "CERTRENEW_HTTP_01_NODE": nodes, **(env or {})}


@contextlib.contextmanager
def _responder_port_taken(lab):
    """Hold the responder's address with a socket that never answers: a run that started a responder (or
    asked one) would fail, so an issued certificate proves HAProxy answered by itself."""
    host, port = lab.listen.rsplit(":", 1)
    with socket.socket() as holder:
        holder.bind((host, int(port)))
        holder.listen()
        yield


def _challenge_requests(lab, index: int) -> int:
    """How many challenge requests fleet node `index` logged (node 1 is the lab's HAProxy)."""
    log = lab.workdir / ("haproxy.log" if index == 1 else f"node{index}.log")
    return len(re.findall(r"GET /\.well-known/acme-challenge/", log.read_text()))


def test_names_on_node_3_and_node_2_are_validated_by_haproxy_alone(lab):
    global_lines, frontend_lines = _snippet(lab)
    _add_to_node_1(lab, global_lines, frontend_lines)
    for index in (2, 3):
        lab.start_fleet_node(index, global_lines, frontend_lines)
    lab.point_name(WWW, fleet_address(3))
    lab.point_name(API, fleet_address(2))
    env = _fleet_env(lab)
    with _responder_port_taken(lab):
        check = lab.certrenew("check", WWW, env=env)
        assert check.returncode == 0, check.stdout + check.stderr
        for index in (1, 2, 3):
            assert f"ok   HAProxy node {fleet_address(index)}:{lab.http_port}: answers http-01" in check.stdout
        for name, index in ((WWW, 3), (API, 2)):
            before = [_challenge_requests(lab, node) for node in (1, 2, 3)]
            result = lab.certrenew(name, env=env)
            assert result.returncode == 0, result.stderr
            delta = [_challenge_requests(lab, node) - seen for node, seen in zip((1, 2, 3), before)]
            # Each node got the pre-flight probe (a token, and a path that is none); the one the name resolves
            # to, pebble's validation too.
            assert delta[index - 1] > 2, delta
            assert [count for node, count in enumerate(delta, 1) if node != index] == [2, 2], delta
    for name in (WWW, API):
        served = lab.served_certificate(name)  # verified to pebble's root, for the name
        assert served.subject.rfc4514_string() == f"CN={name}"


@pytest.mark.parametrize("node_3", ["without the lines", "with another account's thumbprint", "echoing any path"])
def test_a_node_that_does_not_answer_stops_check_and_the_run_before_any_order(lab, node_3):
    with FaultProxy(lab) as proxy:
        global_lines, frontend_lines = _snippet(lab, proxy.env)
        _add_to_node_1(lab, global_lines, frontend_lines)
        lab.start_fleet_node(2, global_lines, frontend_lines)
        if node_3 == "without the lines":
            lab.start_fleet_node(3)
        elif node_3 == "echoing any path":
            lab.start_fleet_node(3, global_lines, [line.replace("path_reg ^/\\.", "path_beg /.").replace(
                "[A-Za-z0-9_-]+$", "") for line in frontend_lines])
        else:
            other = thumbprint(new_account_key_pem())
            lab.start_fleet_node(3, [f"setenv ACME_THUMBPRINT {other}"], frontend_lines)
        lab.point_name(WWW, fleet_address(3))
        env = _fleet_env(lab, proxy.env)
        node = f"HAProxy node {fleet_address(3)}:{lab.http_port}"
        check = lab.certrenew("check", WWW, env=env)
        assert check.returncode == 1
        failed = [line for line in check.stdout.splitlines() if line.startswith("FAIL")]
        assert len(failed) == 1 and failed[0].startswith(f"FAIL {node}: "), check.stdout
        assert "certrenew haproxy-config" in failed[0]
        assert ("echoes any path" in failed[0]) == (node_3 == "echoing any path")
        result = lab.certrenew(WWW, env=env)
        assert result.returncode == 1
        assert proxy.count("new-order") == 0, proxy.seen
        assert f"failed: {node}: " in result.stderr
        assert proxy.count("account") >= 1  # the run did reach the CA through the proxy: it counted


def _get(lab, path: bytes) -> bytes:
    with socket.create_connection((LOOPBACK, lab.http_port), timeout=5) as client:
        client.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: " + WWW.encode() + b"\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("tail", [b"<script>alert(1)</script>", b"abc.def", b"abc/def", b"abc%2Fdef", b"abc;evil",
                                  b"abc%3Cb%3E"])
def test_haproxy_echoes_only_a_token(lab, tail):
    _add_to_node_1(lab, *_snippet(lab))
    prefix = b"/.well-known/acme-challenge/"
    answered = _get(lab, prefix + b"Token_-123")
    assert answered.startswith(b"HTTP/1.1 200") and answered.endswith(b"\r\n\r\nToken_-123." + _thumbprint(lab))
    refused = _get(lab, prefix + tail)
    assert refused.startswith(b"HTTP/1.1 404") and refused.endswith(b"\r\n\r\nnot found"), refused
    assert tail not in refused
    queried = _get(lab, prefix + b"Token_-123?x=<b>")  # the path is the token; a query is never echoed
    assert queried.endswith(b"\r\n\r\nToken_-123." + _thumbprint(lab)), queried


def _thumbprint(lab) -> bytes:
    found = re.search(r"setenv ACME_THUMBPRINT (\S+)", lab.haproxy_cfg.read_text())
    assert found
    return found[1].encode()


def test_the_map_variant_answers_and_follows_set_map_without_a_reload(lab):
    map_file = lab.workdir / "acme-thumbprint.map"
    global_lines, _ = _snippet(lab)
    map_file.write_text(f"thumbprint {global_lines[0].split()[-1]}\n")
    _add_to_node_1(lab, [], _snippet(lab, None, "--map", str(map_file))[1])
    env = {"CERTRENEW_HTTP_01_MODE": "stateless", "CERTRENEW_HTTP_01_NODE": f"{LOOPBACK}:{lab.http_port}"}
    assert lab.certrenew("check", WWW, env=env).returncode == 0
    from certrenew.haproxy.runtime_api import RuntimeApi

    RuntimeApi(str(lab.admin_socket)).command(f"set map {map_file} thumbprint {thumbprint(new_account_key_pem())}")
    check = lab.certrenew("check", WWW, env=env)
    assert check.returncode == 1
    assert f"FAIL HAProxy node {LOOPBACK}:{lab.http_port}: " in check.stdout
