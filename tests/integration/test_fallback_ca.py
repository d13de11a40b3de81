"""A fallback CA (--fallback-directory): two pebbles with roots of their own, the first made to fail.

What the second issues is served by HAProxy and recorded as its; the renewal asks the first again.
"""

import base64
import json
import secrets
import signal
import subprocess
from urllib.parse import urlsplit

import pytest
import requests
from cryptography import x509

from certrenew.pki.bundle import leaf_info
from tests.harness.faultproxy import Reply, step
from tests.harness.lab import Lab, free_ports

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


@pytest.mark.parametrize("fault", [Reply.problem(429, "rateLimited", "too many new orders", Retry_After="3600"),
                                   Reply.problem(503, "serverInternal", "down for maintenance", Retry_After="3600")],
                         ids=["rate-limited", "503"])
def test_a_first_ca_refusing_new_orders_falls_through(lab, proxy, fault):
    second = lab.start_second_ca()
    refused = []

    def on_request(method: str, path: str):
        if step(path) == "new-order":
            refused.append(path)
            return fault
        return None

    proxy.on_request = on_request
    issued = lab.certrenew(NAME, env={**proxy.env, "CERTRENEW_FALLBACK_DIRECTORY": second.directory_url})
    assert issued.returncode == 0, issued.stderr
    assert len(refused) == 1  # the first CA really refused the order, and was not asked again
    [line] = [line for line in issued.stderr.splitlines() if "not issued by" in line]
    assert f"not issued by {proxy.directory_url} (the CA refused to" in line, line
    assert json.loads(fault.body)["detail"] in line, line
    served_by(lab, second.intermediate())
    assert recorded_ca(lab) == second.directory_url


def test_an_order_a_killed_run_left_at_the_first_ca_is_ordered_from_the_next_when_the_first_fails(lab, proxy):
    second = lab.start_second_ca()
    env = {**proxy.env, "CERTRENEW_FALLBACK_DIRECTORY": second.directory_url}
    run, killed = [], []

    def kill_at_finalize(method: str, path: str):
        if step(path) == "finalize" and not killed:
            killed.append(path)
            run[0].kill()
            run[0].wait(10)
        return None

    proxy.on_request = kill_at_finalize
    run.append(lab.start_certrenew(NAME, env=env))
    run[0].communicate(timeout=60)
    assert killed and run[0].returncode == -signal.SIGKILL
    order = json.loads((lab.state_dir / "certificates" / NAME / "order.json").read_text())
    assert order["directory"] == proxy.directory_url  # left at the first CA

    proxy.on_request = lambda method, path: Reply.problem(503, "serverInternal", "down", Retry_After="3600")
    resumed = lab.certrenew(NAME, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"the order a previous run left at {proxy.directory_url} cannot be completed" in resumed.stderr
    assert f"not issued by {proxy.directory_url}" in resumed.stderr  # the first CA is asked first, still
    served_by(lab, second.intermediate())
    assert recorded_ca(lab) == second.directory_url
    assert not (lab.state_dir / "certificates" / NAME / "order.json").exists()


def test_a_failing_probe_is_ours_and_asks_no_other_ca(lab):
    second = lab.start_second_ca()
    [wrong] = free_ports(1)
    lab.reconfigure_haproxy(f"server letsencrypt {lab.listen}\n", f"server letsencrypt 127.0.0.1:{wrong}\n")
    failed = lab.certrenew(NAME, env={"CERTRENEW_FALLBACK_DIRECTORY": second.directory_url})
    assert failed.returncode == 1 and "answered 503 Service Unavailable from HAProxy" in failed.stderr, failed.stderr
    assert "not issued by" not in failed.stderr, failed.stderr
    assert len(list((lab.state_dir / "accounts").iterdir())) == 1  # the second CA never heard of us


def test_check_reads_every_ca_directory(lab):
    [dead_port] = free_ports(1)
    broken = f"https://127.0.0.1:{dead_port}/dir"
    result = lab.certrenew("check", env={"CERTRENEW_FALLBACK_DIRECTORY": broken})
    assert f"ok   ACME directory {lab.directory_url}" in result.stdout, result.stdout
    assert f"FAIL ACME directory {broken}: cannot read it" in result.stdout, result.stdout


@pytest.mark.haproxy
def test_a_first_ca_refusing_an_unbound_account_falls_through_to_one_bound_by_its_own_table(tmp_path):
    """Both CAs bind accounts (EAB); only the fallback's [ca."URL"] table gives a binding."""
    kid, key = "kid-fallback", base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    with Lab(tmp_path / "lab", eab_keys={kid: key}) as lab:
        second = lab.start_second_ca()
        key_file = tmp_path / "second.key"
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        config = tmp_path / "certrenew.toml"
        config.write_text(f'fallback_directory = ["{second.directory_url}"]\n'
                          f'[ca."{second.directory_url}"]\neab_kid = "{kid}"\neab_hmac_key_file = "{key_file}"\n'
                          f'[[certificate]]\ndomains = ["{NAME}"]\n')
        issued = lab.certrenew("run", "--config", str(config))
        assert issued.returncode == 0, issued.stderr
        [line] = [line for line in issued.stderr.splitlines() if "not issued by" in line]
        assert f"not issued by {lab.directory_url} (the CA refused to register the account" in line, line
        assert "pass --eab-kid and --eab-hmac-key-file" in line and key not in issued.stderr, line
        served_by(lab, second.intermediate())
        assert recorded_ca(lab) == second.directory_url


@pytest.mark.pebble_env({"PEBBLE_WFE_NONCEREJECT": "0"})  # no nonce refused at random: the same requests each time
def test_a_healthy_first_ca_costs_no_request_more_and_the_fallback_hears_nothing(lab, proxy):
    second = lab.start_second_ca()
    steps = ("directory", "new-order", "challenge", "finalize", "certificate")  # not the polls, which vary
    alone = lab.certrenew("alone.example", env=proxy.env)
    assert alone.returncode == 0, alone.stderr
    requests_alone, proxy.seen[:] = [step for _, step in proxy.seen if step in steps], []
    with_fallback = lab.certrenew(NAME, env={**proxy.env, "CERTRENEW_FALLBACK_DIRECTORY": second.directory_url})
    assert with_fallback.returncode == 0, with_fallback.stderr
    assert [step for _, step in proxy.seen if step in steps] == requests_alone
    assert len(list((lab.state_dir / "accounts").iterdir())) == 1  # the second CA was never even logged in to
    served_by(lab, lab_intermediate(lab))


def test_a_fallback_with_its_own_ca_bundle_issues_and_revokes_there(lab, tmp_path):
    """The second CA's API has a TLS certificate the top-level --ca-bundle does not trust: only its table's does."""
    second = lab.start_second_ca(own_tls=True)
    assert second.ca_bundle != lab.ca_bundle
    config = tmp_path / "certrenew.toml"
    config.write_text(f'fallback_directory = ["{second.directory_url}"]\n'
                      f'[ca."{second.directory_url}"]\nca_bundle = "{second.ca_bundle}"\n'
                      f'[[certificate]]\ndomains = ["{NAME}"]\n')
    lab.stop_pebble()
    issued = lab.certrenew("run", "--config", str(config))
    assert issued.returncode == 0, issued.stderr
    assert recorded_ca(lab) == second.directory_url
    serial = served_by(lab, second.intermediate()).serial_number

    revoked = lab.certrenew("revoke", NAME, "--yes", "--config", str(config), stdin=subprocess.DEVNULL)
    assert revoked.returncode == 0, revoked.stderr
    assert second.cert_status(format(serial, "x")) == "Revoked"


def test_without_a_fallback_the_first_ca_failing_fails_the_certificate(lab):
    lab.stop_pebble()
    failed = lab.certrenew(NAME)
    assert failed.returncode == 1 and "cannot reach the ACME directory" in failed.stderr, failed.stderr
    assert "not issued by" not in failed.stderr
