"""TLS-ALPN-01 through HAProxy (RFC 8737): pebble validates on the port-443 TCP frontend of the shipped
haproxy/tls-alpn-01.cfg, which sends acme-tls/1 to certrenew's socket and everything else on to the
https frontend, whose certificate the same port then serves to an ordinary TLS client."""

import tempfile
from pathlib import Path

import pytest
from cryptography import x509

from certrenew.challenge.tlsalpn01 import fetch_certificate
from certrenew.system.hints import TLS_ROUTE
from tests.harness.faultproxy import FaultProxy
from tests.harness.lab import LOOPBACK, Lab

NAME = "site.example"
ROUTE = "    use_backend certrenew_tls_alpn if { req.ssl_alpn acme-tls/1 }\n"


@pytest.fixture
def lab():
    """The responder's socket in HAProxy's chroot, as shipped; under a short path for HAProxy's unix@."""
    with tempfile.TemporaryDirectory(prefix="certrenew-") as workdir, \
            Lab(Path(workdir), unix_socket=True, tls_alpn=True) as running:
        yield running


@pytest.fixture
def proxy(lab):
    with FaultProxy(lab) as running:
        yield running


def tls_alpn_config(lab, tmp_path: Path) -> list[str]:
    config = tmp_path / "certrenew.toml"
    config.write_text(f'[[certificate]]\ndomains = ["{NAME}"]\nchallenge = "tls-alpn-01"\n')
    return ["run", "--config", str(config)]


def acme_connections(lab) -> int:
    """Connections HAProxy's port-443 frontend handed to certrenew's TLS-ALPN-01 responder."""
    return (lab.workdir / "haproxy.log").read_text().count("certrenew_tls_alpn/certrenew")


def test_a_certificate_is_issued_over_tls_alpn_01_and_served_on_the_same_port(lab, tmp_path, proxy):
    run = lab.certrenew(*tls_alpn_config(lab, tmp_path), env=proxy.env)
    assert run.returncode == 0 and f"{NAME}: issued" in run.stdout + run.stderr, run.stdout + run.stderr
    assert proxy.count("new-order") >= 1
    # The probe and pebble's validation both went through the TCP frontend to the socket...
    assert acme_connections(lab) >= 2, (lab.workdir / "haproxy.log").read_text()[-3000:]
    # ...and an ordinary TLS client on the same port gets the https frontend's certificate through the
    # internal listener: the one pebble issued (served_certificate verifies it to pebble's root and the name).
    lab.served_certificate(NAME)
    assert list((lab.chroot / "certrenew").iterdir()) == []  # the responder's socket is gone with the run
    # Nothing left answers acme-tls/1 for the name: HAProxy finds no responder behind the route.
    with pytest.raises(OSError):
        fetch_certificate(LOOPBACK, lab.https_port, NAME, 5)


def test_a_wrong_route_fails_the_probe_before_any_order(lab, tmp_path, proxy):
    lab.reconfigure_haproxy(ROUTE, "")  # acme-tls/1 goes to the https frontend like everything else
    run = lab.certrenew(*tls_alpn_config(lab, tmp_path), env=proxy.env)
    assert run.returncode == 1, run.stdout + run.stderr
    [failed] = [line for line in run.stderr.splitlines() if line.startswith(f"certrenew: {NAME}: failed:")]
    assert "did not choose ALPN acme-tls/1" in failed and "certrenew_tls_alpn backend" in failed, failed
    assert proxy.count("directory") >= 1  # certrenew talked to the CA through the proxy...
    assert proxy.count("new-order") == 0  # ...and never ordered
    assert acme_connections(lab) == 0


def test_without_the_probe_the_cas_failure_names_the_alpn_route(lab, tmp_path):
    lab.reconfigure_haproxy(ROUTE, "")
    run = lab.certrenew(*tls_alpn_config(lab, tmp_path), "--no-self-check")
    assert run.returncode == 1, run.stdout + run.stderr
    [failed] = [line for line in run.stderr.splitlines() if line.startswith(f"certrenew: {NAME}: failed:")]
    assert 'validation failed: Cannot negotiate ALPN protocol "acme-tls/1"' in failed, failed
    assert failed.endswith(f"; {TLS_ROUTE}") and "letsencrypt-request" not in failed, failed


def test_check_probes_a_tls_alpn_01_certificate_through_haproxy(lab, tmp_path):
    run_args = tls_alpn_config(lab, tmp_path)
    check = lab.certrenew("check", *run_args[1:])
    assert f"ok   tls-alpn-01 {NAME}: reached certrenew's TLS-ALPN-01 responder through " in check.stdout, check.stdout
    lab.reconfigure_haproxy(ROUTE, "")
    check = lab.certrenew("check", *run_args[1:])
    assert check.returncode == 1 and f"FAIL tls-alpn-01 {NAME}: " in check.stdout, check.stdout


def test_a_dual_certificate_and_an_http_01_one_are_issued_in_one_run(lab, tmp_path):
    """Two orders for the same names at once: each name is answered for one of them at a time. Each
    challenge is probed on its own port, and the HTTP-01 certificate goes on through port 80."""
    config = tmp_path / "certrenew.toml"
    config.write_text(f'[[certificate]]\ndomains = ["{NAME}", "www.{NAME}"]\nkey_type = "ecdsa-p256,rsa2048"\n'
                      'challenge = "tls-alpn-01"\n[[certificate]]\ndomains = ["web.example"]\n')
    run = lab.certrenew("run", "--config", str(config))
    assert run.returncode == 0 and "3 certificates: 3 issued" in run.stderr, run.stdout + run.stderr
    assert "reached certrenew's responder" in run.stderr and "warn" not in run.stderr.lower(), run.stderr


def test_an_ip_address_certificate_is_issued_over_tls_alpn_01(lab, tmp_path):
    """RFC 8738 section 6: pebble asks for the address under its reverse-DNS name; the bundle holds an IP SAN."""
    config = tmp_path / "certrenew.toml"
    config.write_text(f'[[certificate]]\ndomains = ["{LOOPBACK}"]\nchallenge = "tls-alpn-01"\n')
    run = lab.certrenew("run", "--config", str(config))
    assert run.returncode == 0 and f"ip-{LOOPBACK}: issued" in run.stdout, run.stdout + run.stderr
    assert f"tls-alpn-01 {LOOPBACK}: reached certrenew's TLS-ALPN-01 responder" in run.stderr
    bundle = x509.load_pem_x509_certificate((lab.ssl_dir / f"ip-{LOOPBACK}.pem").read_bytes())
    assert [str(address) for address in bundle.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            .value.get_values_for_type(x509.IPAddress)] == [LOOPBACK]
