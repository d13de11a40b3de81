"""`certrenew run --config`: many certificates from one TOML file, against the real lab."""

import json

import pytest

from certrenew.pki.bundle import leaf_info

CONFIG = """
[[certificate]]
name = "alpha"
domains = ["alpha.example", "www.alpha.example"]

[[certificate]]
domains = ["beta.example"]
key_type = "rsa2048"

[[certificate]]
name = "gamma"
domains = ["gamma.example"]
"""


def write_config(lab, text=CONFIG):
    path = lab.workdir / "certrenew.toml"
    path.write_text(text)
    return path


def run(lab, config, *args, env=None):
    return lab.certrenew("run", "--config", str(config), *args, env=env)


def serial_of(lab, name):
    return leaf_info((lab.ssl_dir / f"{name}.pem").read_bytes()).serial


def test_three_certificates_issue_then_nothing_to_do(lab):
    config = write_config(lab)
    first = run(lab, config)
    assert first.returncode == 0, first.stderr
    assert [line.split(":")[:2] for line in first.stdout.splitlines()] == [
        ["alpha", " issued"], ["beta.example", " issued"], ["gamma", " issued"]]
    for name, sni in (("alpha", "www.alpha.example"), ("beta.example", "beta.example"), ("gamma", "gamma.example")):
        lab.wait_served_serial(sni, serial_of(lab, name))
    assert "RSA" in type(lab.served_certificate("beta.example").public_key()).__name__

    bundles = {p.name: p.read_bytes() for p in lab.ssl_dir.iterdir()}
    second = run(lab, config)
    assert second.returncode == 0, second.stderr
    assert [line.split(":")[1] for line in second.stdout.splitlines()] == [" unchanged"] * 3
    assert {p.name: p.read_bytes() for p in lab.ssl_dir.iterdir()} == bundles


def test_changed_names_are_reissued_at_once(lab):
    config = write_config(lab)
    assert run(lab, config).returncode == 0
    before = {name: serial_of(lab, name) for name in ("alpha", "beta.example", "gamma")}
    write_config(lab, CONFIG.replace('domains = ["gamma.example"]', 'domains = ["gamma.example", "new.gamma.example"]'))
    again = run(lab, config)
    assert again.returncode == 0, again.stderr
    assert "gamma: renewed" in again.stdout and again.stdout.count("unchanged") == 2
    assert serial_of(lab, "alpha") == before["alpha"] and serial_of(lab, "beta.example") == before["beta.example"]
    lab.wait_served_serial("new.gamma.example", serial_of(lab, "gamma"))


def test_one_failing_certificate_does_not_stop_the_others(lab):
    lab.break_dns("beta.example")
    config = write_config(lab)
    result = run(lab, config)
    assert result.returncode == 1
    assert "alpha: issued" in result.stdout and "gamma: issued" in result.stdout
    assert "beta.example: failed" in result.stderr and "validation failed" in result.stderr
    assert "1 of 3 certificates failed: beta.example" in result.stderr
    assert not (lab.ssl_dir / "beta.example.pem").exists()
    lab.wait_served_serial("gamma.example", serial_of(lab, "gamma"))

    # The failure is remembered with a back-off: the next run does not hammer the CA.
    again = run(lab, config)
    assert again.returncode == 1
    assert "beta.example: deferred" in again.stderr and "next attempt after" in again.stderr
    record = json.loads((lab.state_dir / "certificates" / "beta.example" / "meta.json").read_text())
    assert record["failures"] == 1 and "validation failed" in record["last_error"]


def test_bad_config_is_refused_with_the_file_and_key(lab):
    for text, says in (
        ("email = 3\n", "email: must be a string"),
        ("colour = 'blue'\n", "unknown key 'colour'"),
        ("[[certificate]]\ndomains = ['a.example']\nkeytype = 'rsa2048'\n", "certificate #1: unknown key 'keytype'"),
        ("[[certificate]]\ndomains = ['*.a.example']\n", "certificate #1: invalid domain"),
        ("[[certificate]]\ndomains = ['a.example']\n[[certificate]]\ndomains = ['a.example']\n", "two certificates"),
        ("[[certificate]\n", "certrenew.toml"),
    ):
        result = run(lab, write_config(lab, text))
        assert result.returncode == 2, (text, result.stderr)
        assert says in result.stderr and "certrenew.toml" in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1
    assert list(lab.state_dir.iterdir()) == []


def status(lab, config):
    result = lab.certrenew("status", "--config", str(config), "--json")
    return result.returncode, json.loads(result.stdout)


def test_status_json_reports_each_certificate_and_health(lab):
    config = write_config(lab)
    code, document = status(lab, config)
    assert code == 1 and document["healthy"] is False
    assert [(row["name"], row["state"]) for row in document["certificates"]] == [
        ("alpha", "missing"), ("beta.example", "missing"), ("gamma", "missing")]

    lab.break_dns("beta.example")
    run(lab, config)
    code, document = status(lab, config)
    rows = {row["name"]: row for row in document["certificates"]}
    assert code == 1 and document["healthy"] is False
    assert rows["alpha"]["state"] == "ok" and int(rows["alpha"]["serial"], 16) == int(serial_of(lab, "alpha"), 16)
    assert len(rows["alpha"]["serial"]) % 2 == 0 and "." not in rows["alpha"]["not_after"]
    assert rows["alpha"]["domains"] == ["alpha.example", "www.alpha.example"]
    assert 1800 < rows["alpha"]["days_left"] < 1830  # pebble issues five-year certificates
    assert rows["alpha"]["not_after"] > rows["alpha"]["next_renewal"]
    assert rows["beta.example"]["state"] == "failing" and rows["beta.example"]["failures"] == 1
    assert rows["beta.example"]["last_result"].startswith("failed: ")

    # Without beta, and with gamma no longer managed: healthy, gamma listed as unmanaged and left alone.
    gamma_bundle = (lab.ssl_dir / "gamma.pem").read_bytes()
    write_config(lab, CONFIG.split("[[certificate]]\ndomains = [\"beta.example\"]")[0])
    assert run(lab, config).returncode == 0
    code, document = status(lab, config)
    assert code == 0 and document["healthy"] is True
    assert [(row["name"], row["state"]) for row in document["certificates"]] == [
        ("alpha", "ok"), ("beta.example", "unmanaged"), ("gamma", "unmanaged")]
    assert (lab.ssl_dir / "gamma.pem").read_bytes() == gamma_bundle

    table = lab.certrenew("status", "--config", str(config))
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:2] == ["NAME", "STATE"]



def test_log_format_json_covers_every_line_of_every_command(lab):
    config = write_config(lab)
    lines = []
    for args in (("run", "--config", str(config)), ("status", "--config", str(config)),
                 ("status", "--config", str(config), "--json"), ("check", "--config", str(config)),
                 ("bootstrap-ssl-dir", "--ssl-dir", str(lab.workdir / "ssl2")), ("bad..name",)):
        result = lab.certrenew(*args, "--log-format", "json")
        lines += [(args[0], line) for stream in (result.stdout, result.stderr) for line in stream.splitlines()]
    documents = []
    for command, line in lines:
        try:
            documents.append((command, json.loads(line)))
        except ValueError:
            raise AssertionError(f"{command}: not a JSON line: {line!r}") from None
    logged = [(command, document) for command, document in documents if "message" in document]  # not status --json
    assert {command for command, _ in logged} == {"run", "status", "check", "bootstrap-ssl-dir", "bad..name"}
    named = {(command, document.get("name")) for command, document in logged}
    for name in ("alpha", "beta.example", "gamma"):
        assert ("run", name) in named and ("status", name) in named, (name, named)
    issued = [document for command, document in logged if command == "run" and ": issued: " in document["message"]]
    assert len(issued) == 3 and all(document["message"].startswith(document["name"]) for document in issued)
    ordering = [document for _, document in logged if ": issuing" in document["message"]]
    assert len(ordering) == 3 and all("name" in document for document in ordering), ordering


SHADOWED = """
[[certificate]]
name = "main"
domains = ["shadow.example", "www.shadow.example"]

[[certificate]]
name = "other"
domains = ["other.example"]
"""


@pytest.mark.pebble_env({"PEBBLE_WFE_NONCEREJECT": "0"})  # a rejected nonce sends a new-order again: count exact
def test_a_bundle_of_a_single_domain_run_shadowing_a_configured_certificate_fails_it_alone_before_ordering(lab, proxy):
    before = lab.certrenew("shadow.example", "www.shadow.example")  # the run before the operator wrote a config
    assert before.returncode == 0, before.stderr
    stray = lab.ssl_dir / "shadow.example.pem"
    config = write_config(lab, SHADOWED)
    orders = proxy.count("new-order")
    result = run(lab, config, env=proxy.env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "other: issued" in result.stdout and proxy.count("new-order") == orders + 1  # none for main
    [line] = [line for line in result.stderr.splitlines() if line.startswith("certrenew: main: failed: ")]
    assert (f"{stray} claims shadow.example, www.shadow.example too, with an ECDSA key: HAProxy loads every bundle "
            "of the ssl dir and may go on serving that one instead of main.pem, and nothing renews it; move it out of "
            "the ssl dir (or name this certificate 'shadow.example' in the config)") in line
    assert "other" not in line  # its own reason alone
    assert not (lab.ssl_dir / "main.pem").exists()
    lab.wait_served_serial("other.example", serial_of(lab, "other"))

    check = lab.certrenew("check", "--config", str(config), env=proxy.env)
    assert check.returncode == 1 and f"FAIL certificate main: {stray} claims shadow.example" in check.stdout
    status = lab.certrenew("status", "--config", str(config), "--json", env=proxy.env)
    rows = {row["name"]: row for row in json.loads(status.stdout)["certificates"]}
    assert status.returncode == 1 and rows["main"]["state"] == "shadowed" and rows["other"]["state"] == "ok"
    assert rows["main"]["last_result"].startswith(f"refused: {stray} claims")

    stray.unlink()  # the fix the line names; the run's reload has HAProxy drop it
    fixed = run(lab, config, env=proxy.env)
    assert fixed.returncode == 0 and "main: issued" in fixed.stdout, fixed.stderr
    lab.wait_served_serial("www.shadow.example", serial_of(lab, "main"))


OVERLAPPING = """
[[certificate]]
name = "main"
domains = ["overlap.example", "www.overlap.example"]

[[certificate]]
name = "api"
domains = ["api.overlap.example", "overlap.example"]
"""


def test_two_configured_certificates_sharing_a_name_are_both_renewed(lab):
    """Two certificates of the config that share a name (the apex in both) are the operator's choice: each
    is the only one for its other names, so each must go on being renewed (the second run here)."""
    config = write_config(lab, OVERLAPPING)
    first = run(lab, config)
    assert first.returncode == 0 and "main: issued" in first.stdout and "api: issued" in first.stdout, first.stderr
    again = run(lab, config, "--force")
    assert again.returncode == 0, again.stderr
    assert "main: renewed" in again.stdout and "api: renewed" in again.stdout, again.stdout
    check = lab.certrenew("check", "--config", str(config))
    assert "FAIL certificate" not in check.stdout and "ok   ssl dir bundles" in check.stdout, check.stdout
    status = lab.certrenew("status", "--config", str(config), "--json")
    assert {row["state"] for row in json.loads(status.stdout)["certificates"]} == {"ok"}, status.stdout
