"""The TLS-ALPN-01 responder: the challenge certificate for a name in flight, to a handshake offering
acme-tls/1, and nothing to anyone else (the lab test takes it through HAProxy and pebble)."""

import socket
import ssl
import subprocess
import sys
import threading

import pytest
from cryptography import x509

from certrenew.challenge.tlsalpn01 import ACME_TLS_1, TlsAlpnResponder, fetch_certificate, offers_acme_tls, proves
from certrenew.pki.placeholder import write_placeholder
from tests.harness.lab import SHIPPED_HAPROXY_CFG, production_replacements, render_haproxy_config

NAME = "site.example"
TOKEN = "t" * 43
KEY_AUTHORIZATION = f"{TOKEN}.thumbprint"
SNIPPET = SHIPPED_HAPROXY_CFG.parent / "tls-alpn-01.cfg"


@pytest.fixture
def responder(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with TlsAlpnResponder(f"127.0.0.1:{port}") as running:
        running.present(NAME, TOKEN, KEY_AUTHORIZATION)
        yield running, port


def handshake(port: int, sni: str | None, alpn: list[str] | None) -> ssl.SSLSocket:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return context.wrap_socket(raw, server_hostname=sni)


def test_the_name_in_flight_gets_its_challenge_certificate_over_acme_tls_1(responder):
    running, port = responder
    cert = fetch_certificate("127.0.0.1", port, NAME, 5)
    assert cert is not None and proves(cert, NAME, KEY_AUTHORIZATION)
    assert not proves(cert, NAME, KEY_AUTHORIZATION + "x") and not proves(cert, "other.example", KEY_AUTHORIZATION)
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [NAME]
    with handshake(port, NAME.upper(), [ACME_TLS_1]) as tls:  # SNI is case-insensitive
        assert tls.selected_alpn_protocol() == ACME_TLS_1


@pytest.mark.parametrize("sni, alpn", [
    ("other.example", [ACME_TLS_1]),  # no certificate for a name without a token
    (None, [ACME_TLS_1]),  # nor for a handshake naming none
    (NAME, None),  # a client not asking for acme-tls/1 gets nothing, even for the name in flight
    (NAME, ["h2", "http/1.1"]),
])
def test_any_other_handshake_is_refused_before_a_certificate_is_sent(responder, sni, alpn):
    _, port = responder
    with pytest.raises((ssl.SSLError, ConnectionError)) as refused:
        handshake(port, sni, alpn)
    if alpn == [ACME_TLS_1]:  # told why: no certificate for that name (without acme-tls/1: just closed)
        assert "UNRECOGNIZED_NAME" in str(refused.value)


def test_a_name_is_served_only_until_its_cleanup(responder):
    running, port = responder
    running.cleanup(NAME, "another-token")  # not this one's: kept
    assert fetch_certificate("127.0.0.1", port, NAME, 5) is not None
    running.cleanup(NAME, TOKEN)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        fetch_certificate("127.0.0.1", port, NAME, 5)


def test_a_client_hello_is_read_for_its_alpn_list():
    assert not offers_acme_tls(b"")
    assert not offers_acme_tls(b"GET / HTTP/1.1\r\n\r\n")
    assert not offers_acme_tls(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x03")  # truncated


@pytest.mark.haproxy
def test_the_shipped_snippet_with_haproxy_cfg_passes_haproxy_c(tmp_path):
    """As the snippet's own comment says to load it: after haproxy.cfg, its https frontend on the internal listener.
    (scripts/test runs it against each HAProxy it tests, first on PATH.)"""
    (tmp_path / "ssl").mkdir()
    write_placeholder(tmp_path / "ssl")
    config = tmp_path / "haproxy.cfg"
    config.write_text(render_haproxy_config(SHIPPED_HAPROXY_CFG.read_text(), [
        *production_replacements(tmp_path / "ssl", tmp_path / "admin.sock"),
        ("bind :::443 v4v6 ssl", "bind abns@certrenew-https accept-proxy ssl"),
        ("    chroot /var/lib/haproxy\n", ""), ("    user haproxy\n", ""), ("    group haproxy\n", "")]))
    checked = subprocess.run(["haproxy", "-c", "-V", "-f", str(config), "-f", str(SNIPPET)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Configuration file is valid" in checked.stdout + checked.stderr
    assert "bind abns@certrenew-https accept-proxy ssl alpn h2,http/1.1 crt /etc/haproxy/ssl/" in SNIPPET.read_text()


def test_no_other_module_loads_it_so_the_http_01_path_never_does():
    """It is imported where a TLS-ALPN-01 certificate is ordered or checked, never with a module."""
    package = SHIPPED_HAPROXY_CFG.parents[1] / "certrenew"
    others = sorted(".".join(path.relative_to(package.parent).with_suffix("").parts) for path in package.rglob("*.py")
                    if path.stem not in ("tlsalpn01", "__main__", "__init__"))
    probe = f"import sys\nfor name in {others!r}: __import__(name)\nprint('certrenew.challenge.tlsalpn01' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert loaded.stdout == "False\n", loaded.stderr


def test_another_token_for_the_name_waits_until_the_first_is_cleaned_up(responder):
    """SNI is all the CA sends: a dual certificate's twin order must not replace the certificate in flight."""
    running, port = responder
    other = "u" * 43 + ".thumbprint"
    second = threading.Thread(target=running.present, args=(NAME, "u" * 43, other))
    second.start()
    second.join(0.5)
    assert second.is_alive()
    cert = fetch_certificate("127.0.0.1", port, NAME, 5)
    assert cert is not None and proves(cert, NAME, KEY_AUTHORIZATION)
    running.cleanup(NAME, TOKEN)
    second.join(10)
    assert not second.is_alive()
    cert = fetch_certificate("127.0.0.1", port, NAME, 5)
    assert cert is not None and proves(cert, NAME, other)


@pytest.mark.parametrize("address, sni", [("192.0.2.1", "1.2.0.192.in-addr.arpa"),
                                          ("2001:db8::1", "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa")])
def test_an_ip_address_is_answered_under_its_reverse_dns_name_with_an_ip_san(responder, address, sni):
    """RFC 8738 section 6: SNI carries no address, so the CA sends the reverse-DNS name."""
    running, port = responder
    running.present(address, TOKEN, KEY_AUTHORIZATION)
    cert = fetch_certificate("127.0.0.1", port, address, 5)
    assert cert is not None and proves(cert, address, KEY_AUTHORIZATION)
    assert [str(ip) for ip in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            .get_values_for_type(x509.IPAddress)] == [address]
    with handshake(port, sni, [ACME_TLS_1]) as tls:
        assert tls.selected_alpn_protocol() == ACME_TLS_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        handshake(port, address, [ACME_TLS_1])  # (Python sends no SNI for an address: nothing to answer)
