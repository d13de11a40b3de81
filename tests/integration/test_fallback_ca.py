"""A fallback CA (--fallback-directory): two pebbles with roots of their own, the first made to fail.

What the second issues is served by HAProxy and recorded as its; the renewal asks the first again.
"""

import json
from urllib.parse import urlsplit

import requests
from cryptography import x509
from lab import free_ports

from certrenew.bundle import leaf_info

NAME = "site.example"


def served_by(lab, intermediate: x509.Certificate) -> x509.Certificate:
    """What HAProxy serves for NAME, checked to be the bundle on disk and signed by `intermediate`."""
    serial = leaf_info((lab.ssl_dir / f"{NAME}.pem").read_bytes()).serial
    leaf = lab.wait_served_serial(NAME, serial)
    leaf.verify_directly_issued_by(intermediate)  # raises unless that CA signed it
    return leaf


def lab_intermediate(lab) -> x509.Certificate:
    response = requests.get(f"{lab.management_url}/intermediates/0", verify=lab.ca_bundle, timeout=5)
    response.raise_for_status()
    return x509.load_pem_x509_certificate(response.content)


def recorded_ca(lab) -> str:
    status = lab.certrenew("status", "--json")
    [row] = json.loads(status.stdout)["certificates"]
    meta = json.loads((lab.state_dir / "certificates" / NAME / "meta.json").read_text())
    assert row["ca"] == meta["directory"], (row, meta)
    return row["ca"]


def test_the_second_ca_issues_while_the_first_is_down_and_the_renewal_goes_back_to_the_first(lab):
    second = lab.start_second_ca()
    assert lab_intermediate(lab).subject != second.intermediate().subject  # two CAs, not one twice
    fallback = {"CERTRENEW_FALLBACK_DIRECTORY": second.directory_url}
    lab.stop_pebble()

    issued = lab.certrenew(NAME, env=fallback)
    assert issued.returncode == 0, issued.stderr
    assert f"{NAME}: not issued by {lab.directory_url} (cannot reach the ACME directory" in issued.stderr, \
        issued.stderr
    assert f"trying {second.directory_url}" in issued.stderr
    served_by(lab, second.intermediate())
    assert recorded_ca(lab) == second.directory_url
    assert urlsplit(second.directory_url).netloc in lab.certrenew("status").stdout

    lab.start_pebble()
    kept = lab.certrenew(NAME, env=fallback)  # the fallback's certificate is not "CA changed"
    assert kept.returncode == 0 and "unchanged" in kept.stdout + kept.stderr, kept.stdout + kept.stderr

    renewed = lab.certrenew(NAME, "--force", env=fallback)
    assert renewed.returncode == 0, renewed.stderr
    assert "not issued by" not in renewed.stderr, renewed.stderr
    served_by(lab, lab_intermediate(lab))
    assert recorded_ca(lab) == lab.directory_url


def test_a_validation_failing_at_the_first_ca_while_the_probe_passes_falls_through(lab):
    [dead_port] = free_ports(1)
    first = lab.start_second_ca(http_port=dead_port)  # validates where nothing listens
    env = {"CERTRENEW_DIRECTORY": first.directory_url, "CERTRENEW_FALLBACK_DIRECTORY": lab.directory_url}

    issued = lab.certrenew(NAME, env=env)
    assert issued.returncode == 0, issued.stderr
    [line] = [line for line in issued.stderr.splitlines() if "not issued by" in line]
    assert f"not issued by {first.directory_url} ({NAME}: validation failed" in line, line
    assert f"trying {lab.directory_url}" in line
    served_by(lab, lab_intermediate(lab))
    assert recorded_ca(lab) == lab.directory_url


def test_without_a_fallback_the_first_ca_failing_fails_the_certificate(lab):
    lab.stop_pebble()
    failed = lab.certrenew(NAME)
    assert failed.returncode == 1 and "cannot reach the ACME directory" in failed.stderr, failed.stderr
    assert "not issued by" not in failed.stderr
