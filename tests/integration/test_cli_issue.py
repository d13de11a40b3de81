"""The core job end to end: the real certrenew CLI, pebble validating through HAProxy's ACL,
and a TLS client checking what HAProxy actually serves."""

import os
import socket
import stat
import time

import pytest
from cryptography import x509

from certrenew.pki.bundle import leaf_info, pem_blocks, serial_hex

NAME = "site.example"


def bundle_path(lab, name=NAME):
    return lab.ssl_dir / f"{name}.pem"


def issue(lab, *domains, env=None):
    result = lab.certrenew(*(domains or (NAME,)), env=env)
    assert result.returncode == 0, result.stderr
    return result


def served_serial(lab, sni=NAME) -> str:
    return serial_hex(lab.served_certificate(sni).serial_number)


def test_first_issue_is_served_then_a_second_run_does_nothing(lab):
    issue(lab)
    bundle = bundle_path(lab).read_bytes()
    info = leaf_info(bundle)
    lab.wait_served_serial(NAME, info.serial)
    assert served_serial(lab) == info.serial  # verified against pebble's root, SNI checked

    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(bundle_path(lab).stat().st_mode) == 0o600 & ~umask  # it holds the key
    assert stat.S_IMODE(lab.state_dir.stat().st_mode) == 0o700
    for private in lab.state_dir.rglob("*.pem"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600 & ~umask, private
    assert b"\n\n" not in bundle
    kinds = [block.split(b"\n")[0] for block in pem_blocks(bundle)]
    assert kinds[0] == kinds[1] == b"-----BEGIN CERTIFICATE-----" and b"PRIVATE KEY" in kinds[-1]
    assert sorted(p.name for p in lab.ssl_dir.iterdir()) == ["000-certrenew-placeholder.pem", f"{NAME}.pem"]

    with pytest.raises(ConnectionRefusedError):  # the responder is gone: nothing listens on its port
        socket.create_connection(("127.0.0.1", lab.backend_port), timeout=2)

    again = issue(lab)
    assert again.stdout.count("\n") == 1 and "unchanged" in again.stdout
    assert bundle_path(lab).read_bytes() == bundle


def test_force_renews_with_a_new_serial(lab):
    issue(lab)
    first = leaf_info(bundle_path(lab).read_bytes()).serial
    lab.wait_served_serial(NAME, first)
    issue(lab, NAME, "--force")
    second = leaf_info(bundle_path(lab).read_bytes()).serial
    assert second != first
    lab.wait_served_serial(NAME, second)
    assert served_serial(lab) == second


def test_multi_name_certificate_serves_every_name(lab):
    issue(lab, NAME, "www.site.example", "shop.site.example")
    serial = leaf_info(bundle_path(lab).read_bytes()).serial
    for sni in (NAME, "www.site.example", "shop.site.example"):
        lab.wait_served_serial(sni, serial)
        cert = lab.served_certificate(sni)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(names.get_values_for_type(x509.DNSName)) == {NAME, "www.site.example", "shop.site.example"}


def test_second_certificate_reuses_the_account(lab):
    issue(lab)
    account = sorted(lab.state_dir.glob("accounts/*/account.json"))
    before = account[0].read_bytes()
    issue(lab, "other.example")
    assert sorted(lab.state_dir.glob("accounts/*/account.json")) == account
    assert account[0].read_bytes() == before
    lab.wait_served_serial("other.example", leaf_info(bundle_path(lab, "other.example").read_bytes()).serial)


def test_invalid_domain_is_refused_and_nothing_is_written(lab):
    before = sorted(lab.ssl_dir.iterdir())
    for bad in ("bad name.example", "*.site.example", "*.192.0.2.7", "x-.example", "a..example", "x" * 64 + ".example"):
        result = lab.certrenew(NAME, bad)
        assert result.returncode == 2, (bad, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert "invalid domain" in result.stderr
    duplicate = lab.certrenew(NAME, NAME.upper())
    assert duplicate.returncode == 2 and "duplicate" in duplicate.stderr
    assert sorted(lab.ssl_dir.iterdir()) == before
    assert list(lab.state_dir.iterdir()) == []


def test_failing_reload_keeps_the_old_bundle_and_a_later_run_installs_the_new_one(lab):
    issue(lab)
    old_bundle = bundle_path(lab).read_bytes()
    old_serial = leaf_info(old_bundle).serial
    lab.wait_served_serial(NAME, old_serial)

    failed = lab.certrenew(NAME, "--force", env={"CERTRENEW_RELOAD_COMMAND": "sh -c 'echo no haproxy >&2; exit 3'"})
    assert failed.returncode == 1
    assert "reload command" in failed.stderr and "exit status 3" in failed.stderr and "no haproxy" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert bundle_path(lab).read_bytes() == old_bundle
    assert (lab.state_dir / "certificates" / NAME / "current.pem").read_bytes() == old_bundle
    assert served_serial(lab) == old_serial

    recovered = issue(lab)
    assert "installed" in recovered.stdout  # the certificate issued before, not a new order
    new_serial = leaf_info(bundle_path(lab).read_bytes()).serial
    assert new_serial != old_serial
    lab.wait_served_serial(NAME, new_serial)


def test_ca_down_fails_fast_and_keeps_the_old_bundle(lab):
    issue(lab)
    old_bundle = bundle_path(lab).read_bytes()
    lab.stop_pebble()
    started = time.monotonic()
    result = lab.certrenew(NAME, "--force", timeout=60)
    assert result.returncode == 1
    # A refused connection is final: no waiting out --timeout (300 s). It takes a few seconds
    # (interpreter start, retries of a refused connection); 20 s leaves room for a loaded machine.
    assert time.monotonic() - started < 20
    assert "cannot reach the ACME directory" in result.stderr and "Traceback" not in result.stderr
    assert bundle_path(lab).read_bytes() == old_bundle
    assert served_serial(lab) == leaf_info(old_bundle).serial


def test_requests_ca_bundle_is_honoured(lab):
    env = {"CERTRENEW_CA_BUNDLE": None, "REQUESTS_CA_BUNDLE": str(lab.ca_bundle)}
    assert issue(lab, NAME, env=env).returncode == 0
    untrusted = lab.certrenew("other.example", env={"CERTRENEW_CA_BUNDLE": None, "REQUESTS_CA_BUNDLE": None})
    assert untrusted.returncode == 1 and "is not trusted" in untrusted.stderr and "--ca-bundle" in untrusted.stderr
