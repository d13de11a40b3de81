"""The shipped set-up: HAProxy, chrooted, reaches the responder on a unix socket in a directory only
certrenew's user can write (tests/unit/system/test_listen.py: another local user cannot take it)."""

import tempfile
from pathlib import Path

import pytest

from tests.harness.lab import Lab

NAME = "site.example"


@pytest.fixture
def lab():
    """Under a short path: HAProxy takes a unix@ path of at most 97 bytes, a whole one here too."""
    with tempfile.TemporaryDirectory(prefix="certrenew-") as workdir, Lab(Path(workdir), unix_socket=True) as running:
        yield running


def test_check_is_all_ok_and_a_certificate_is_issued_through_the_socket(lab, tmp_path):
    config = tmp_path / "certrenew.toml"
    config.write_text(f'[[certificate]]\ndomains = ["{NAME}"]\n')
    check = lab.certrenew("check", "--config", str(config), "--haproxy-config", str(lab.haproxy_cfg))
    assert check.returncode == 0 and all(line.startswith("ok ") for line in check.stdout.splitlines()), check.stdout
    assert f"ok   responder address {lab.listen}: " in check.stdout
    assert f"ok   http://{NAME}/" in check.stdout  # the probe went through HAProxy to the socket

    run = lab.certrenew("run", "--config", str(config))
    assert run.returncode == 0 and f"{NAME}: issued" in run.stdout + run.stderr, run.stdout + run.stderr
    lab.served_certificate(NAME)
    socket_dir = lab.chroot / "certrenew"
    assert list(socket_dir.iterdir()) == []  # the run's socket is gone with it
    assert socket_dir.stat().st_mode & 0o777 == 0o750  # as certrenew made it: HAProxy (root here) enters

    socket_dir.chmod(0o711)  # any local user may enter, and so flood the socket with connections
    check = lab.certrenew("check", "--config", str(config), "--haproxy-config", str(lab.haproxy_cfg))
    assert check.returncode == 0 and (f"warn responder address {lab.listen}: any local user may enter {socket_dir} "
                                      "and flood") in check.stdout, check.stdout
    assert f"-m 0750 {socket_dir})" in check.stdout


def test_a_server_path_outside_haproxys_chroot_fails_check_naming_the_chroot(lab, tmp_path):
    """The likely mistake: the socket's path as certrenew sees it, which HAProxy, chrooted, cannot reach."""
    config = tmp_path / "certrenew.toml"
    config.write_text(f'[[certificate]]\ndomains = ["{NAME}"]\n')
    lab.reconfigure_haproxy("server letsencrypt unix@/certrenew/http-01.sock\n", f"server letsencrypt unix@{lab.listen}\n")
    check = lab.certrenew("check", "--config", str(config))
    [failed] = [line for line in check.stdout.splitlines() if line.startswith("FAIL")]
    assert check.returncode == 1 and failed.startswith(f"FAIL http://{NAME}/"), check.stdout
    assert "answered 503 Service Unavailable from HAProxy" in failed and "inside HAProxy's chroot" in failed, failed
