"""Installing without a reload: the real CLI updates real HAProxy processes over the Runtime API,
checks what they serve, and undoes everything when something is wrong."""

import socket
import ssl
import sys
import threading
import time

import trustme
from cryptography import x509

from certrenew.haproxy.runtime_api import RuntimeApi, argument, find_crt_list
from certrenew.haproxy.service import worker_pid
from certrenew.haproxy.verify import served_fingerprint
from certrenew.pki.bundle import leaf_info, serial_hex

NAME = "site.example"
FAILING_RELOAD = "sh -c 'echo reload must not run >&2; exit 7'"


def bundle_path(lab, name=NAME):
    return lab.ssl_dir / f"{name}.pem"


def installed_serial(lab, name=NAME) -> str:
    return leaf_info(bundle_path(lab, name).read_bytes()).serial


def served_serial(lab, sni=NAME, port=None) -> str:
    return serial_hex(lab.served_certificate_unverified(sni, port).serial_number)


def hot(lab, *sockets, endpoints=()):
    """Settings for a run that must not reload: the Runtime API of `sockets`, a reload command that fails."""
    return {
        "CERTRENEW_HAPROXY_SOCKET": " ".join(str(socket) for socket in sockets or (lab.admin_socket,)),
        "CERTRENEW_VERIFY_ENDPOINT": " ".join(endpoints or (lab.https_endpoint,)),
        "CERTRENEW_RELOAD_COMMAND": FAILING_RELOAD,
    }


def run(lab, *args, env=None, expect=0):
    result = lab.certrenew(*(args or (NAME,)), env=env)
    assert result.returncode == expect, result.stderr
    assert "Traceback" not in result.stderr
    return result


def issue_by_reload(lab):
    """The starting point: a certificate HAProxy loaded from disk."""
    run(lab)
    serial = installed_serial(lab)
    lab.wait_served_serial(NAME, serial)
    return serial


def test_hot_update_replaces_a_loaded_certificate_without_a_reload(lab):
    old = issue_by_reload(lab)
    result = run(lab, NAME, "--force", env=hot(lab))
    new = installed_serial(lab)
    assert new != old
    assert "served by hot update" in result.stdout and str(lab.admin_socket) in result.stdout
    # Served at once, with its chain: the reload command fails, so only the Runtime API can have done it.
    assert serial_hex(lab.served_certificate(NAME).serial_number) == new
    assert (lab.state_dir / "certificates" / NAME / "current.pem").read_bytes() == bundle_path(lab).read_bytes()
    # The file stays the source of truth: a later reload serves the same certificate.
    lab.reload_haproxy()
    lab.wait_served_serial(NAME, new)


def test_a_brand_new_certificate_is_added_at_runtime(lab):
    result = run(lab, env=hot(lab))
    serial = installed_serial(lab)
    assert "served by hot update" in result.stdout
    assert serial_hex(lab.served_certificate(NAME).serial_number) == serial
    listed = lab_runtime(lab, f"show ssl crt-list -n {lab.ssl_dir}")
    assert f"{lab.ssl_dir}/{NAME}.pem" in listed
    assert served_serial(lab, "other.example") != serial  # SNI picks it only for its own names


def test_configuration_failing_haproxy_check_restores_the_old_bundle_and_does_not_reload(lab):
    old = issue_by_reload(lab)
    old_bundle = bundle_path(lab).read_bytes()
    broken = lab.workdir / "broken.cfg"
    broken.write_text("frontend broken\n    bind 127.0.0.1:1 ssl crt /nonexistent/dir/\n")
    marker = lab.workdir / "reloaded"
    result = run(lab, NAME, "--force", "--haproxy-config", str(lab.haproxy_cfg), "--haproxy-config", str(broken),
                 env={"CERTRENEW_RELOAD_COMMAND": f"touch {marker}"}, expect=1)
    assert "does not pass haproxy -c" in result.stderr and "/nonexistent/dir/" in result.stderr
    assert "previous certificate was put back" in result.stderr
    assert not marker.exists()
    assert bundle_path(lab).read_bytes() == old_bundle
    assert served_serial(lab) == old


def test_served_certificate_mismatch_rolls_back_every_node(lab):
    old = issue_by_reload(lab)
    old_bundle = bundle_path(lab).read_bytes()
    second = lab.start_haproxy_node("second")
    # A node certrenew is not told to update: it keeps serving the old certificate, so the check fails.
    stale = lab.start_haproxy_node("stale")
    env = hot(lab, lab.admin_socket, second.admin_socket,
              endpoints=(lab.https_endpoint, second.https_endpoint, stale.https_endpoint))
    result = run(lab, NAME, "--force", env=env, expect=1)
    assert f"{stale.https_endpoint} serves another certificate for {NAME}" in result.stderr
    assert "previous certificate was put back" in result.stderr
    assert bundle_path(lab).read_bytes() == old_bundle
    assert served_serial(lab) == old
    assert served_serial(lab, port=second.https_port) == old
    assert (lab.state_dir / "certificates" / NAME / "pending.pem").exists()  # kept for the next run

    env["CERTRENEW_HAPROXY_SOCKET"] += f" {stale.admin_socket}"
    recovered = run(lab, env=env)
    assert "installed" in recovered.stdout
    new = installed_serial(lab)
    for port in (lab.https_port, second.https_port, stale.https_port):
        assert served_serial(lab, port=port) == new



SYNCHRONOUS_RELOAD = """
import os, signal, socket, sys, time
master, pid, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + 30
def reloads():  # the master's reload count; its CLI drops while it re-executes
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as cli:
                cli.settimeout(5)
                cli.connect(master)
                cli.sendall(b"show proc\\n")
                cli.shutdown(socket.SHUT_WR)
                answer = b"".join(iter(lambda: cli.recv(65536), b"")).decode()
            return next(int(f[2]) for f in map(str.split, answer.splitlines()) if len(f) > 4 and f[1] == "master")
        except (OSError, StopIteration):
            time.sleep(0.05)
    sys.exit("HAProxy did not reload")
before = reloads()
os.kill(pid, signal.SIGUSR2)
while reloads() <= before:
    time.sleep(0.05)
"""
"""A reload command that returns once HAProxy has re-read its files (as `systemctl reload` of a
Type=notify-reload unit does), where `kill -USR2` returns before: the master loads the certificates."""


def test_a_reload_whose_certificate_is_not_served_everywhere_is_reloaded_back_to_the_old_one(lab):
    """No Runtime API: the new bundle goes in by a reload, a node the run does not reload keeps the old
    certificate, so the check fails (after the reload grace, 30 s). The rollback must reload HAProxy
    once the old bundle is back on disk, or HAProxy goes on serving the certificate that was rolled back."""
    old = issue_by_reload(lab)
    old_bundle = bundle_path(lab).read_bytes()
    stale = lab.start_haproxy_node("stale")
    script = lab.workdir / "synchronous-reload.py"
    script.write_text(SYNCHRONOUS_RELOAD)
    haproxy_pid = lab.reload_command.split()[-1]
    result = run(lab, NAME, "--force", expect=1, env={
        "CERTRENEW_RELOAD_COMMAND": f"{sys.executable} {script} {lab.master_socket} {haproxy_pid}",
        "CERTRENEW_VERIFY_ENDPOINT": f"{lab.https_endpoint} {stale.https_endpoint}"})
    assert f"{stale.https_endpoint} serves another certificate for {NAME}" in result.stderr
    assert "previous certificate was put back" in result.stderr
    assert bundle_path(lab).read_bytes() == old_bundle
    lab.wait_served_serial(NAME, old)

def test_two_haproxy_processes_are_updated_together(lab):
    second = lab.start_haproxy_node("second")
    env = hot(lab, lab.admin_socket, f"unix@{second.admin_socket}",
              endpoints=(lab.https_endpoint, second.https_endpoint))
    result = run(lab, NAME, "www.site.example", env=env)
    assert str(second.admin_socket) in result.stdout
    serial = installed_serial(lab)
    for port in (lab.https_port, second.https_port):
        for sni in (NAME, "www.site.example"):
            assert served_serial(lab, sni, port) == serial


def test_an_unreachable_node_is_named_and_nothing_changes(lab):
    old = issue_by_reload(lab)
    old_bundle = bundle_path(lab).read_bytes()
    missing = lab.workdir / "no-such.sock"
    result = run(lab, NAME, "--force", env=hot(lab, lab.admin_socket, missing), expect=1)
    assert str(missing) in result.stderr and "No such file" in result.stderr
    assert bundle_path(lab).read_bytes() == old_bundle
    assert served_serial(lab) == old


def reloading_other_ssl_dir(lab):
    """Settings where the Runtime API cannot take the certificate (HAProxy loads no crt directory
    `other-ssl`), so the lab's reload command runs, and the socket tells whether it took."""
    other = lab.workdir / "other-ssl"
    other.mkdir()
    return other, {"CERTRENEW_SSL_DIR": str(other), "CERTRENEW_HAPROXY_SOCKET": str(lab.admin_socket)}


def test_a_socket_without_the_crt_directory_falls_back_to_the_reload_command(lab):
    other, env = reloading_other_ssl_dir(lab)
    reloads = lab.settled_reloads()[0]
    result = run(lab, env=env)
    assert "served by reload" in result.stdout and f"loads no crt directory {other}" in result.stdout
    assert "falling back to the reload command" in result.stderr
    assert lab.settled_reloads()[0] > reloads  # the new worker it saw


def test_a_reload_the_runtime_api_shows_did_not_take_fails_and_is_rolled_back(lab):
    other, env = reloading_other_ssl_dir(lab)
    lab.haproxy_cfg.write_text(lab.haproxy_cfg.read_text() + "    no-such-keyword\n")  # HAProxy will refuse it
    worker = worker_pid(RuntimeApi(str(lab.admin_socket)))
    failed = lab.settled_reloads()[1]
    result = run(lab, env=env, expect=1)
    assert "exited 0, but HAProxy" in result.stderr and "still runs the worker it ran before" in result.stderr
    assert "did not take" in result.stderr and "new certificate was removed again" in result.stderr
    assert lab.settled_reloads()[1] > failed  # the fault happened: the master refused the reload (twice: the rollback's)
    assert worker_pid(RuntimeApi(str(lab.admin_socket))) == worker  # and its old worker serves on
    assert list(other.iterdir()) == []


def test_a_dual_certificate_serves_ecdsa_or_rsa_by_client(lab):
    result = run(lab, NAME, "--key-type", "ecdsa-p256,rsa2048", env=hot(lab))
    assert result.stdout.count("served by hot update") == 2
    assert sorted(p.name for p in lab.ssl_dir.iterdir()) == [
        "000-certrenew-placeholder.pem", f"{NAME}.ecdsa-p256.pem", f"{NAME}.rsa2048.pem"]
    ecdsa = leaf_info(bundle_path(lab, f"{NAME}.ecdsa-p256").read_bytes())
    rsa = leaf_info(bundle_path(lab, f"{NAME}.rsa2048").read_bytes())
    assert served_serial(lab) == ecdsa.serial  # a client that takes ECDSA gets it
    assert served_fingerprint(lab.https_endpoint, NAME, rsa_key=True) == rsa.fingerprint  # an RSA-only one, RSA
    # The same after a reload from the files alone.
    lab.reload_haproxy()
    lab.wait_served_serial(NAME, ecdsa.serial)
    assert served_fingerprint(lab.https_endpoint, NAME, rsa_key=True) == rsa.fingerprint


def test_a_config_file_run_hot_updates_its_whole_batch(lab):
    config = lab.workdir / "certrenew.toml"
    config.write_text(f"""
haproxy_socket = ["{lab.admin_socket}"]
verify_endpoint = ["{lab.https_endpoint}"]
[[certificate]]
domains = ["alpha.example"]
[[certificate]]
name = "beta"
domains = ["beta.example"]
key_type = ["ecdsa-p256", "rsa2048"]
""")
    result = run(lab, "run", "--config", str(config), env={"CERTRENEW_RELOAD_COMMAND": FAILING_RELOAD})
    assert result.stdout.count("served by hot update") == 3
    assert served_serial(lab, "alpha.example") == installed_serial(lab, "alpha.example")
    assert served_serial(lab, "beta.example") == installed_serial(lab, "beta.ecdsa-p256")
    assert served_fingerprint(lab.https_endpoint, "beta.example", rsa_key=True) == leaf_info(
        bundle_path(lab, "beta.rsa2048").read_bytes()).fingerprint


def test_no_client_request_fails_during_a_renewal(lab):
    """HTTPS clients keep going through HAProxy while the certificate is replaced under them."""
    old = issue_by_reload(lab)
    results = {"ok": 0, "errors": [], "serials": set()}
    stop = threading.Event()

    def client():
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline and results["ok"] < 5000:
            try:
                serial, answer = https_get(context, lab.https_port, NAME)
                if not answer.startswith(b"HTTP/1.1 200") or not answer.endswith(b"ok"):
                    raise RuntimeError(f"unexpected answer {answer[:60]!r}")
                results["serials"].add(serial)
                results["ok"] += 1
            except Exception as error:  # every failure counts, whatever its kind
                results["errors"].append(repr(error))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    wait_for(lambda: results["ok"] >= 20)
    run(lab, NAME, "--force", env=hot(lab))
    after = results["ok"]
    wait_for(lambda: results["ok"] >= after + 20)
    stop.set()
    thread.join(10)

    assert results["errors"] == []
    assert installed_serial(lab) != old
    assert len(results["serials"]) == 2  # the loop saw the old certificate, then the new one


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def https_get(context: ssl.SSLContext, port: int, sni: str) -> tuple[int, bytes]:
    """One request on a fresh connection (so each one shakes hands anew): the served serial and the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=sni) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
            chunks = []
            while chunk := tls.recv(65536):
                chunks.append(chunk)
            serial = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number
    return serial, b"".join(chunks)


def lab_runtime(lab, command: str) -> str:
    return RuntimeApi(str(lab.admin_socket)).command(command)


def test_a_failed_first_install_does_not_claim_to_put_back_a_previous_certificate(lab):
    result = run(lab, env={"CERTRENEW_RELOAD_COMMAND": FAILING_RELOAD}, expect=1)
    assert "reload must not run" in result.stderr  # the injected fault really happened
    assert "the new certificate was removed again (there was none before)" in result.stderr
    assert "put back" not in result.stderr
    assert not bundle_path(lab).exists()
    assert (lab.state_dir / "certificates" / NAME / "pending.pem").exists()  # kept for the next run


def test_the_runtime_api_takes_a_path_with_a_space_or_a_semicolon_as_one_argument(lab):
    """HAProxy's CLI splits at blanks and runs what follows a `;` as another command."""
    api = RuntimeApi(str(lab.admin_socket))
    crt_list = find_crt_list(api.crt_lists(), str(lab.ssl_dir))
    assert crt_list is not None
    path = f"{lab.ssl_dir}/a b;show info.pem"
    api.add_certificate(crt_list, path, (lab.ssl_dir / "000-certrenew-placeholder.pem").read_bytes())
    assert api.certificates().path_of(path) == path
    assert f"{lab.ssl_dir}/a" not in api.certificates().files  # nothing set under the cut-off name
    assert path in api.command(f"show ssl crt-list {argument(crt_list)}")
    api.remove_certificate(crt_list, path)
    assert api.certificates().path_of(path) is None


def test_a_certificate_haproxy_serves_another_for_fails_alone_in_its_own_words_and_the_batch_is_served(lab):
    legacy = lab.workdir / "legacy.pem"  # outside the ssl dir, where no pre-flight looks: only serving tells
    leaf = trustme.CA().issue_cert("shadow.example")
    legacy.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems) + leaf.private_key_pem.bytes())
    lab.reconfigure_haproxy(f"crt {lab.ssl_dir}/\n", f"crt {legacy} crt {lab.ssl_dir}/\n")
    config = lab.workdir / "certrenew.toml"
    config.write_text('[[certificate]]\nname = "main"\ndomains = ["shadow.example"]\n\n'
                      '[[certificate]]\nname = "other"\ndomains = ["other.example"]\n')
    result = run(lab, "run", "--config", str(config), env=hot(lab), expect=1)
    [line] = [line for line in result.stderr.splitlines() if line.startswith("certrenew: main: failed: ")]
    assert f"served-certificate check: {lab.https_endpoint} serves another certificate for shadow.example" in line
    assert "other.example" not in line and "the new certificate stays pending for the run after" in line
    assert "other: issued" in result.stdout and "served by hot update" in result.stdout
    assert served_serial(lab, "other.example") == installed_serial(lab, "other")
    assert not bundle_path(lab, "main").exists()  # put back: there was none
    assert served_serial(lab, "shadow.example") == leaf_info(legacy.read_bytes()).serial  # the fault: the legacy one
