"""ACME Renewal Information (RFC 9773) and profiles against pebble, which has neither.

An endpoint in the test process stands in front of pebble's directory: it serves
pebble's directory with a `renewalInfo` URL (and, if asked, `profiles`) added, and
answers renewal-information requests with whatever window, Retry-After or failure a
test sets. Everything else (orders, challenges, finalization) goes to the real pebble.
"""

import datetime
import json
import time

from cryptography import x509

from certrenew.acme_ari import ari_cert_id
from certrenew.bundle import leaf_info

NAME = "ari.example"
UTC = datetime.timezone.utc


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


def test_emergency_window_in_the_past_renews_at_once_naming_the_replaced_certificate(lab, ari):
    ari.retry_after = 1
    assert certrenew(lab, ari).returncode == 0
    old = current_cert(lab)
    unchanged = certrenew(lab, ari)
    assert "unchanged" in unchanged.stdout

    ari.window = (-datetime.timedelta(days=2), -datetime.timedelta(days=1))  # the CA moved it earlier
    time.sleep(1.2)
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
