"""ACME Renewal Information (RFC 9773) and profiles against pebble, which has neither.

An endpoint in the test process stands in front of pebble's directory: it serves
pebble's directory with a `renewalInfo` URL (and, if asked, `profiles`) added, and
answers renewal-information requests with whatever window, Retry-After or failure a
test sets. Everything else (orders, challenges, finalization) goes to the real pebble.
"""

import datetime
import json
import time
from contextlib import contextmanager

from cryptography import x509

from certrenew.acme.ari import ari_cert_id
from certrenew.pki.bundle import leaf_info
from tests.harness.lab import terminate

NAME = "ari.example"
UTC = datetime.timezone.utc
DAY = datetime.timedelta(days=1)
WAIT = 60.0
"""Seconds any one awaited event may take on a loaded machine (an issuance takes about one)."""


def certrenew(lab, ari, *args):
    return lab.certrenew(NAME, *args, env={"CERTRENEW_DIRECTORY": f"{ari.url}/dir"})


def record(lab):
    data = json.loads((lab.state_dir / "certificates" / NAME / "meta.json").read_text())
    return {key: datetime.datetime.fromisoformat(value) if key.startswith("ari_") and value else value
            for key, value in data.items()}


def current_cert(lab):
    return x509.load_pem_x509_certificate((lab.ssl_dir / f"{NAME}.pem").read_bytes())


def test_window_is_stored_and_not_asked_again_before_retry_after(lab, ari):
    first = certrenew(lab, ari)
    assert first.returncode == 0, first.stderr
    assert ari.requests == [ari_cert_id(current_cert(lab))]
    stored = record(lab)
    now = datetime.datetime.now(UTC)
    assert now + datetime.timedelta(days=29) < stored["ari_renew_at"] < now + datetime.timedelta(days=31, hours=1)
    assert stored["ari_window_start"] <= stored["ari_renew_at"] <= stored["ari_window_end"]
    assert datetime.timedelta(minutes=55) < stored["ari_next_check"] - now <= datetime.timedelta(hours=1)

    second = certrenew(lab, ari)
    assert second.returncode == 0 and "unchanged" in second.stdout
    assert len(ari.requests) == 1  # Retry-After (an hour) has not passed: no network at all


@contextmanager
def daemon(lab, ari):
    """A `certrenew daemon` of NAME through the ARI endpoint; yields a function that reads its log."""
    config = lab.workdir / "certrenew.toml"
    config.write_text(f'[[certificate]]\nname = "{NAME}"\ndomains = ["{NAME}"]\n')
    log_path = lab.workdir / "daemon.log"
    with log_path.open("w") as log:
        process = lab.start_certrenew("daemon", "--config", str(config), "--check-interval", "1h",
                                      "--haproxy-socket", str(lab.admin_socket), stdout=log, stderr=log,
                                      env={"CERTRENEW_DIRECTORY": f"{ari.url}/dir"})
    try:
        yield log_path.read_text
    finally:
        terminate(process)


def wait_for(what, ready):
    deadline = time.monotonic() + WAIT
    while not ready():
        assert time.monotonic() < deadline, f"{what}: not within {WAIT:.0f} s"
        time.sleep(0.1)


def issued(ari):
    """The certificates issued so far: each one's window is asked for right after its download."""
    return len(set(ari.requests))


def test_a_daemon_does_not_renew_a_new_certificate_on_a_window_that_is_already_over(lab, ari):
    ari.window = (-2 * DAY, -DAY)  # whatever certificate it is asked about: a CA that is wrong, or a clock
    with daemon(lab, ari) as log:
        wait_for("the first pass", lambda: "pass done" in log())
        assert issued(ari) == 1
        time.sleep(20)  # four passes 5 s apart, each renewing again, without the fix
        assert issued(ari) == 1, log()
        assert log().count(": issuing") == 1 and ": renewing (" not in log() and "next pass at" in log()
    assert ari.requests == [ari_cert_id(current_cert(lab))]  # the window was asked for the new certificate
    assert record(lab)["ari_window_end"] < datetime.datetime.now(UTC) - DAY + datetime.timedelta(minutes=1)


def test_a_certificate_is_issued_at_most_three_times_a_day_whatever_the_ca_says(lab, ari):
    # A window open when each new certificate is issued: it asks for renewal at once, every time.
    ari.window = (-DAY, datetime.timedelta(seconds=30))
    with daemon(lab, ari) as log:
        wait_for("the budget spent", lambda: "not ordered: the CA issued 3 certificates" in log())
        assert issued(ari) == 3
        time.sleep(10)  # two passes, had it gone back to the 5 s pause of a certificate still due
        assert issued(ari) == 3 and log().count("not ordered") == 1, log()
        status = lab.certrenew("status", "--config", str(lab.workdir / "certrenew.toml"), "--json")
    [row] = json.loads(status.stdout)["certificates"]
    assert row["state"] == "failing" and "its budget" in row["last_result"], row
    next_order = datetime.datetime.fromisoformat(row["next_renewal"])
    assert DAY - datetime.timedelta(minutes=5) < next_order - datetime.datetime.now(UTC) <= DAY

    env = {"CERTRENEW_DIRECTORY": f"{ari.url}/dir"}
    held = lab.certrenew("run", "--config", str(lab.workdir / "certrenew.toml"), env=env)  # the record holds it
    assert held.returncode == 1 and "its budget" in held.stderr and issued(ari) == 3, held.stderr
    forced = lab.certrenew("run", "--config", str(lab.workdir / "certrenew.toml"), "--force", env=env)
    assert forced.returncode == 0 and issued(ari) == 4, forced.stderr
    assert "its budget; ordering anyway (--force)" in forced.stderr


def test_emergency_window_in_the_past_renews_at_once_naming_the_replaced_certificate(lab, ari):
    ari.retry_after = 1
    assert certrenew(lab, ari).returncode == 0
    old = current_cert(lab)
    unchanged = certrenew(lab, ari)
    assert "unchanged" in unchanged.stdout

    # The CA moved it earlier: over already, but after the certificate was issued (a window over before
    # then is not about it, see the daemon test above).
    ari.window = (-DAY, -datetime.timedelta(seconds=1))
    time.sleep(2)
    renewed = certrenew(lab, ari, "-v")
    assert renewed.returncode == 0, renewed.stderr
    assert "renewed" in renewed.stdout and "ARI" in renewed.stderr
    assert f'"replaces": "{ari_cert_id(old)}"' in renewed.stderr  # the newOrder payload, as logged with -v
    new_serial = leaf_info((lab.ssl_dir / f"{NAME}.pem").read_bytes()).serial
    assert int(new_serial, 16) != old.serial_number
    lab.wait_served_serial(NAME, new_serial)


def test_a_failing_ari_endpoint_falls_back_to_the_lifetime_rule(lab, ari):
    ari.fail = True
    first = certrenew(lab, ari)
    assert first.returncode == 0, first.stderr
    assert "no renewal information" in first.stderr
    stored = record(lab)
    assert stored["ari_renew_at"] is None
    assert stored["ari_next_check"] > datetime.datetime.now(UTC) + datetime.timedelta(hours=5)
    second = certrenew(lab, ari)
    assert second.returncode == 0 and "unchanged" in second.stdout


def test_without_ari_the_lifetime_rule_alone_decides(lab):
    assert lab.certrenew(NAME).returncode == 0
    stored = record(lab)
    assert stored["ari_next_check"] is None and stored["ari_renew_at"] is None


def test_a_profile_the_ca_lists_is_sent_in_the_order(lab, ari):
    ari.profiles = {"classic": "the usual", "shortlived": "six days"}
    result = certrenew(lab, ari, "--profile", "shortlived", "-v")
    assert result.returncode == 0, result.stderr
    assert '"profile": "shortlived"' in result.stderr  # the newOrder payload, as logged with -v


def test_a_profile_the_ca_does_not_list_fails_that_certificate_clearly(lab, ari):
    ari.profiles = {"classic": "the usual"}
    unknown = certrenew(lab, ari, "--profile", "shortlived")
    assert unknown.returncode == 1
    assert "does not offer the profile 'shortlived' (it offers: classic)" in unknown.stderr
    plain_pebble = lab.certrenew(NAME, "--profile", "shortlived", "--force")  # --force: past the back-off
    assert plain_pebble.returncode == 1 and "its directory lists no profiles" in plain_pebble.stderr
    assert not (lab.ssl_dir / f"{NAME}.pem").exists()
