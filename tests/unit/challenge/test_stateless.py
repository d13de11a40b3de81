import http.server
import threading

import josepy
import pytest
from acme import challenges

from certrenew.acme.account import new_account_key_pem
from certrenew.challenge.stateless import StatelessSolver, snippet, thumbprint
from certrenew.config import build_settings
from certrenew.config.challenges import TOKEN as TOKEN_PATTERN
from certrenew.errors import CertrenewError, UsageError
from certrenew.renewal.preflight import FAIL, OK, WARN, probe_node

KEY = new_account_key_pem()
TOKEN = "tok_en-1"


def test_the_thumbprint_ends_the_key_authorization_the_ca_asks_for():
    expected = challenges.HTTP01(token=josepy.b64.b64decode(TOKEN)).key_authorization(josepy.JWK.load(KEY))
    assert f"{TOKEN}.{thumbprint(KEY)}" == expected


def test_the_lines_answer_only_a_token_from_an_environment_variable_or_a_map():
    lines = snippet("THUMB")
    assert lines.global_lines == ("setenv ACME_THUMBPRINT THUMB",)
    assert lines.frontend_lines == (
        "acl acme-path  path_beg /.well-known/acme-challenge/",
        r"acl acme-token path_reg ^/\.well-known/acme-challenge/[A-Za-z0-9_-]+$",
        'http-request return status 200 content-type text/plain lf-string "%[path,field(4,/)].${ACME_THUMBPRINT}" '
        "if acme-token",
        'http-request return status 404 content-type text/plain string "not found" if acme-path')
    mapped = snippet("THUMB", "/etc/haproxy/acme.map")
    assert mapped.global_lines == ()
    assert "%[str(thumbprint),map(/etc/haproxy/acme.map)]" in mapped.frontend_lines[2]


def test_the_solver_refuses_another_accounts_key_authorization_and_a_missing_account():
    solver = StatelessSolver(KEY, "https://ca.example/dir")
    solver.prepare(["a.example"])
    solver.present("a.example", TOKEN, f"{TOKEN}.{thumbprint(KEY)}")
    with pytest.raises(CertrenewError, match="certrenew haproxy-config"):
        solver.present("a.example", TOKEN, f"{TOKEN}.{thumbprint(new_account_key_pem())}")
    with pytest.raises(CertrenewError, match="--create-account"):
        StatelessSolver(None, "https://ca.example/dir").prepare(["a.example"])


def test_the_mode_is_one_of_two_and_nodes_are_host_port():
    settings = build_settings({"http_01_mode": "stateless", "http_01_node": ["192.0.2.1:80", "192.0.2.2:80"]})
    assert (settings.responder.http_01_mode, settings.responder.http_01_node) == ("stateless", ("192.0.2.1:80", "192.0.2.2:80"))
    with pytest.raises(UsageError, match="--http-01-mode.*responder, stateless"):
        build_settings({"http_01_mode": "stateles"})
    with pytest.raises(UsageError, match="--http-01-node names the HAProxy nodes of a fleet.*--http-01-mode stateless.*"
                                         "--store etcd"):
        build_settings({"http_01_node": ["192.0.2.1:80"]})
    shared = build_settings({"http_01_node": ["192.0.2.1:80"], "store": "etcd://127.0.0.1:2379/fleet"})
    assert shared.responder.http_01_node == ("192.0.2.1:80",)  # the responders answer from the store


@pytest.fixture
def node():
    """A port-80 frontend stand-in answering a GET of a token (of anything with `node.echo`) with `node.body`."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            token = self.path.rsplit("/", 1)[1]
            found = server.echo or TOKEN_PATTERN.fullmatch(token)
            body = server.body(token).encode() if found else b"not found"
            self.send_response(200 if found else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.echo = False
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.address = f"127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


def test_a_node_passes_with_the_key_authorization_and_fails_naming_itself_otherwise(node):
    solver = StatelessSolver(KEY, "https://ca.example/dir")
    node.body = lambda token: f"{token}.{thumbprint(KEY)}"
    assert probe_node(solver, "a.example", node.address).status == OK
    node.body = lambda token: f"{token}.{thumbprint(new_account_key_pem())}"
    check = probe_node(solver, "a.example", node.address)
    assert (check.status, check.what) == (FAIL, f"HAProxy node {node.address}")
    assert "certrenew haproxy-config" in check.detail
    node.body, node.echo = lambda token: f"{token}.{thumbprint(KEY)}", True
    check = probe_node(solver, "a.example", node.address)
    assert check.status == FAIL and "echoes any path" in check.detail
    node.shutdown()
    node.server_close()
    assert probe_node(solver, "a.example", node.address).status == FAIL  # a node named is a node that must answer
    assert probe_node(StatelessSolver(None, "https://ca.example/dir"), "a.example", node.address).status == FAIL


def test_without_nodes_a_name_that_does_not_resolve_only_warns():
    assert probe_node(StatelessSolver(KEY, "https://ca.example/dir"), "nowhere.invalid", None).status == WARN
