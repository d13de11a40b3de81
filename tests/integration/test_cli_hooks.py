"""Deploy, pre- and post-hooks, run by the real CLI against the real lab."""

import json
import sys
import time

from certrenew.pki.bundle import leaf_info

DEPLOY_HOOK = """#!{python}
# Record this hook's environment and the certificate HAProxy serves for its first name right now.
import json, os, socket, ssl
from cryptography import x509
from certrenew.pki.bundle import serial_hex
context = ssl.create_default_context()
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
domain = os.environ["CERTRENEW_DOMAINS"].split()[0]
with socket.create_connection(("127.0.0.1", {port}), timeout=5) as raw:
    with context.wrap_socket(raw, server_hostname=domain) as tls:
        served = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
facts = {{key: value for key, value in os.environ.items() if key.startswith("CERTRENEW_")}}
facts["served_serial"] = serial_hex(served.serial_number)
with open({events!r}, "a") as events:
    events.write("deploy " + json.dumps(facts) + "\\n")
"""

CONFIG = """
deploy_hook = "{deploy}"
[[certificate]]
name = "alpha"
domains = ["alpha.example", "www.alpha.example"]
[[certificate]]
domains = ["beta.example"]
"""


def executable(path, text):
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def events_hooks(lab):
    """A deploy hook, and pre/post hooks, that append to one events file, in the order they ran."""
    events = lab.workdir / "events"
    deploy = executable(lab.workdir / "deploy.py",
                        DEPLOY_HOOK.format(python=sys.executable, port=lab.https_port, events=str(events)))
    note = executable(lab.workdir / "note.sh", f'#!/bin/sh\necho "$1" >> {events}\n')
    return events, deploy, note


def read_events(events):
    return events.read_text().splitlines() if events.exists() else []


def test_hooks_run_around_a_run_with_work_and_after_haproxy_serves_each_certificate(lab):
    events, deploy, note = events_hooks(lab)
    config = lab.workdir / "certrenew.toml"
    config.write_text(CONFIG.format(deploy=deploy))  # the deploy hook from the TOML file, the others as flags
    args = ("run", "--config", str(config), "--pre-hook", f"{note} pre", "--post-hook", f"{note} post")
    env = {"CERTRENEW_VERIFY_ENDPOINT": lab.https_endpoint}  # installed means served: verified first

    first = lab.certrenew(*args, env=env)
    assert first.returncode == 0, first.stderr
    assert "certrenew: 2 certificates: 2 issued" in first.stderr
    lines = read_events(events)
    assert lines[0] == "pre" and lines[-1] == "post" and len(lines) == 4
    deployed = {facts["CERTRENEW_NAME"]: facts for facts in (json.loads(line.split(" ", 1)[1]) for line in lines[1:3])}
    assert sorted(deployed) == ["alpha", "beta.example"]
    for name, domains in (("alpha", "alpha.example www.alpha.example"), ("beta.example", "beta.example")):
        facts, bundle = deployed[name], lab.ssl_dir / f"{name}.pem"
        info = leaf_info(bundle.read_bytes())
        assert facts["CERTRENEW_BUNDLE"] == str(bundle) and facts["CERTRENEW_DOMAINS"] == domains
        assert facts["CERTRENEW_SERIAL"] == info.serial == facts["served_serial"]  # HAProxy served it already
        assert facts["CERTRENEW_NOT_AFTER"] == info.not_after.isoformat()
        assert facts["CERTRENEW_ACTION"] == "issued"

    second = lab.certrenew(*args, env=env)  # nothing due: no hook runs
    assert second.returncode == 0, second.stderr
    assert "certrenew: 2 certificates: 2 unchanged" in second.stderr
    assert read_events(events) == lines

    renewed = lab.certrenew(*args, "--force", env=env)
    assert renewed.returncode == 0, renewed.stderr
    assert [json.loads(line.split(" ", 1)[1])["CERTRENEW_ACTION"] for line in read_events(events)[5:7]] == \
        ["renewed", "renewed"]


def status_of(lab, name):
    result = lab.certrenew("status", "--json")
    return {row["name"]: row for row in json.loads(result.stdout)["certificates"]}[name]


def test_a_failing_deploy_hook_fails_the_run_but_never_the_certificate(lab):
    hook = executable(lab.workdir / "fail.sh", "#!/bin/sh\necho 'chat server unreachable' >&2\nexit 4\n")
    # The verify endpoint confirms the reload: no warning that nothing could.
    result = lab.certrenew("solo.example", "--deploy-hook", hook, "-q", "--verify-endpoint", lab.https_endpoint)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == f"certrenew: deploy hook for solo.example {hook!r} exited with status 4: " \
                            "chat server unreachable\n"
    serial = leaf_info((lab.ssl_dir / "solo.example.pem").read_bytes()).serial
    lab.wait_served_serial("solo.example", serial)  # not rolled back
    row = status_of(lab, "solo.example")
    assert row["state"] == "ok" and int(row["serial"], 16) == int(serial, 16) and row["failures"] == 0  # no back-off


def test_a_hanging_pre_hook_is_killed_at_the_timeout_and_nothing_is_ordered(lab):
    pid_file, post_ran = lab.workdir / "hook.pid", lab.workdir / "post-ran"
    hang = executable(lab.workdir / "hang.sh", f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 120\n")
    started = time.monotonic()
    result = lab.certrenew("solo.example", "--pre-hook", hang, "--post-hook", f"touch {post_ran}",
                           "--hook-timeout", "1")
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert f"pre-hook {hang!r} did not finish within 1 s and was killed" in result.stderr
    assert "solo.example: failed: not attempted: the pre-hook failed" in result.stderr
    assert elapsed < 20  # 1 s for the hook, the rest is starting Python under load
    pid = int(pid_file.read_text())
    assert not _running(pid)  # the sleep it became was killed, not left behind
    assert post_ran.exists()  # the post-hook still ran, to undo what a pre-hook began
    assert not (lab.ssl_dir / "solo.example.pem").exists()
    assert not (lab.state_dir / "certificates" / "solo.example" / "meta.json").exists()  # nothing ordered, no back-off


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_hook_that_cannot_run_or_parse_is_refused_before_anything_is_touched(lab):
    plain = lab.workdir / "plain.sh"
    plain.write_text("#!/bin/sh\n")  # not executable
    config = lab.workdir / "certrenew.toml"
    config.write_text("post_hook = \"sh -c 'echo hi\"\n[[certificate]]\ndomains = ['a.example']\n")
    for args, says in (
        (("solo.example", "--deploy-hook", str(plain)), f"the deploy hook's program {str(plain)!r} is not found"),
        (("solo.example", "--pre-hook", "no-such-notifier --now"), "the pre-hook's program 'no-such-notifier' is"),
        (("solo.example", "--deploy-hook", "sh -c 'echo hi"), "invalid --deploy-hook: No closing quotation"),
        (("solo.example", "--post-hook", " "), "invalid --post-hook: the command is empty"),
        (("run", "--config", str(config)), "post_hook: No closing quotation"),
    ):
        result = lab.certrenew(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert says in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert list(lab.state_dir.iterdir()) == [] and not (lab.ssl_dir / "solo.example.pem").exists()
