"""The lab itself: the shipped HAProxy config holds up, and pebble and HAProxy answer as tests expect."""

import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from cryptography.x509 import DNSName, SubjectAlternativeName

from certrenew.pki.placeholder import PLACEHOLDER_NAME, write_placeholder
from tests.harness import lab as lab_module
from tests.harness.lab import (
    PORT_ATTEMPTS,
    SHIPPED_HAPROXY_CFG,
    Lab,
    LabError,
    PortTaken,
    check_haproxy_config,
    production_replacements,
    render_haproxy_config,
)


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


@pytest.mark.haproxy
def test_shipped_config_passes_haproxy_check_with_a_placeholder(tmp_path):
    cfg, ssl_dir = shipped_config_in(tmp_path)
    write_placeholder(ssl_dir)
    check_haproxy_config(cfg)


@pytest.mark.haproxy
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
        lab.served_certificate("www.example.com", timeout=0)


def test_http_redirects_to_https_outside_acme_challenges(lab):
    response = requests.get(
        f"http://127.0.0.1:{lab.http_port}/some/page",
        headers={"Host": "www.example.com"}, allow_redirects=False, timeout=5,
    )
    assert response.status_code == 301  # permanent, so clients and search engines remember it
    assert response.headers["Location"] == "https://www.example.com/some/page"


def tls_client(*, alpn=None, ciphers=None):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    if ciphers:
        context.maximum_version = ssl.TLSVersion.TLSv1_2  # TLS 1.3 suites are not set by set_ciphers
        context.set_ciphers(ciphers)
    return context


def handshake(lab, context):
    with socket.create_connection(("127.0.0.1", lab.https_port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="www.example.com") as tls:
            return tls.selected_alpn_protocol(), tls.cipher()[0]


def test_https_offers_http2(lab):
    assert handshake(lab, tls_client(alpn=["h2", "http/1.1"]))[0] == "h2"
    assert handshake(lab, tls_client(alpn=["http/1.1"]))[0] == "http/1.1"


def test_https_takes_only_the_intermediate_cipher_list(lab):
    """Mozilla's intermediate list is in force: an AEAD suite is accepted, a CBC one HAProxy would
    take by default is refused."""
    assert handshake(lab, tls_client(ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))[1] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    with pytest.raises(ssl.SSLError):
        handshake(lab, tls_client(ciphers="ECDHE-ECDSA-AES128-SHA"))


def test_shipped_config_binds_ipv4_and_ipv6():
    binds = [line.split()[1:3] for line in SHIPPED_HAPROXY_CFG.read_text().splitlines()
             if line.strip().startswith("bind ")]
    assert binds == [[":::80", "v4v6"], [":::443", "v4v6"]]


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



@pytest.fixture
def taken_port():
    """A loopback port some other process holds, as one may between free_ports and a lab process's bind."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.haproxy
def test_a_port_taken_before_pebble_binds_it_starts_the_lab_over_on_fresh_ports(tmp_path, monkeypatch, taken_port):
    real, calls = lab_module.free_ports, []

    def first_hands_out_a_taken_acme_port(count):
        ports = real(count)
        calls.append(count)
        return ports[:1] + [taken_port] + ports[2:] if len(calls) == 1 else ports

    monkeypatch.setattr(lab_module, "free_ports", first_hands_out_a_taken_acme_port)
    with Lab(tmp_path / "lab") as running:
        assert running.acme_port != taken_port and running._directory_answers()
        assert "address already in use" in (tmp_path / "lab" / "pebble.log").read_text().lower()
        assert running.master_cli("show proc").count("master") >= 1  # the master CLI answers once started
    assert calls == [8, 8]


def test_a_port_taken_every_time_gives_up_after_a_few_attempts(tmp_path, monkeypatch, taken_port):
    real = lab_module.free_ports
    monkeypatch.setattr(lab_module, "free_ports", lambda count: real(count)[:1] + [taken_port] + real(count)[2:])
    with pytest.raises(PortTaken, match="pebble: process exited"):
        Lab(tmp_path / "lab").start()
    log = (tmp_path / "lab" / "pebble.log").read_text().lower()
    assert log.count("address already in use") == PORT_ATTEMPTS
