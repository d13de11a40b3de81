"""The lab itself: the shipped HAProxy config holds up, and pebble and HAProxy answer as tests expect."""

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from cryptography.x509 import DNSName, SubjectAlternativeName
from lab import (
    SHIPPED_HAPROXY_CFG,
    LabError,
    check_haproxy_config,
    production_replacements,
    render_haproxy_config,
)

from certrenew.placeholder import PLACEHOLDER_NAME, write_placeholder


@pytest.fixture
def backend(lab):
    """A stand-in for certrenew's responder on the lab's backend port; yields the paths it was asked for."""
    paths = []

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self):
            paths.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", lab.backend_port), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield paths
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_rendered_config_passes_haproxy_check(lab):
    check_haproxy_config(lab.haproxy_cfg)


def shipped_config_in(tmp_path):
    """The shipped config with only its crt dir (created empty) and admin socket moved into tmp_path."""
    ssl_dir = tmp_path / "ssl"
    ssl_dir.mkdir()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(render_haproxy_config(
        SHIPPED_HAPROXY_CFG.read_text(), production_replacements(ssl_dir, tmp_path / "admin.sock")
    ))
    return cfg, ssl_dir


def test_shipped_config_passes_haproxy_check_with_a_placeholder(tmp_path):
    cfg, ssl_dir = shipped_config_in(tmp_path)
    write_placeholder(ssl_dir)
    check_haproxy_config(cfg)


def test_shipped_config_is_refused_with_an_empty_ssl_dir(tmp_path):
    """Why `certrenew bootstrap-ssl-dir` exists."""
    cfg, _ = shipped_config_in(tmp_path)
    with pytest.raises(LabError, match="no SSL certificate"):
        check_haproxy_config(cfg)


def test_https_serves_the_placeholder_which_does_not_verify(lab):
    served = lab.served_certificate_unverified("www.example.com")
    names = served.extensions.get_extension_for_class(SubjectAlternativeName).value.get_values_for_type(DNSName)
    assert names == [PLACEHOLDER_NAME]
    with pytest.raises(ssl.SSLCertVerificationError):
        lab.served_certificate("www.example.com")


def test_http_redirects_to_https_outside_acme_challenges(lab):
    response = requests.get(
        f"http://127.0.0.1:{lab.http_port}/some/page",
        headers={"Host": "www.example.com"}, allow_redirects=False, timeout=5,
    )
    assert response.is_redirect
    assert response.headers["Location"] == "https://www.example.com/some/page"


def test_acme_challenges_reach_the_backend(lab, backend):
    response = requests.get(
        f"http://127.0.0.1:{lab.http_port}/.well-known/acme-challenge/x",
        headers={"Host": "www.example.com"}, allow_redirects=False, timeout=5,
    )
    assert (response.status_code, response.text) == (200, "hello")
    assert backend == ["/.well-known/acme-challenge/x"]


def test_pebble_directory_answers_only_with_the_ca_bundle(lab):
    directory = requests.get(lab.directory_url, verify=lab.ca_bundle, timeout=5).json()
    assert {"newAccount", "newNonce", "newOrder"} <= directory.keys()
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(lab.directory_url, timeout=5)


def test_haproxy_reloads_and_keeps_serving(lab):
    before = lab.served_certificate_unverified("www.example.com")
    lab.reload_haproxy()
    assert lab.served_certificate_unverified("www.example.com").serial_number == before.serial_number


def test_restarted_pebble_is_a_new_ca_at_the_same_address(lab):
    first_root = lab.issuer_root()
    lab.stop_pebble()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(lab.directory_url, verify=lab.ca_bundle, timeout=5)
    lab.start_pebble()
    assert lab.issuer_root() != first_root

