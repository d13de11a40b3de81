"""`certrenew revoke` end to end: pebble revokes (and says so on its management API), HAProxy
keeps serving, serves a new certificate first, or drops the old one, as asked."""

import json
import os
import pty
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from certrenew.pki.bundle import leaf_info, serial_hex
from certrenew.pki.keys import load_key
from certrenew.pki.placeholder import PLACEHOLDER_FILE, PLACEHOLDER_NAME
from certrenew.state.schedule import SCHEDULE, SETTLE_NS
from certrenew.state.store import FileStore
from tests.harness.faultproxy import Reply
from tests.harness.faultproxy import step as step_of
from tests.harness.faults import public_der
from tests.harness.lab import free_ports

NAME = "site.example"
OTHER = "other.example"


def issue(lab, name=NAME, env=None):
    result = lab.certrenew(name, env=env)
    assert result.returncode == 0, result.stderr
    serial = leaf_info((lab.ssl_dir / f"{name}.pem").read_bytes()).serial
    lab.wait_served_serial(name, serial)
    return serial


def revoke(lab, *args, env=None):
    return lab.certrenew("revoke", *args, env=env, stdin=subprocess.DEVNULL)


def public_key(cert) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def served_serial_changes(lab, sni, old_serial, timeout=30.0):
    """The certificate HAProxy serves for `sni` once it no longer serves `old_serial` (a reload is asynchronous)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        served = lab.served_certificate_unverified(sni)
        if serial_hex(served.serial_number) != old_serial:
            return served
        time.sleep(0.1)
    raise AssertionError(f"HAProxy still serves {old_serial} for {sni} after {timeout} s")


def test_revoke_with_yes_revokes_at_the_ca_and_the_certificate_stays_served(lab):
    serial = issue(lab)
    assert lab.cert_status(serial) == "Valid"
    result = revoke(lab, NAME, "--yes", "--reason", "keyCompromise")
    assert result.returncode == 0, result.stderr
    assert lab.cert_status(serial) == "Revoked"
    assert f"serial {serial} revoked (reason keyCompromise)" in result.stdout
    assert "still serves the revoked certificate until the next run replaces it" in result.stdout
    assert serial_hex(lab.served_certificate_unverified(NAME).serial_number) == serial
    assert (lab.state_dir / "certificates" / NAME / "current.pem").exists()

    again = revoke(lab, NAME, "--yes")  # the CA answers alreadyRevoked: the goal holds, exit 0
    assert again.returncode == 0, again.stderr
    assert f"serial {serial} was already revoked" in again.stdout


def test_refusals_change_nothing(lab):
    serial = issue(lab)
    before = sorted(str(path) for path in lab.state_dir.rglob("*"))
    cases = {
        "stdin is not a terminal": (NAME,),
        "no certificate named 'nosuch.example'": ("nosuch.example", "--yes"),
        "choose one of unspecified, keyCompromise, superseded, cessationOfOperation": (NAME, "--yes", "--reason",
                                                                                        "affiliationChanged"),
        "not allowed with argument": (NAME, "--yes", "--reissue", "--delete"),
    }
    for message, args in cases.items():
        result = revoke(lab, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert lab.cert_status(serial) == "Valid"
    assert sorted(str(path) for path in lab.state_dir.rglob("*")) == before


def test_reissue_serves_a_new_key_before_the_old_certificate_is_revoked(lab, tmp_path):
    config = tmp_path / "certrenew.toml"
    config.write_text(f'[[certificate]]\ndomains = ["{NAME}"]\n')
    old_serial = issue(lab)
    old_key = public_key(lab.served_certificate(NAME))

    result = revoke(lab, NAME, "--yes", "--reissue", "--reason", "keyCompromise", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert lab.cert_status(old_serial) == "Revoked"
    new_serial = leaf_info((lab.ssl_dir / f"{NAME}.pem").read_bytes()).serial
    assert new_serial != old_serial and lab.cert_status(new_serial) == "Valid"
    served = lab.wait_served_serial(NAME, new_serial)  # verified against pebble's root
    assert public_key(served) != old_key
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{NAME}: renewed: serial {new_serial}") and f"serial {old_serial} revoked" in lines[1]
    status = lab.certrenew("status", "--config", str(config))
    assert status.returncode == 0 and " ok " in status.stdout, status.stdout

    missing = tmp_path / "other.toml"
    missing.write_text(f'[[certificate]]\ndomains = ["{OTHER}"]\n')
    refused = revoke(lab, NAME, "--yes", "--reissue", "--config", str(missing))
    assert refused.returncode == 2 and "is not in" in refused.stderr
    assert lab.cert_status(new_serial) == "Valid"


LEFT_BEHIND = {
    # what an earlier run left (the fault that left it): read from the state, its key's public part
    "a pending certificate (the reload failed)": ({"CERTRENEW_RELOAD_COMMAND": "false"}, "certificate"),
    "a validated order (the download failed)": ({}, "order"),
}


@pytest.mark.parametrize("case", LEFT_BEHIND)
@pytest.mark.pebble_env({"PEBBLE_WFE_NONCEREJECT": "0"})  # a refused nonce sends new-order again: count exact
def test_reissue_orders_with_a_new_key_not_one_an_earlier_run_left(lab, proxy, tmp_path, case):
    """Their keys sat in the state dir beside the leaked one: --reissue discards them, never serves them."""
    env, kind = LEFT_BEHIND[case]
    config = tmp_path / "certrenew.toml"
    config.write_text(f'[[certificate]]\ndomains = ["{NAME}"]\n')
    old_serial = issue(lab, env=proxy.env)
    old_key = public_key(lab.served_certificate(NAME))
    if kind == "order":
        proxy.on_request = lambda method, path: Reply(500, b"oops") if step_of(path) == "certificate" else None
    failed = lab.certrenew("run", "--config", str(config), "--force", env={**proxy.env, **env})
    assert failed.returncode == 1, failed.stderr
    proxy.on_request = lambda method, path: None
    store = FileStore(lab.state_dir)
    if kind == "order":
        order = store.load_order(NAME)
        assert order is not None, failed.stderr  # the fault happened: a validated order is left
        left_key = public_der(load_key(order.key_pem).public_key())
    else:
        pending = store.load_bundle(NAME, "pending")
        assert pending is not None, failed.stderr  # the fault happened: a pending certificate is left
        left_key = public_der(load_key(pending).public_key())
    orders = proxy.count("new-order")

    result = revoke(lab, NAME, "--yes", "--reissue", "--reason", "keyCompromise", "--config", str(config),
                    env=proxy.env)
    assert result.returncode == 0, result.stderr
    new_serial = leaf_info((lab.ssl_dir / f"{NAME}.pem").read_bytes()).serial
    served = lab.wait_served_serial(NAME, new_serial)
    assert public_key(served) not in (old_key, left_key)
    assert proxy.count("new-order") == orders + 1  # ordered anew
    assert lab.cert_status(old_serial) == "Revoked"
    assert not store.unfinished(NAME)


def test_delete_over_the_runtime_api_removes_it_everywhere_and_keeps_the_state(lab, tmp_path):
    serial, other_serial = issue(lab), issue(lab, OTHER)
    env = {"CERTRENEW_HAPROXY_SOCKET": str(lab.admin_socket), "CERTRENEW_RELOAD_COMMAND": "false"}
    result = revoke(lab, NAME, "--yes", "--delete", env=env)
    assert result.returncode == 0, result.stderr
    assert "hot update" in result.stdout
    assert lab.cert_status(serial) == "Revoked"
    assert serial_hex(lab.served_certificate_unverified(NAME).serial_number) != serial  # at once: no reload
    assert not (lab.ssl_dir / f"{NAME}.pem").exists()
    assert not (lab.state_dir / "certificates" / NAME).exists()
    [backup] = (lab.state_dir / "removed").iterdir()
    assert backup.name.startswith(f"{NAME}-") and leaf_info((backup / "current.pem").read_bytes()).serial == serial
    lab.wait_served_serial(OTHER, other_serial)
    status = lab.certrenew("status", "--json")
    assert NAME not in status.stdout and OTHER in status.stdout
    assert subprocess.run(["haproxy", "-c", "-f", str(lab.haproxy_cfg)], capture_output=True).returncode == 0

    config = tmp_path / "certrenew.toml"
    config.write_text(f'[[certificate]]\ndomains = ["{OTHER}"]\n')
    kept = revoke(lab, OTHER, "--yes", "--delete", "--config", str(config))
    assert kept.returncode == 2 and "still in" in kept.stderr
    assert lab.cert_status(other_serial) == "Valid"


def test_a_delete_whose_runtime_api_and_reload_fail_keeps_the_file_haproxy_serves_and_a_rerun_completes(
        lab, tmp_path):
    serial = issue(lab)
    bundle = (lab.ssl_dir / f"{NAME}.pem").read_bytes()
    broken = {"CERTRENEW_HAPROXY_SOCKET": str(tmp_path / "no-such.sock"), "CERTRENEW_RELOAD_COMMAND": "false"}
    result = revoke(lab, NAME, "--yes", "--delete", env=broken)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "revoked, but not removed (reload command 'false' failed" in result.stderr
    assert "after the Runtime API could not" in result.stderr and "no-such.sock" in result.stderr
    assert f"certrenew revoke {NAME} --delete' again" in result.stderr
    assert lab.cert_status(serial) == "Revoked"
    assert (lab.ssl_dir / f"{NAME}.pem").read_bytes() == bundle  # as HAProxy still serves it
    assert serial_hex(lab.served_certificate_unverified(NAME).serial_number) == serial
    assert not [path for path in lab.ssl_dir.iterdir() if path.name.startswith(".")]  # nothing left aside
    assert (lab.state_dir / "certificates" / NAME / "current.pem").exists()

    again = revoke(lab, NAME, "--yes", "--delete")  # the lab's reload works
    assert again.returncode == 0, again.stderr
    assert f"serial {serial} was already revoked" in again.stdout and "(reload)" in again.stdout
    assert not (lab.ssl_dir / f"{NAME}.pem").exists() and not (lab.state_dir / "certificates" / NAME).exists()
    served_serial_changes(lab, NAME, serial)


def test_deleting_the_last_certificate_by_reload_keeps_haproxy_startable(lab):
    serial = issue(lab)
    (lab.ssl_dir / PLACEHOLDER_FILE).unlink()  # HAProxy still has it in memory; the dir now holds one file
    env = {"CERTRENEW_HAPROXY_CONFIG": str(lab.haproxy_cfg)}
    result = revoke(lab, NAME, "--yes", "--delete", env=env)
    assert result.returncode == 0, result.stderr
    assert "placeholder written" in result.stdout and "(reload)" in result.stdout
    assert lab.cert_status(serial) == "Revoked"
    assert sorted(path.name for path in lab.ssl_dir.iterdir()) == [PLACEHOLDER_FILE]
    served = served_serial_changes(lab, NAME, serial)
    assert PLACEHOLDER_NAME in served.subject.rfc4514_string()
    assert subprocess.run(["haproxy", "-c", "-f", str(lab.haproxy_cfg)], capture_output=True).returncode == 0


def run_on_a_terminal(lab, answer: bytes, *args):
    """Run `certrenew revoke` with a pseudo-terminal as stdin, typing `answer`."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen([sys.executable, "-m", "certrenew", "revoke", *args], stdin=terminal,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, **lab.certrenew_env})
        os.write(controller, answer)
        out, err = process.communicate(timeout=120)
    finally:
        os.close(controller)
        os.close(terminal)
    return process.returncode, out, err


def test_the_prompt_on_a_terminal(lab):
    serial = issue(lab)
    code, _, err = run_on_a_terminal(lab, b"n\n", NAME)
    assert code == 1 and "nothing revoked" in err
    assert f"Revoke {NAME} (serial {serial}, names {NAME}) at {lab.directory_url}? [y/N]" in err
    assert lab.cert_status(serial) == "Valid"

    code, out, err = run_on_a_terminal(lab, b"y\n", NAME)
    assert code == 0, err
    assert lab.cert_status(serial) == "Revoked" and f"serial {serial} revoked" in out


def test_a_failed_reissue_revokes_nothing_and_the_old_certificate_stays_served(lab, proxy):
    serial = issue(lab, env=proxy.env)
    # The CA refuses the new certificate at the last step. (Not a broken validation: pebble now and then
    # reuses the first order's authorization, even with PEBBLE_AUTHZREUSE=0, and then validates nothing.)
    proxy.on_request = lambda method, path: (Reply.problem(403, "unauthorized", "issuance refused for this test")
                                             if step_of(path) == "finalize" else None)
    result = revoke(lab, NAME, "--yes", "--reissue", env=proxy.env)  # no config: its names and key type
    assert result.returncode == 1 and proxy.count("finalize") >= 1, result.stderr
    assert "not revoked, as no new certificate could be served" in result.stderr
    assert "issuance refused for this test" in result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert lab.cert_status(serial) == "Valid"
    assert serial_hex(lab.served_certificate_unverified(NAME).serial_number) == serial


def test_delete_of_a_name_never_issued_moves_its_state_aside_and_status_forgets_it(lab, tmp_path):
    [closed] = free_ports(1)
    mistyped = "wrongacl.example"
    failed = lab.certrenew(mistyped, env={"CERTRENEW_DIRECTORY": f"https://127.0.0.1:{closed}/dir"})
    assert failed.returncode == 1 and not (lab.ssl_dir / f"{mistyped}.pem").exists()
    assert lab.certrenew("status").returncode == 1  # the fault: a record that keeps status red

    config = tmp_path / "certrenew.toml"
    config.write_text(f'[[certificate]]\ndomains = ["{mistyped}"]\n')
    kept = revoke(lab, mistyped, "--yes", "--delete", "--config", str(config))
    assert kept.returncode == 2 and "still in" in kept.stderr
    assert (lab.state_dir / "certificates" / mistyped).is_dir()

    result = revoke(lab, mistyped, "--yes", "--delete")
    assert result.returncode == 0, result.stderr
    [backup] = (lab.state_dir / "removed").iterdir()
    assert result.stdout == f"{mistyped}: never issued, nothing to revoke; its state is moved to {backup}\n"
    assert not (lab.state_dir / "certificates" / mistyped).exists()
    status = lab.certrenew("status", "--json")
    assert mistyped not in status.stdout

    nothing = revoke(lab, mistyped, "--yes", "--delete")  # gone now: refused as any unknown name
    assert nothing.returncode == 2 and "no certificate named" in nothing.stderr


def test_a_revoked_certificate_still_served_is_unhealthy_and_due_at_once(lab):
    serial = issue(lab)
    assert revoke(lab, NAME, "--yes").returncode == 0
    status = lab.certrenew("status", "--json")
    assert status.returncode == 1, status.stdout
    (row,) = [row for row in json.loads(status.stdout)["certificates"] if row["name"] == NAME]
    assert row["state"] == "revoked"
    result = lab.certrenew(NAME)  # a timer's run: not "not due until" its expiry
    assert result.returncode == 0, result.stderr
    assert f"{NAME}: renewing (revoked at" in result.stderr and f"{NAME}: renewed:" in result.stdout
    assert serial_hex(served_serial_changes(lab, NAME, serial).serial_number) != serial
    assert lab.certrenew("status").returncode == 0  # the new certificate is not revoked


def test_a_certificate_revoked_after_a_no_op_run_is_renewed_though_that_run_kept_it_as_not_due(lab):
    """The no-op run's schedule (state/schedule.py) is taken only while the certificate's state is unchanged."""
    serial = issue(lab)
    time.sleep(SETTLE_NS / 1e9)  # as a timer's next run finds it: settled
    noop = lab.certrenew(NAME)
    assert noop.returncode == 0 and f"{NAME}: unchanged: not due until" in noop.stdout, noop.stderr
    assert NAME in json.loads((lab.state_dir / SCHEDULE).read_bytes())["certificates"]  # kept as not due
    assert revoke(lab, NAME, "--yes").returncode == 0
    time.sleep(SETTLE_NS / 1e9)  # the revocation as settled as the schedule's entry
    result = lab.certrenew(NAME)
    assert result.returncode == 0, result.stderr
    assert f"{NAME}: renewing (revoked at" in result.stderr and f"{NAME}: renewed:" in result.stdout
    assert serial_hex(served_serial_changes(lab, NAME, serial).serial_number) != serial


def test_reissue_of_a_certificate_sharing_a_name_with_another_of_the_config(lab, tmp_path):
    """A key compromise is no time to be refused: the config's other certificate, which shares the apex,
    is renewed by certrenew too, so it shadows nothing."""
    config = tmp_path / "certrenew.toml"
    config.write_text(f'[[certificate]]\nname = "main"\ndomains = ["{NAME}", "www.{NAME}"]\n\n'
                      f'[[certificate]]\nname = "api"\ndomains = ["api.{NAME}", "{NAME}"]\n')
    assert lab.certrenew("run", "--config", str(config)).returncode == 0
    old_serial = leaf_info((lab.ssl_dir / "api.pem").read_bytes()).serial
    result = revoke(lab, "api", "--yes", "--reissue", "--reason", "keyCompromise", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert lab.cert_status(old_serial) == "Revoked"
    lab.wait_served_serial(f"api.{NAME}", leaf_info((lab.ssl_dir / "api.pem").read_bytes()).serial)
