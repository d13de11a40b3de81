"""DNS-01 end to end: the real certrenew CLI, a real BIND 9 (tests/harness/bind.py) that pebble asks for the
TXT records and the addresses, and the real HAProxy serving what was issued."""

import base64
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from certrenew.pki.bundle import leaf_info
from tests.harness.bind import LAGGING_ZONE, ZONE
from tests.harness.lab import parse_serial

pytestmark = pytest.mark.dns_at_bind

HOOK = Path(__file__).resolve().parents[1] / "harness" / "nsupdate-hook"
RECORD = f"_acme-challenge.{ZONE}"
WILDCARD_NAME = f"_wildcard.{ZONE}"


def rfc2136(bind, key_file=None) -> list[str]:
    return ["--challenge", "dns-01", "--dns-server", bind.address, "--tsig-key", str(key_file or bind.key_file)]


def serial_of(lab, name):
    return leaf_info((lab.ssl_dir / f"{name}.pem").read_bytes()).serial


def one_line(result, code):
    assert result.returncode == code, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


def test_a_wildcard_and_its_base_name_are_issued_served_for_any_label_and_renewed(lab, bind):
    issued = lab.certrenew(*rfc2136(bind), f"*.{ZONE}", ZONE)
    assert issued.returncode == 0, issued.stderr
    assert issued.stdout.startswith(f"{WILDCARD_NAME}: issued: "), issued.stdout
    assert sorted(p.name for p in lab.ssl_dir.glob("*.pem") if "placeholder" not in p.name) == [f"{WILDCARD_NAME}.pem"]
    first = serial_of(lab, WILDCARD_NAME)
    for sni in (f"foo.{ZONE}", f"bar.{ZONE}", ZONE):
        lab.wait_served_serial(sni, first)
    # A wildcard covers one label: a deeper name gets HAProxy's default certificate, not this one.
    assert lab.served_certificate_unverified(f"a.b.{ZONE}").serial_number != parse_serial(first)
    assert bind.txt(RECORD) == set()  # both values withdrawn

    renewed = lab.certrenew(*rfc2136(bind), "--force", f"*.{ZONE}", ZONE)
    assert renewed.returncode == 0, renewed.stderr
    assert f"{WILDCARD_NAME}: renewed" in renewed.stdout
    second = serial_of(lab, WILDCARD_NAME)
    assert second != first
    lab.wait_served_serial(f"baz.{ZONE}", second)
    assert bind.txt(RECORD) == set()

    status = lab.certrenew("status")
    assert status.returncode == 0, status.stderr
    assert re.search(rf"^{re.escape(WILDCARD_NAME)}\s.*ok", status.stdout, re.MULTILINE), status.stdout


def test_revoke_reissue_of_a_wildcard_takes_the_challenge_as_given_and_refuses_http01_before_anything(lab, bind):
    assert lab.certrenew(*rfc2136(bind), f"*.{ZONE}").returncode == 0
    first = serial_of(lab, WILDCARD_NAME)

    refused = lab.certrenew("revoke", WILDCARD_NAME, "--yes", "--reissue", stdin=subprocess.DEVNULL)
    assert "wildcard certificates need the DNS-01 challenge" in one_line(refused, 2)
    assert lab.cert_status(first) == "Valid" and serial_of(lab, WILDCARD_NAME) == first

    reissued = lab.certrenew("revoke", WILDCARD_NAME, "--yes", "--reissue", *rfc2136(bind), stdin=subprocess.DEVNULL)
    assert reissued.returncode == 0, reissued.stderr
    second = serial_of(lab, WILDCARD_NAME)
    assert second != first and lab.cert_status(first) == "Revoked" and lab.cert_status(second) == "Valid"
    lab.wait_served_serial(f"foo.{ZONE}", second)


def test_a_wrong_tsig_secret_fails_before_ordering_with_the_servers_answer(lab, bind, tmp_path):
    wrong = tmp_path / "wrong.key"
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    wrong.write_text(re.sub(r'secret "[^"]*"', f'secret "{secret}"', bind.key_file.read_text()))
    wrong.chmod(0o600)
    result = lab.certrenew(*rfc2136(bind, wrong), "-q", f"*.{ZONE}", ZONE)
    stderr = one_line(result, 1)
    assert (f"DNS server {bind.address} refused an update of zone {ZONE}: it answered NOTAUTH, "
            "TSIG error BADSIG") in stderr, stderr
    assert not (lab.ssl_dir / f"{WILDCARD_NAME}.pem").exists()
    # The key was tried before the order: pebble never got one (it logs every request it handles).
    pebble_log = (lab.workdir / "pebble.log").read_text()
    assert "POST /sign-me-up" in pebble_log and "/order-plz" not in pebble_log, pebble_log[-2000:]


def test_the_hook_path_drives_nsupdate_from_a_config_file(lab, bind):
    config = lab.workdir / "certrenew.toml"
    config.write_text(f"""
[[certificate]]
domains = ["*.hook.{ZONE}", "hook.{ZONE}"]
challenge = "dns-01"
dns_server = "{bind.address}"
dns_hook = "{HOOK} 127.0.0.1 {bind.port} {bind.key_file}"
""")
    result = lab.certrenew("run", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"_wildcard.hook.{ZONE}: issued" in result.stdout
    lab.wait_served_serial(f"www.hook.{ZONE}", serial_of(lab, f"_wildcard.hook.{ZONE}"))
    assert bind.txt(f"_acme-challenge.hook.{ZONE}") == set()


def test_http01_and_dns01_certificates_renew_in_one_run(lab, bind):
    config = lab.workdir / "certrenew.toml"
    config.write_text(f"""
dns_server = "{bind.address}"
tsig_key = "{bind.key_file}"

[[certificate]]
name = "web"
domains = ["www.{ZONE}"]

[[certificate]]
name = "wild"
domains = ["*.mixed.{ZONE}"]
challenge = "dns-01"
""")
    first = lab.certrenew("run", "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert "web: issued" in first.stdout and "wild: issued" in first.stdout
    again = lab.certrenew("run", "--config", str(config), "--force")
    assert again.returncode == 0, again.stderr
    assert "web: renewed" in again.stdout and "wild: renewed" in again.stdout
    lab.wait_served_serial(f"www.{ZONE}", serial_of(lab, "web"))
    lab.wait_served_serial(f"x.mixed.{ZONE}", serial_of(lab, "wild"))
    assert bind.txt(f"_acme-challenge.mixed.{ZONE}") == set()


def test_a_name_server_that_never_answers_fails_the_certificate_and_the_records_are_withdrawn(lab, bind):
    result = lab.certrenew(*rfc2136(bind), "-q", "--dns-propagation-timeout", "1", f"*.{LAGGING_ZONE}")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    # A warning about the NS name that does not resolve, then the failure.
    assert f"_acme-challenge.{LAGGING_ZONE} TXT not visible at 127.0.0.2:53 after 1 s" in result.stderr.splitlines()[-1]
    assert bind.txt(f"_acme-challenge.{LAGGING_ZONE}") == set()
    assert not (lab.ssl_dir / f"_wildcard.{LAGGING_ZONE}.pem").exists()


def test_sigterm_while_waiting_for_the_name_servers_withdraws_the_records(lab, bind):
    """lagging.test names a second name server that never answers: the run waits until it is stopped."""
    record = f"_acme-challenge.{LAGGING_ZONE}"
    process = lab.start_certrenew(*rfc2136(bind), "--dns-propagation-timeout", "60", f"*.{LAGGING_ZONE}")
    try:
        deadline = time.monotonic() + 60
        while not bind.txt(record) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert bind.txt(record), "the record was never published"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    assert "interrupted by SIGTERM" in stderr
    assert bind.txt(record) == set()


RFC2136 = "--challenge dns-01 --dns-server {server} --tsig-key {key}"


@pytest.mark.parametrize("mutate, mode, args, complaint", [
    (lambda key: key.replace("hmac-sha256", "hmac-md5"), 0o600, RFC2136, "unknown algorithm 'hmac-md5'"),
    (lambda key: "not a key file\n", 0o600, RFC2136, "expected one key"),
    (None, 0o640, RFC2136, "is readable by others (mode 0640)"),
    (None, 0o600, RFC2136.replace("{server}", "ns1.example.test:dns"), "invalid --dns-server: invalid DNS server"),
    (None, 0o600, "--challenge dns-01 --dns-server {server}", "DNS-01 needs a DNS server and a TSIG key"),
    (None, 0o600, "--challenge dns-01 --tsig-key {key}", "a TSIG key (--tsig-key) needs the DNS server"),
    (None, 0o600, RFC2136 + " --dns-propagation-timeout nan", "invalid --dns-propagation-timeout: must be"),
])
def test_bad_dns_input_is_refused_before_anything_is_touched(bind, tmp_path, mutate, mode, args, complaint):
    key = tmp_path / "tsig.key"
    key.write_text(mutate(bind.key_file.read_text()) if mutate else bind.key_file.read_text())
    key.chmod(mode)
    state, ssl = tmp_path / "state", tmp_path / "ssl"
    ssl.mkdir()
    environ = {name: value for name, value in os.environ.items() if not name.startswith("CERTRENEW_")}
    result = subprocess.run(
        [sys.executable, "-m", "certrenew", *args.format(server=bind.address, key=key).split(),
         "--state-dir", str(state), "--ssl-dir", str(ssl), f"*.{ZONE}"],
        capture_output=True, text=True, timeout=60, env=environ)
    assert complaint in one_line(result, 2)
    assert not state.exists() and list(ssl.iterdir()) == []
