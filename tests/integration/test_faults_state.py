"""Fault injection into what runs leave behind: the state dir, the ssl dir, the CA they were told.

Same pattern as test_faults (real CLI, pebble and HAProxy; a `Guard` checks the served
certificate survived and a clean run recovers); `scripts/faults` runs both modules.
Here the lab reuses authorizations now and then (pebble's default): these faults are
not in the validation.
"""

import datetime
import json
import os
import stat
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from certrenew.pki.bundle import certificate_info, check_bundle, leaf_certificate, leaf_info, pem_blocks, serial_hex
from certrenew.pki.keys import key_to_pem
from certrenew.state.store import FileStore, PendingOrder
from tests.harness.faultproxy import Forge, weak_chain
from tests.harness.faultproxy import step as step_of
from tests.harness.faults import NAME, Guard

OTHERS = ("alpha.example", "beta.example")
CONFIG = "".join(f'[[certificate]]\ndomains = ["{name}"]\n\n' for name in (NAME, *OTHERS))


def state(lab, name=NAME):
    return lab.state_dir / "certificates" / name


def plant(path, content: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(0o600)


def run_config(guard, lab, *args, config_text=CONFIG, env=None):
    guard.runs += 1
    config = lab.workdir / "certrenew.toml"
    config.write_text(config_text)
    return lab.certrenew("run", "--config", str(config), *args, env={**guard.env, **(env or {})}, timeout=120)


def lines_of(result) -> dict[str, str]:
    """Each certificate's outcome ("issued: ...", "failed: ..."), by name: on stdout, or on stderr if it failed."""
    failures = [line.removeprefix("certrenew: ") for line in result.stderr.splitlines()
                if ": failed: " in line or ": deferred: " in line]
    return dict(line.split(": ", 1) for line in result.stdout.splitlines() + failures)


def one_line(result) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("certrenew: error: ") or ": failed: " in line]
    assert len(errors) == 1, result.stderr
    return errors[0]


# What a run left: pending certificates, orders, records.

def test_a_garbage_pending_certificate_fails_alone_and_is_set_aside(guard_for, lab):
    guard = guard_for("garbage pending.pem among 3 certificates")
    plant(state(lab) / "pending.pem", b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    result = run_config(guard, lab)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    outcomes = lines_of(result)
    assert all(outcomes[name].startswith("issued:") for name in OTHERS), outcomes
    assert "the pending certificate cannot be parsed" in outcomes[NAME] and "set aside as" in outcomes[NAME]
    for name in OTHERS:
        lab.wait_served_serial(name, serial_hex(lab.served_certificate(name).serial_number))
    [rejected] = (state(lab) / "rejected").iterdir()
    assert rejected.name.endswith("-pending.pem") and b"garbage" in rejected.read_bytes()
    assert not (lab.ssl_dir / f"{NAME}.pem").exists()

    again = run_config(guard, lab)  # held back: the set-aside counts as a failure
    assert again.returncode == 1 and "deferred" in lines_of(again)[NAME], again.stdout
    forced = run_config(guard, lab, "--force")
    assert forced.returncode == 0 and lines_of(forced)[NAME].startswith("issued"), forced.stderr
    guard.recover(expect="unchanged")


def test_a_pending_certificate_with_the_wrong_key_is_set_aside_not_retried_for_ever(guard_for, lab):
    guard = guard_for("pending.pem with another key")
    guard.establish()
    other_key = key_to_pem(ec.generate_private_key(ec.SECP256R1()))
    plant(state(lab) / "pending.pem", b"".join(pem_blocks(guard.old)[:-1]) + other_key)
    result = guard.run()
    assert "holds a key that is not its certificate's" in one_line(result)
    assert guard.bundle_path.read_bytes() == guard.old
    guard.survived()
    assert not (state(lab) / "pending.pem").exists() and len(list((state(lab) / "rejected").iterdir())) == 1
    guard.recover(expect="unchanged")  # nothing left to retry; the served certificate is not due
    assert guard.run("--force").returncode == 0
    guard.recover()


CORRUPT_RECORDS = {
    # case: what becomes of meta.json
    "corrupt meta.json among 3 certificates": lambda text: '{"name": "site.example", "domains": ',
    "meta.json with not_after and no not_before among 3 certificates":
        lambda text: json.dumps({**json.loads(text), "not_before": None}),
    "meta.json with recent_issues null among 3 certificates":
        lambda text: json.dumps({**json.loads(text), "recent_issues": None}),
}


@pytest.mark.parametrize("case", CORRUPT_RECORDS)
def test_a_corrupt_record_fails_its_certificate_alone_and_status_says_why(guard_for, lab, case):
    guard = guard_for(case)
    assert run_config(guard, lab).returncode == 0
    guard.old = guard.bundle_path.read_bytes()
    meta = state(lab) / "meta.json"
    meta.write_text(CORRUPT_RECORDS[case](meta.read_text()))
    result = run_config(guard, lab, "--force")
    outcomes = lines_of(result)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(outcomes[name].startswith("renewed:") for name in OTHERS), outcomes
    assert outcomes[NAME].startswith("failed: corrupt state file") and "meta.json" in outcomes[NAME]
    guard.survived()
    status = lab.certrenew("status", "--config", str(lab.workdir / "certrenew.toml"))
    row = next(line for line in status.stdout.splitlines() if line.startswith(NAME))
    assert status.returncode == 1 and "failing" in row and "corrupt state file" in row, status.stdout
    (state(lab) / "meta.json").unlink()  # the operator's fix
    guard.recover()


# The CA the run is told to use.

def test_switching_ca_reissues_and_drops_what_the_old_ca_left(guard_for, lab, proxy):
    """Staging to production: pebble directly is CA A, the same pebble through the proxy is CA B."""
    guard = guard_for("switching CA (staging to production)")
    guard.establish()
    guard.env.update(proxy.env)  # from now on the operator's setting is CA B
    switched = guard.run()
    assert switched.returncode == 0 and "renewing (CA changed (issued by" in switched.stderr, switched.stderr
    assert "renewed" in switched.stdout
    guard.recover(expect="unchanged")

    # A pending certificate from CA A (its install failed) is not installed by a run against CA B.
    at_a = {"CERTRENEW_DIRECTORY": lab.directory_url, "CERTRENEW_RELOAD_COMMAND": "false"}
    failed = guard.run("--force", env=at_a)
    assert failed.returncode == 1 and (state(lab) / "pending.pem").exists(), failed.stderr
    from_a = pem_blocks((state(lab) / "pending.pem").read_bytes())[0]
    guard.survived()
    result = guard.run()
    assert result.returncode == 0 and "discarding the pending certificate from" in result.stderr, result.stderr
    assert pem_blocks(guard.bundle_path.read_bytes())[0] != from_a
    guard.recover(expect="unchanged")

    # An order from a CA that is gone does not block the runs.
    store = FileStore(lab.state_dir)
    with store.lock(0):
        store.save_order(NAME, PendingOrder("https://127.0.0.1:9/order/1", [NAME], "ecdsa-p256",
                                            key_to_pem(ec.generate_private_key(ec.SECP256R1())),
                                            "https://127.0.0.1:9/dir"))
    result = guard.run()
    assert result.returncode == 0 and "discarding the saved order from https://127.0.0.1:9/dir" in result.stderr
    guard.recover(expect="unchanged")


def test_a_renewal_window_already_over_renews_a_new_certificate_once_not_at_every_run(guard_for, lab, ari):
    guard = guard_for("the CA's renewal window (ARI) already over")
    guard.env["CERTRENEW_DIRECTORY"] = f"{ari.url}/dir"
    ari.window = (-datetime.timedelta(days=2), -datetime.timedelta(days=1))
    guard.establish()
    for _ in range(3):
        guard.recover(expect="unchanged")  # each run ordered anew without the fix
    assert len(ari.requests) == 1  # one certificate, its window asked once


# The state dir is ours alone.

def test_a_state_dir_others_can_write_is_refused(guard_for, lab, tmp_path):
    guard = guard_for("state dir not ours (other owner, group-writable, symlinks)")
    guard.establish()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")

    def refused(expected, *args, **env):
        result = guard.run("--force", *args, env=env)
        assert expected in one_line(result), result.stderr
        assert victim.read_bytes() == b"precious\n" and guard.bundle_path.read_bytes() == guard.old
        guard.survived()

    lab.state_dir.chmod(0o770)
    refused("writable by group or others (mode 770); run chmod go-w")
    lab.state_dir.chmod(0o700)
    os.chown(lab.state_dir, 65534, 65534)
    refused("is owned by uid 65534, not uid 0")
    os.chown(lab.state_dir, 0, 0)
    (lab.state_dir / "lock").unlink()
    (lab.state_dir / "lock").symlink_to(victim)
    refused("lock: it is a symbolic link")
    (lab.state_dir / "lock").unlink()
    (state(lab) / "pending.pem").symlink_to(victim)
    refused("pending.pem: it is a symbolic link")
    (state(lab) / "pending.pem").unlink()
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    refused("writable by group or others (mode 1777)", "--state-dir", str(shared))
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777 and not list(shared.iterdir())
    guard.recover()


# The ssl dir.

# Authorizations reused: repeated orders need no validation, so two runs never contend for the responder's port.
@pytest.mark.pebble_env({"PEBBLE_AUTHZREUSE": "100"})
def test_two_state_dirs_sharing_one_ssl_dir_never_break_each_others_installs(lab):
    guard = Guard(lab, "2 state dirs, 1 ssl dir: 24 concurrent installs", {"CERTRENEW_SELF_CHECK": "0"})
    passed = False
    try:
        (lab.ssl_dir / ".certrenew-1-dir.tmp").mkdir()  # named like a temp, but not one: left alone
        guard.establish()
        other = {**guard.env, "CERTRENEW_STATE_DIR": str(lab.workdir / "other-state")}
        assert lab.certrenew("other.example", env=other).returncode == 0  # validated once; reused from now on
        results: dict[str, list] = {NAME: [], "other.example": []}

        def renew(name, env):
            for _ in range(12):
                results[name].append(lab.certrenew(name, "--force", env=env, timeout=120))

        threads = [threading.Thread(target=renew, args=(NAME, guard.env)),
                   threading.Thread(target=renew, args=("other.example", other))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
        guard.runs += 24
        failures = [result.stderr for runs in results.values() for result in runs if result.returncode != 0]
        assert not failures and sum(map(len, results.values())) == 24, failures
        assert (lab.ssl_dir / ".certrenew-1-dir.tmp").is_dir()
        # Two processes signalling one HAProxy to reload back to back can have a signal coalesced
        # (what a batch install avoids), leaving an older valid bundle served: this case is about
        # the shared ssl dir's files, so reload once before asking what is served.
        lab.reload_haproxy()
        guard.survived()
        guard.recover(expect="unchanged")
        passed = True
    finally:
        guard.record(passed)


def test_a_symlinked_bundle_is_replaced_after_a_warning_and_a_rollback_restores_its_bytes(guard_for, lab, tmp_path):
    guard = guard_for("bundle in the ssl dir is a symlink")
    guard.establish()
    elsewhere = tmp_path / "managed-elsewhere.pem"
    elsewhere.write_bytes(guard.old)
    guard.bundle_path.unlink()
    guard.bundle_path.symlink_to(elsewhere)
    result = guard.run("--force", env={"CERTRENEW_RELOAD_COMMAND": "false"})
    assert result.returncode == 1 and f"{guard.bundle_path} is a symbolic link to {elsewhere}" in result.stderr
    assert guard.bundle_path.read_bytes() == guard.old and elsewhere.read_bytes() == guard.old
    guard.survived()
    original = guard.old
    guard.recover(expect="installed")
    assert not guard.bundle_path.is_symlink() and elsewhere.read_bytes() == original  # the link's target untouched
    assert json.loads((state(lab) / "meta.json").read_text())["directory"] == lab.directory_url


def test_a_fifo_or_a_link_to_dev_zero_in_a_bundles_place_fails_that_certificate_alone_and_loses_nothing(
        guard_for, lab):
    """An operator's mistake in the ssl dir: the run does not hang on the FIFO nor read /dev/zero
    until memory runs out (each run is killed after 120 s, failing the test); those two fail before
    they are ordered, or keep their pending certificate, and the third is renewed or installed."""
    guard = guard_for("a FIFO and a link to /dev/zero where bundles should be")
    fifo, device = (lab.ssl_dir / f"{name}.pem" for name in OTHERS)
    hot = {"CERTRENEW_HAPROXY_SOCKET": str(lab.admin_socket)}  # no reload: HAProxy would read the FIFO at one

    def plant_mistakes() -> None:
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
        device.unlink(missing_ok=True)
        device.symlink_to("/dev/zero")

    def blocked(result) -> None:
        outcomes = lines_of(result)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert outcomes[OTHERS[0]] == f"failed: {fifo} is a named pipe (FIFO), not a bundle: left alone; " \
                                      "move it out of the ssl dir", outcomes
        assert outcomes[OTHERS[1]] == (f"failed: {device} (a symbolic link to /dev/zero) is a character device, "
                                       "not a bundle: left alone; move it out of the ssl dir"), outcomes
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.readlink(device) == "/dev/zero"  # left alone
        for name in OTHERS:  # an operator's mistake: no back-off
            assert json.loads((state(lab, name) / "meta.json").read_text())["next_attempt"] is None
        guard.survived()

    assert run_config(guard, lab).returncode == 0
    guard.old = guard.bundle_path.read_bytes()
    served = {name: lab.served_certificate(name).serial_number for name in OTHERS}

    plant_mistakes()  # before ordering: the CA is not asked for what could not be installed
    result = run_config(guard, lab, "--force", env=hot)
    blocked(result)
    assert lines_of(result)[NAME].startswith("renewed:"), result.stdout
    for name in OTHERS:
        assert not {"order.json", "pending.pem"} & {path.name for path in state(lab, name).iterdir()}
        assert lab.served_certificate(name).serial_number == served[name]  # HAProxy's memory untouched
    guard.recover(expect="unchanged")

    fifo.unlink()
    device.unlink()
    failed = run_config(guard, lab, "--force", env={"CERTRENEW_RELOAD_COMMAND": "false"})  # leaves three pending
    assert failed.returncode == 1 and all((state(lab, name) / "pending.pem").exists() for name in (NAME, *OTHERS))
    pending = {name: (state(lab, name) / "pending.pem").read_bytes() for name in OTHERS}
    plant_mistakes()  # after ordering: what was issued stays pending
    result = run_config(guard, lab, env=hot)
    blocked(result)
    assert lines_of(result)[NAME].startswith("installed:"), result.stdout
    assert {name: (state(lab, name) / "pending.pem").read_bytes() for name in OTHERS} == pending
    guard.old = guard.bundle_path.read_bytes()

    fifo.unlink()  # the operator's fix
    device.unlink()
    fixed = run_config(guard, lab, env=hot)
    assert fixed.returncode == 0, fixed.stderr
    for name in OTHERS:
        assert lines_of(fixed)[name].startswith("installed:"), fixed.stdout
        lab.wait_served_serial(name, leaf_info(pending[name]).serial)
    guard.recover(expect="unchanged")


# What HAProxy itself refuses: a chain certrenew's checks accept and OpenSSL will not load.

REFUSALS = {
    # case: (established before, the install settings)
    "renewal refused at commit ssl cert": (True, lambda lab: {"CERTRENEW_HAPROXY_SOCKET": str(lab.admin_socket)}),
    "new certificate refused at add ssl crt-list": (
        False, lambda lab: {"CERTRENEW_HAPROXY_SOCKET": str(lab.admin_socket)}),
    "renewal refused by haproxy -c before the reload": (
        True, lambda lab: {"CERTRENEW_HAPROXY_CONFIG": str(lab.haproxy_cfg)}),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_a_bundle_haproxy_refuses_is_set_aside_and_the_others_installed(guard_for, lab, proxy, case):
    """The CA sends a chain whose intermediate has a 1024-bit RSA key, for one of two certificates:
    HAProxy refuses it, what it served stays served, the other certificate is installed in the
    same run, and the refused one is set aside, so the next runs do not retry it for ever."""
    established, settings = REFUSALS[case]
    guard = guard_for(case, proxy)
    guard.env.update(settings(lab))
    other = OTHERS[0]
    config = f'[[certificate]]\ndomains = ["{NAME}"]\n\n[[certificate]]\ndomains = ["{other}"]\n'
    if established:
        assert run_config(guard, lab, config_text=config).returncode == 0
        guard.old = guard.bundle_path.read_bytes()
        lab.wait_served_serial(NAME, leaf_info(guard.old).serial)
    forged = []

    def weaken(body: bytes, _) -> bytes:
        leaf = leaf_certificate(body)
        if NAME not in leaf_info(body).domains:
            return body
        forged.append(weak_chain(leaf.public_key(), [NAME]))  # the leaf carries certrenew's own key
        return forged[-1]

    proxy.on_request = lambda method, path: Forge(weaken) if step_of(path) == "certificate" else None
    result = run_config(guard, lab, "--force", config_text=config)
    assert len(forged) == 1, "the download for the certificate was not forged once"
    outcomes = lines_of(result)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "unable to load chain certificate" in outcomes[NAME], outcomes  # HAProxy's own words
    assert "set aside as" in outcomes[NAME], outcomes
    assert outcomes[other].startswith(("renewed:", "issued:")), outcomes
    lab.wait_served_serial(other, leaf_info((lab.ssl_dir / f"{other}.pem").read_bytes()).serial)
    [rejected] = (state(lab) / "rejected").iterdir()
    assert rejected.name.endswith("-pending.pem") and rejected.read_bytes().startswith(forged[0])
    check_bundle(rejected.read_bytes())  # certrenew's own checks pass it: only HAProxy could refuse it
    if established:
        assert guard.bundle_path.read_bytes() == guard.old
        assert lab.served_certificate(NAME).serial_number == leaf_certificate(guard.old).serial_number
        guard.survived()
    else:
        assert not guard.bundle_path.exists()
        assert NAME not in certificate_info(lab.served_certificate_unverified(NAME)).domains  # the placeholder

    proxy.on_request = lambda method, path: None
    again = run_config(guard, lab, config_text=config)  # the refused bundle is not tried again
    if established:  # what is served is not due
        assert again.returncode == 0 and lines_of(again)[NAME].startswith("unchanged"), again.stdout
    else:  # backed off, as after any failure
        assert again.returncode == 1 and lines_of(again)[NAME].startswith("deferred"), again.stderr
    forced = run_config(guard, lab, "--force", config_text=config)
    assert forced.returncode == 0, forced.stderr
    assert lines_of(forced)[NAME].startswith(("renewed:", "issued:")), forced.stdout
    guard.recover(expect="unchanged")


def test_a_refused_bundle_that_cannot_be_set_aside_fails_alone_and_stays_pending(guard_for, lab, proxy):
    """HAProxy refuses one certificate's chain, and its state dir has a file where `rejected/` goes:
    that certificate fails in one line (the run does not end without outcomes), the other is renewed."""
    guard = guard_for("a refused bundle that cannot be set aside", proxy)
    guard.env.update({"CERTRENEW_HAPROXY_SOCKET": str(lab.admin_socket)})
    other = OTHERS[0]
    config = f'[[certificate]]\ndomains = ["{NAME}"]\n\n[[certificate]]\ndomains = ["{other}"]\n'
    assert run_config(guard, lab, config_text=config).returncode == 0
    guard.old = guard.bundle_path.read_bytes()
    plant(state(lab) / "rejected", b"not a directory\n")

    def weaken(body: bytes, _) -> bytes:
        leaf = leaf_certificate(body)
        return weak_chain(leaf.public_key(), [NAME]) if NAME in leaf_info(body).domains else body

    proxy.on_request = lambda method, path: Forge(weaken) if step_of(path) == "certificate" else None
    result = run_config(guard, lab, "--force", config_text=config)
    outcomes = lines_of(result)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "unable to load chain certificate" in outcomes[NAME], outcomes
    assert (f"and it could not be set aside: refusing {state(lab) / 'rejected'}: it is not a directory"
            in outcomes[NAME]), outcomes
    assert outcomes[other].startswith("renewed:"), outcomes
    assert (state(lab) / "pending.pem").exists()  # kept: nothing lost
    guard.survived()

    proxy.on_request = lambda method, path: None
    (state(lab) / "rejected").unlink()  # the operator's fix: the next run sets it aside
    again = run_config(guard, lab, config_text=config)
    assert again.returncode == 1 and "set aside as" in lines_of(again)[NAME], again.stderr
    assert not (state(lab) / "pending.pem").exists()
    guard.survived()
    assert run_config(guard, lab, "--force", config_text=config).returncode == 0
    guard.recover(expect="unchanged")
