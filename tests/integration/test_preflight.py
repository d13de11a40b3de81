"""The pre-flight checks against a real HAProxy and pebble: a path that does not reach the
responder fails without an order (counted through the fault proxy), a working one passes
with the probe seen by HAProxy, and a mistake on our side does not start the back-off."""

import http.server
import os
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from certrenew.pki.placeholder import PLACEHOLDER_FILE
from tests.harness.container import as_image_user, read_image
from tests.harness.faultproxy import FaultProxy
from tests.harness.lab import LOOPBACK, Lab, free_ports, log_tail

NAME = "www.example.com"
ACL = "acl letsencrypt-request path_beg -i /.well-known/acme-challenge/\n"


@pytest.fixture
def proxy(lab):
    with FaultProxy(lab) as running:
        yield running


def _failure_line(result, name=NAME) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"certrenew: {name}: failed:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_misrouted_acl_fails_with_the_hint_and_no_order(lab, proxy):
    lab.reconfigure_haproxy(ACL, ACL.replace("acme-challenge/", "acme-challenges/"))
    result = lab.certrenew(NAME, env=proxy.env)
    assert result.returncode == 1, result.stderr
    line = _failure_line(result)
    assert f"http://{NAME}/.well-known/acme-challenge/" in line
    assert f"answered 301 Moved Permanently redirecting to https://{NAME}/" in line
    assert f"not certrenew's responder on {lab.listen}" in line and "letsencrypt-request ACL" in line
    assert proxy.count("directory") >= 1  # certrenew did talk to the CA through the proxy...
    assert proxy.count("new-order") == 0  # ...and never ordered



def test_a_route_answering_200_with_another_body_fails_with_no_order(lab, proxy):
    """A 200 is not enough (a catch-all page, another site's backend): only the probe's own token proves the route."""
    lab.reconfigure_haproxy("    use_backend letsencrypt_backend if letsencrypt-request\n",
                            "    http-request return status 200 content-type text/plain string ok "
                            "if letsencrypt-request\n")
    result = lab.certrenew(NAME, env=proxy.env)
    assert result.returncode == 1, result.stderr
    line = _failure_line(result)
    assert "answered 200 OK with another body" in line and f"not certrenew's responder on {lab.listen}" in line
    assert proxy.count("directory") >= 1
    assert proxy.count("new-order") == 0

def test_wrong_backend_port_fails_with_the_hint_and_no_order(lab, proxy):
    [wrong] = free_ports(1)
    lab.reconfigure_haproxy(f"server letsencrypt {lab.listen}\n", f"server letsencrypt {LOOPBACK}:{wrong}\n")
    result = lab.certrenew(NAME, env=proxy.env)
    assert result.returncode == 1, result.stderr
    line = _failure_line(result)
    assert "answered 503 Service Unavailable from HAProxy" in line
    assert "the backend's server address" in line
    assert proxy.count("directory") >= 1
    assert proxy.count("new-order") == 0
    # A failed self-check is our side's mistake: no back-off, the next run goes ahead.
    rerun = lab.certrenew(NAME, env=proxy.env)
    assert "deferred" not in rerun.stderr and "failed:" in rerun.stderr


def test_correct_setup_passes_and_haproxy_saw_the_probe(lab):
    result = lab.certrenew(NAME)
    assert result.returncode == 0, result.stderr
    probes = re.findall(rf"http://{re.escape(NAME)}(/\.well-known/acme-challenge/[A-Za-z0-9_-]+): reached "
                        "certrenew's responder", result.stderr)
    assert len(probes) == 1, result.stderr
    deadline = time.monotonic() + 10
    while probes[0] not in (lab.workdir / "haproxy.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert probes[0] in (lab.workdir / "haproxy.log").read_text(), log_tail(lab.workdir / "haproxy.log")
    lab.served_certificate(NAME)


def test_inconclusive_self_check_warns_and_proceeds(lab):
    [closed] = free_ports(1)
    result = lab.certrenew(NAME, env={"CERTRENEW_SELF_CHECK_ADDRESS": f"{LOOPBACK}:{closed}"})
    assert result.returncode == 0, result.stderr
    assert f"{LOOPBACK}:{closed} refused the connection from this host; not checked" in result.stderr
    lab.served_certificate(NAME)


def test_no_self_check_skips_the_probe(lab):
    lab.reconfigure_haproxy(ACL, ACL.replace("acme-challenge/", "acme-challenges/"))
    result = lab.certrenew(NAME, "--no-self-check")
    assert result.returncode == 1
    assert "validation failed" in _failure_line(result)  # the CA was asked, and said no


@pytest.mark.parametrize("self_check", ["--self-check", "--no-self-check"])
def test_a_port_held_by_another_program_fails_before_any_validation(lab, proxy, self_check):
    host, port = lab.listen.rsplit(":", 1)
    # An HTTP server that knows nothing of our state dir (certbot standalone, say) holds the port.
    holder = http.server.ThreadingHTTPServer((host, int(port)), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=holder.serve_forever, daemon=True).start()
    try:
        result = lab.certrenew(NAME, self_check, env=proxy.env)
    finally:
        holder.shutdown()
        holder.server_close()
    assert result.returncode == 1, result.stderr
    line = _failure_line(result)
    assert f"cannot listen on {lab.listen}" in line and "does not answer this state dir's challenges" in line
    assert proxy.count("directory") >= 1 and proxy.count("challenge") == 0  # no validation asked for, none failed
    if self_check == "--self-check":  # the probe finds the port taken before anything is ordered
        assert proxy.count("new-order") == 0
    assert "Traceback" not in result.stderr and not list((lab.state_dir / "challenges").iterdir())


def test_missing_admin_socket_fails_before_any_request_to_the_ca(lab, proxy):
    missing = lab.workdir / "no-such.sock"
    result = lab.certrenew(NAME, "--haproxy-socket", str(missing), env=proxy.env)
    assert result.returncode == 1, result.stderr
    assert f"HAProxy socket {missing}" in result.stderr and "No such file or directory" in result.stderr
    assert proxy.seen == []
    # The same run with the real socket orders through the same proxy: the counting works.
    fixed = lab.certrenew(NAME, "--haproxy-socket", str(lab.admin_socket), env=proxy.env)
    assert fixed.returncode == 0, fixed.stderr
    assert proxy.count("new-order") >= 1  # more when pebble rejects a nonce and the order is signed again


@pytest.mark.haproxy
@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run certrenew as another user")
def test_an_admin_socket_this_user_may_not_open_is_named_with_the_fix_before_any_order(site_for_anyone):
    """certrenew runs as the image's user (10001); HAProxy's admin socket is root's (mode 660, no group
    given): `check` and a run name the socket, the user and the `stats socket` line that lets it in,
    the run asks the CA nothing and changes nothing served; once the socket is the user's group's, both pass."""
    image = read_image()
    with tempfile.TemporaryDirectory() as top:  # not pytest's tmp_path: its parents are closed to other users
        Path(top).chmod(0o755)
        with Lab(Path(top) / "lab") as lab, FaultProxy(lab) as proxy:
            for path in (lab.state_dir, lab.ssl_dir, *lab.ssl_dir.iterdir()):
                os.chown(path, image.uid, image.gid)
            socket = lab.admin_socket
            assert (socket.stat().st_uid, socket.stat().st_gid) == (0, 0)  # the fault: root's, closed to 10001

            def certrenew(*args):
                command, env = as_image_user(image, ["certrenew", *args],
                                             {"/var/lib/certrenew": lab.state_dir, "/etc/haproxy/ssl": lab.ssl_dir},
                                             site_for_anyone)
                env.update({key: value for key, value in lab.certrenew_env.items()
                            if key not in ("CERTRENEW_STATE_DIR", "CERTRENEW_SSL_DIR")},
                           **proxy.env, CERTRENEW_HAPROXY_SOCKET=str(socket))
                result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
                assert "Traceback" not in result.stderr, result.stderr
                return result

            def socket_line(output: str) -> str:
                [line] = [line for line in output.splitlines() if f"HAProxy socket {socket}:" in line]
                return line

            served = lab.served_certificate_unverified(NAME).fingerprint(hashes.SHA256())
            before = {path.name: path.read_bytes() for path in lab.ssl_dir.iterdir()}
            check = certrenew("check")
            line = socket_line(check.stdout)
            assert check.returncode == 1 and line.startswith("FAIL"), check.stdout
            assert "permission denied for user" in line and "the socket is root:" in line, line
            assert f"'stats socket {socket} mode 660 level admin " in line, line

            proxy.seen.clear()  # check read the ACME directory; the run must not ask the CA even that
            run = certrenew(NAME)
            assert run.returncode == 1, run.stderr
            assert socket_line(run.stderr).startswith("certrenew: error: ") and line[5:] in run.stderr, run.stderr
            assert proxy.seen == []  # failed before the CA was asked for anything
            assert {path.name: path.read_bytes() for path in lab.ssl_dir.iterdir()} == before
            assert lab.served_certificate_unverified(NAME).fingerprint(hashes.SHA256()) == served

            os.chown(socket, -1, image.gid)  # what the advised `stats socket` line makes HAProxy do
            again = certrenew("check")
            assert socket_line(again.stdout).startswith("ok"), again.stdout
            fixed = certrenew(NAME)
            assert fixed.returncode == 0 and "served by hot update" in fixed.stdout, fixed.stderr
            lab.served_certificate(NAME)


def test_validation_failure_names_the_fix_and_backs_off_until_the_settings_change(lab):
    lab.break_dns(NAME)  # the CA connects to 127.0.0.9, where nothing listens; our probe goes to HAProxy
    result = lab.certrenew(NAME)
    line = _failure_line(result)
    assert "validation failed" in line
    assert f"nothing accepted a connection on port 80 for {NAME}: check that HAProxy binds :80" in line
    again = lab.certrenew(NAME)
    assert f"certrenew: {NAME}: deferred:" in again.stderr  # the CA failing is backed off...
    changed = lab.certrenew(NAME, "--key-type", "rsa2048")
    assert "deferred" not in changed.stderr and "validation failed" in changed.stderr  # ...unless the settings changed


def test_missing_agree_tos_does_not_start_the_back_off(lab):
    refused = lab.certrenew(NAME, env={"CERTRENEW_AGREE_TOS": None})
    assert refused.returncode == 1
    assert "--agree-tos" in _failure_line(refused)
    agreed = lab.certrenew(NAME, "--agree-tos")
    assert agreed.returncode == 0, agreed.stderr
    assert f"{NAME}: issued:" in agreed.stdout


def test_untrusted_ca_names_ca_bundle_at_once(lab):
    started = time.monotonic()
    result = lab.certrenew(NAME, "-v", env={"CERTRENEW_CA_BUNDLE": None, "REQUESTS_CA_BUNDLE": None,
                                            "CURL_CA_BUNDLE": None})
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    line = _failure_line(result)
    assert "is not trusted (certificate verify failed" in line and "pass --ca-bundle" in line
    assert "retrying" not in result.stderr  # a TLS verification failure is not retried
    assert elapsed < 15, elapsed  # generous under load; the retries alone used to take 4.7 s


def _config(lab, tmp_path):
    config = tmp_path / "certrenew.toml"
    config.write_text(f'[[certificate]]\ndomains = ["{NAME}", "shop.example.com"]\n')
    return config


def test_check_on_a_good_lab_is_all_ok_but_the_responders_tcp_port(lab, tmp_path):
    """The lab's responder is on TCP, which another local user could bind: the one warning.
    (tests/integration/test_unix_listen.py: all ok with the shipped unix socket.)"""
    result = lab.certrenew("check", "--config", str(_config(lab, tmp_path)),
                           "--haproxy-socket", str(lab.admin_socket), "--haproxy-config", str(lab.haproxy_cfg))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    [warning] = [line for line in lines if not line.startswith("ok ")]
    assert warning.startswith(f"warn responder address {lab.listen}: any local user can bind {lab.listen} while "
                              "certrenew is not listening"), result.stdout
    for expected in ("config", "state dir", "ssl dir", f"HAProxy socket {lab.admin_socket}", "reload command",
                     "haproxy -c", "ACME directory", f"http://{NAME}/", "http://shop.example.com/"):
        assert any(line.startswith(f"ok   {expected}") for line in lines), (expected, result.stdout)
    assert sorted(path.name for path in lab.ssl_dir.iterdir()) == [PLACEHOLDER_FILE]  # nothing was ordered


def test_check_with_a_bad_socket_path_fails_on_that_line(lab, tmp_path):
    missing = lab.workdir / "no-such.sock"
    result = lab.certrenew("check", "--config", str(_config(lab, tmp_path)), "--haproxy-socket", str(missing))
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].startswith(f"FAIL HAProxy socket {missing}:"), result.stdout


def test_check_with_an_operator_level_socket_fails_on_that_line(lab, tmp_path):
    operator = lab.workdir / "operator.sock"
    admin_line = f"    stats socket {lab.admin_socket} mode 660 level admin\n"
    lab.reconfigure_haproxy(admin_line, admin_line + f"    stats socket {operator} mode 660 level operator\n")
    result = lab.certrenew("check", "--config", str(_config(lab, tmp_path)), "--haproxy-socket", str(operator))
    assert result.returncode == 1
    assert f"FAIL HAProxy socket {operator}: level operator, not admin" in result.stdout, result.stdout


def test_check_fails_on_a_profile_the_ca_does_not_list_and_a_verify_endpoint_that_takes_no_connection(
        lab, tmp_path):
    [closed] = free_ports(1)
    config = tmp_path / "certrenew.toml"
    config.write_text(f'verify_endpoint = ["{lab.https_endpoint}", "{LOOPBACK}:{closed}"]\n\n'
                      f'[[certificate]]\ndomains = ["{NAME}"]\nprofile = "shortlived"\n')
    result = lab.certrenew("check", "--config", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert failed == [  # pebble 2.4's directory lists no profiles: the order would be refused so
        "FAIL profile 'shortlived': the CA does not offer the profile 'shortlived' (its directory lists no profiles)",
        f"FAIL verify endpoint {LOOPBACK}:{closed}: accepts no TCP connection (Connection refused): every install "
        "would fail its served-certificate check and be rolled back; check --verify-endpoint"], result.stdout
    assert f"ok   verify endpoint {lab.https_endpoint}: accepts TCP connections" in result.stdout
    run = lab.certrenew("run", "--config", str(config))  # what check foretold
    assert run.returncode == 1 and "the CA does not offer the profile 'shortlived'" in run.stderr, run.stderr


def test_check_probes_the_names_given_as_the_single_domain_form_takes_them(lab):
    result = lab.certrenew("check", NAME.upper(), "shop.example.com", "--haproxy-socket", str(lab.admin_socket))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in (NAME, "shop.example.com"):
        assert any(line.startswith(f"ok   http://{name}/") for line in result.stdout.splitlines()), result.stdout
    assert "warn probe" not in result.stdout
    assert sorted(path.name for path in lab.ssl_dir.iterdir()) == [PLACEHOLDER_FILE]  # nothing was ordered
    bare = lab.certrenew("check", "--haproxy-socket", str(lab.admin_socket))  # the lab names no config
    assert "warn probe: no HTTP-01 name to probe, so the path from the CA through HAProxy to the responder is " \
           "not checked: name them (`certrenew check DOMAIN...`) or give --config" in bare.stdout, bare.stdout
