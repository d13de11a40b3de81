"""Fault injection against the real CLI, pebble and HAProxy: no fault may lose the served certificate.

Every case establishes a served certificate, injects its fault into a forced renewal,
checks with a `Guard` that the old bundle is intact or a complete new one is served
and nothing is left behind, then checks that a clean run recovers. `scripts/faults`
runs this module and prints the ledger.
"""

import fcntl
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from certrenew.pki.bundle import pem_blocks
from certrenew.state.store import FileStore
from tests.harness.faultproxy import DROP, LOSE, Drip, Forge, Reply, Skew, Stall, forged_chain
from tests.harness.faultproxy import step as step_of
from tests.harness.faults import NAME, held_open
from tests.harness.lab import poll

NO_AUTHZ_REUSE = {"PEBBLE_AUTHZREUSE": "0"}
"""Every order validates afresh, so faults during validation really happen during validation."""


pytestmark = pytest.mark.pebble_env(NO_AUTHZ_REUSE)


# The CA.

def test_nonce_rejection_still_issues(guard_for, lab):
    lab.stop_pebble()
    lab.start_pebble({**NO_AUTHZ_REUSE, "PEBBLE_WFE_NONCEREJECT": "50"})
    guard = guard_for("pebble rejects 50% of nonces")
    guard.establish()
    for _ in range(4):
        result = guard.run("--force")
        assert result.returncode == 0, result.stderr
        guard.survived()
        guard.recover()


def failing(step: str, fault, times: int | None = None):
    """An on_request that answers `fault` to the first `times` requests of `step` (all, if None)."""
    hits = []

    def on_request(method: str, path: str):
        if step_of(path) == step and (times is None or len(hits) < times):
            hits.append(path)
            return fault
        return None
    on_request.hits, on_request.times = hits, times  # what was injected, to check it was
    return on_request


def at(step: str, action, nth: int = 1):
    """An on_request that runs `action()` when the `nth` request of `step` arrives, then passes it on.

    `on_request.ran` counts the actions run and `on_request.errors` keeps what they raised:
    an action that failed in the proxy's thread would otherwise go unnoticed.
    """
    hits = []

    def on_request(method: str, path: str):
        if step_of(path) == step:
            hits.append(path)
            if len(hits) == nth:
                on_request.ran += 1
                try:
                    action()
                except Exception as error:
                    on_request.errors.append(error)
        return None
    on_request.ran, on_request.errors = 0, []
    return on_request


def failing_from(step: str, fault):
    """An on_request that lets everything through until `step`, then answers `fault` to everything."""
    tripped = []

    def on_request(method: str, path: str):
        if step_of(path) == step:
            tripped.append(path)
        return fault if tripped else None
    on_request.hits, on_request.times = tripped, None
    return on_request


INTERNAL = Reply.problem(500, "serverInternal", "injected")
PLAIN_500 = Reply(500, b"oops")

CA_FAULTS = {
    # case: (on_request, whether the forced run still succeeds)
    "CA answers 500 twice at finalize (retried)": (lambda: failing("finalize", PLAIN_500, times=2), True),
    "CA drops 2 connections mid-order (retried)": (lambda: failing("authorization", DROP, times=2), True),
    "CA answers 500 from the challenge on": (lambda: failing_from("challenge", INTERNAL), False),
    "CA drops every connection from validation on": (lambda: failing_from("authorization", DROP), False),
    "CA answers 500 to the download after finalize": (lambda: failing("certificate", PLAIN_500), False),
    "CA unreachable after finalize": (lambda: failing_from("order", DROP), False),
    "CA rate-limits the order, Retry-After 1 s": (
        lambda: failing("new-order", Reply.problem(429, "rateLimited", "too many", Retry_After="1"), times=1), True),
}


@pytest.mark.parametrize("case", CA_FAULTS)
def test_ca_fault_mid_order(guard_for, proxy, case):
    guard = guard_for(case, proxy)
    guard.establish()
    guard.forget_account()  # the order goes through its challenge: the faults placed there happen
    make_fault, succeeds = CA_FAULTS[case]
    proxy.on_request = fault = make_fault()
    started = time.monotonic()
    result = guard.run("--force")
    assert (result.returncode == 0) == succeeds, result.stderr
    # The fault really happened: as often as meant, so a retried case was retried past it.
    assert len(fault.hits) == fault.times if fault.times else fault.hits, fault.hits
    assert time.monotonic() - started < 20
    if not succeeds:
        assert result.stderr.count("failed:") == 1 and "Traceback" not in result.stderr, result.stderr
    guard.survived()
    proxy.on_request = lambda method, path: None
    orders = proxy.count("new-order")
    recovered = guard.recover()
    if "after finalize" in case:  # the finalized order was downloaded, not ordered again
        assert "installed" in recovered.stdout and proxy.count("new-order") == orders


def test_rate_limit_beyond_the_deadline_fails_fast_and_clearly(guard_for, proxy):
    guard = guard_for("CA rate-limits, Retry-After beyond --timeout", proxy)
    guard.establish()
    proxy.on_request = failing("new-order", Reply.problem(429, "rateLimited", "too many new orders",
                                                          Retry_After="3600"))
    started = time.monotonic()
    result = guard.run("--force")
    assert result.returncode == 1 and time.monotonic() - started < 5
    assert "too many new orders" in result.stderr and "3600 s" in result.stderr and "--timeout" in result.stderr
    guard.survived()
    proxy.on_request = lambda method, path: None
    guard.recover()


def test_ca_stopped_mid_order(guard_for, proxy, lab):
    guard = guard_for("CA process stopped mid-order", proxy)
    guard.establish()
    guard.forget_account()  # the order goes through its challenge, where pebble is stopped
    proxy.on_request = stop = at("challenge", lab.stop_pebble)
    result = guard.run("--force")
    assert stop.ran == 1 and stop.errors == []  # pebble really was stopped mid-order
    assert result.returncode == 1 and "Traceback" not in result.stderr
    guard.survived()
    proxy.on_request = lambda method, path: None
    lab.start_pebble()
    guard.recover()  # not due: the old certificate stays
    result = guard.run("--force")  # a restarted pebble forgot the account: registered again
    assert result.returncode == 0, result.stderr
    guard.recover()


# The account.

@pytest.mark.parametrize("times", [1, None], ids=["once", "every time"])
def test_a_lost_answer_to_the_registration_does_not_wedge_the_runs(guard_for, proxy, lab, times):
    """Pebble registers the key, certrenew never hears so: asked again, the CA answers with the
    key's account (RFC 8555 section 7.3.1), in the same run (lost once) or the next (lost every time)."""
    guard = guard_for(f"CA's answer to the registration lost {'once' if times else 'every time'}", proxy)
    proxy.on_request = lost = failing("account", LOSE, times=times)
    result = guard.run()
    assert proxy.altered == len(lost.hits) >= 1  # pebble answered, and certrenew did not hear it
    if times is None:
        assert result.returncode == 1 and "cannot register the account" in result.stderr, result.stderr
        account = FileStore(lab.state_dir).load_account(proxy.directory_url)
        assert account is not None and account.uri is None  # the key is kept, with no account URL
    else:
        assert result.returncode == 0, result.stderr
    proxy.on_request = lambda method, path: None
    if times is None:  # past the back-off the failure earned; not agreeing again: the account is only looked up
        again = guard.run("--force", env={"CERTRENEW_AGREE_TOS": None})
        assert again.returncode == 0, again.stderr
    guard.recover()
    assert FileStore(lab.state_dir).load_account(proxy.directory_url).uri


def test_sigterm_during_the_registration_and_the_next_run_picks_up(guard_for, proxy):
    guard = guard_for("SIGTERM during the registration", proxy)
    process: list[subprocess.Popen] = []

    def kill_and_wait() -> None:
        process[0].send_signal(signal.SIGTERM)
        process[0].wait(10)

    proxy.on_request = stop = at("account", kill_and_wait)  # pebble registers the key once certrenew is gone
    process.append(guard.start())
    out, err = process[0].communicate(timeout=60)
    assert (stop.ran, stop.errors) == (1, [])
    assert process[0].returncode == 143 and "the next run picks up from here" in err, err
    proxy.on_request = lambda method, path: None
    guard.recover()  # as it said


def test_a_ca_that_forgot_the_account_is_asked_for_the_keys_account_again(guard_for, proxy, lab):
    """A restarted pebble forgets the stored account; a run registers the key again but fails before
    it stores the new URL; the next run's registration must find that account, not fail on a conflict."""
    guard = guard_for("CA restarted, account registered again by a failed run", proxy)
    guard.establish()
    lab.stop_pebble()
    lab.start_pebble({**NO_AUTHZ_REUSE, "PEBBLE_WFE_NONCEREJECT": "0"})  # a refused nonce sends newAccount again
    proxy.on_request = fault = failing_from("challenge", INTERNAL)
    failed = guard.run("--force")
    assert failed.returncode == 1 and fault.hits, failed.stderr
    assert "registering the key again" in failed.stderr, failed.stderr
    guard.survived()
    proxy.on_request = lambda method, path: None
    accounts = proxy.count("account")
    result = guard.run("--force")
    assert result.returncode == 0 and "registering the key again" in result.stderr, result.stderr
    assert proxy.count("account") == accounts + 1  # one newAccount, answered with the key's account
    guard.recover()


# The host's clock.

CLOCKS = {
    # case: (the CA's clock less this host's, in minutes; what the run says, or None: it orders)
    "10 min behind the CA's": (10, "this host's clock is 10 min behind the CA's"),
    "1 min behind the CA's (tolerated)": (1, None),
    "10 min ahead of the CA's (harmless)": (-10, None),
    "100 days ahead of the CA's": (-100 * 24 * 60, "this host's clock is 144000 min ahead of the CA's"),
}


@pytest.mark.parametrize("case", CLOCKS)
@pytest.mark.pebble_env({**NO_AUTHZ_REUSE, "PEBBLE_WFE_NONCEREJECT": "0"})  # a refused nonce sends new-order again
def test_a_host_clock_behind_the_cas_is_named_before_anything_is_ordered(guard_for, proxy, case):
    """A certificate issued by a CA whose clock is ahead would be refused here as not yet valid, an order
    each time; one far behind would look expired, or due, on every run: the CA's Date header tells first.
    The proxy dates pebble's answers by another clock."""
    minutes, refused = CLOCKS[case]
    guard = guard_for(f"host clock {case}", proxy)
    proxy.on_request = lambda method, path: Skew(minutes * 60)
    result = guard.run()
    assert proxy.altered >= 1
    if refused is None:
        assert result.returncode == 0 and proxy.count("new-order") == 1, result.stderr
    else:
        assert result.returncode == 1 and result.stderr.count("failed:") == 1, result.stderr
        assert refused in result.stderr, result.stderr
        assert "sync the clock (chrony, systemd-timesyncd)" in result.stderr and "Traceback" not in result.stderr
        assert proxy.count("new-order") == proxy.count("account") == 0  # refused before registering, too
    proxy.on_request = lambda method, path: None
    guard.recover()  # no back-off: the run after the fix goes ahead


# What the CA returns.

ENORMOUS = b"-----BEGIN CERTIFICATE-----\n" + b"A" * 64 * 1024 * 1024 + b"\n-----END CERTIFICATE-----\n"

NOT_OURS = {
    # case: (what replaces pebble's chain, from pebble's body and the CSR's key; the error certrenew names)
    "CA returns a leaf for another key": (
        lambda body, key: forged_chain(ec.generate_private_key(ec.SECP256R1()).public_key(), [NAME]),
        "not for our key"),
    "CA returns a leaf for other names": (
        lambda body, key: forged_chain(key, ["other.example"]), "is for other.example, not the ordered site.example"),
    "CA returns an expired leaf": (lambda body, key: forged_chain(key, [NAME], (-90, -1)), "expired on"),
    "CA returns a leaf not valid until tomorrow": (lambda body, key: forged_chain(key, [NAME], (1, 90)),
                                                   "not valid before"),
    "CA returns a chain not signed in order": (
        lambda body, key: pem_blocks(body)[0] + trustme.CA().cert_pem.bytes(), "chain the CA returned is broken"),
    "CA returns HTML instead of the chain": (lambda body, key: b"<html><body>Bad Gateway</body></html>\n",
                                             "not a certificate chain"),
    "CA returns garbage DER": (lambda body, key: bytes(range(256)) * 8, "not a certificate chain"),
    "CA returns an empty chain": (lambda body, key: b"", "holds no PEM certificate"),
    "CA returns trailing garbage after the chain": (lambda body, key: body + b"garbage\n", "not a certificate chain"),
    "CA returns an enormous chain (64 MiB)": (lambda body, key: ENORMOUS, "larger than 1024 KiB"),
}


@pytest.mark.parametrize("case", NOT_OURS)
def test_ca_returns_a_certificate_that_is_not_ours(guard_for, proxy, lab, case):
    """Refused before it is kept: exit 1, one line naming it, served bundle untouched, failure recorded."""
    make, error = NOT_OURS[case]
    guard = guard_for(case, proxy)
    guard.establish()
    proxy.on_request = failing("certificate", Forge(make))
    result = guard.run("--force")
    assert proxy.altered == 1
    assert result.returncode == 1 and error in result.stderr, result.stderr
    assert result.stderr.count("failed:") == 1 and "Traceback" not in result.stderr, result.stderr
    assert guard.bundle_path.read_bytes() == guard.old
    guard.survived()
    state = lab.state_dir / "certificates" / NAME
    assert not (state / "pending.pem").exists()
    meta = json.loads((state / "meta.json").read_text())
    assert meta["failures"] == 1 and error in meta["last_error"] and meta["next_attempt"]
    status = lab.certrenew("status", env=guard.env)  # a failed --force of one not due: shown, but healthy
    assert status.returncode == 0, status.stdout + status.stderr
    assert " ok " in status.stdout and "failed: " in status.stdout and error in status.stdout, status.stdout
    proxy.on_request = lambda method, path: None
    guard.recover()  # not due (or the download of the kept order, for the enormous one)
    result = guard.run("--force")
    assert result.returncode == 0, result.stderr
    guard.recover()


SLOW_CA = {
    # case: (the step, the fault)
    "CA drips the directory, a byte a second": ("directory", Drip(1.0)),
    "CA never finishes the directory": ("directory", Stall()),
    "CA drips the certificate, a byte a second": ("certificate", Drip(1.0)),
}


@pytest.mark.parametrize("case", SLOW_CA)
def test_a_slow_ca_ends_the_run_within_its_time_budget(guard_for, proxy, case):
    at_step, fault = SLOW_CA[case]
    guard = guard_for(case, proxy)
    guard.establish()
    proxy.on_request = failing(at_step, fault)
    started = time.monotonic()
    result = guard.run("--force", env={"CERTRENEW_TIMEOUT": "5"}, timeout=60)
    took = time.monotonic() - started
    assert proxy.altered >= 1
    assert result.returncode == 1 and "time budget of 5 s (--timeout)" in result.stderr, result.stderr
    assert took < 5 + 10, took
    assert guard.bundle_path.read_bytes() == guard.old
    guard.survived()
    proxy.on_request = lambda method, path: None
    guard.recover()


def test_a_reload_command_that_cannot_run_is_refused_before_the_ca_is_asked(guard_for, proxy):
    guard = guard_for("reload command missing or unbalanced", proxy)
    guard.establish()
    seen = len(proxy.seen)
    for command, error in (("no-such-reloader --now", "'no-such-reloader' is not found on PATH"),
                           ("sh -c 'unbalanced", "invalid CERTRENEW_RELOAD_COMMAND: No closing quotation")):
        result = guard.run("--force", env={"CERTRENEW_RELOAD_COMMAND": command})
        assert result.returncode == 2 and error in result.stderr, result.stderr
        assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(proxy.seen) == seen  # the CA was not asked
    guard.survived()
    guard.recover()


# HAProxy.

HAPROXY_DOWN = {
    # case: (the step at which HAProxy stops, or None for before the run; the error; the clean run's action)
    "HAProxy down (validation cannot reach the responder)": (None, "validation failed", "unchanged"),
    "HAProxy down after validation (reload fails)": ("finalize", "reload command", "installed"),
}


@pytest.mark.parametrize("case", HAPROXY_DOWN)
def test_haproxy_down(guard_for, proxy, lab, case):
    stop_at, error, recovery = HAPROXY_DOWN[case]
    guard = guard_for(case, proxy)
    guard.establish()
    if stop_at:
        proxy.on_request = at(stop_at, lab.stop_haproxy)
    else:
        lab.stop_haproxy()
    result = guard.run("--force")
    assert result.returncode == 1 and error in result.stderr, result.stderr
    guard.survived(served=False)
    assert guard.bundle_path.read_bytes() == guard.old
    lab.start_haproxy()
    guard.survived()
    guard.recover(expect=recovery)  # "installed": the certificate issued while HAProxy was down


def test_haproxy_admin_socket_gone(guard_for, lab):
    """certrenew is told to hot-update over the Runtime API, but the socket file is gone: the
    pre-flight check sees it before ordering, so no certificate is issued that could not be installed."""
    guard = guard_for("HAProxy admin socket gone (Runtime API)")
    guard.env["CERTRENEW_HAPROXY_SOCKET"] = str(lab.admin_socket)
    guard.establish()
    lab.admin_socket.unlink()
    result = guard.run("--force")
    assert result.returncode == 1 and f"HAProxy socket {lab.admin_socket}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(lab.state_dir.rglob("pending.pem"))  # nothing was ordered
    guard.survived()
    lab.stop_haproxy()  # the operator restarts HAProxy, which creates its socket again
    lab.start_haproxy()
    guard.recover(expect="unchanged")


def test_haproxy_reload_failing(guard_for):
    guard = guard_for("HAProxy reload failing")
    guard.establish()
    result = guard.run("--force", env={"CERTRENEW_RELOAD_COMMAND": "sh -c 'exit 3'"})
    assert result.returncode == 1 and "exit status 3" in result.stderr
    guard.survived()
    assert guard.bundle_path.read_bytes() == guard.old
    guard.recover(expect="installed")


def test_haproxy_reload_exits_0_but_does_not_take(guard_for, lab):
    guard = guard_for("HAProxy reload exits 0 but does not take")
    guard.establish()
    config = lab.haproxy_cfg.read_text()
    lab.haproxy_cfg.write_text(config + "    no-such-keyword\n")  # an operator's edit HAProxy will refuse
    poll("HAProxy's master back from the first install's reload", lab.master_answers, timeout=10)
    failed_before = lab.settled_reloads()[1]
    result = guard.run("--force")  # the lab's reload command: kill -USR2, which exits 0 whatever HAProxy does
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "served by reload" not in result.stdout and "reload not confirmed" in result.stdout
    assert "nothing tells whether HAProxy took the reload" in result.stderr
    # The fault happened: the master refused the reload, and its old worker serves the old certificate.
    poll("the master refusing the reload", lambda: lab.settled_reloads()[1] > failed_before, timeout=10)
    assert lab.served_certificate(NAME).serial_number == x509.load_pem_x509_certificate(guard.old).serial_number
    guard.survived()
    lab.haproxy_cfg.write_text(config)  # the operator's fix, and the reload it needs, serve the new one
    lab.reload_haproxy()
    guard.recover(expect="unchanged")


# Signals.

POINTS = ["before the order", "at the challenge", "during validation", "at finalize", "at the download",
          "during install"]
PROXY_POINTS = {"before the order": ("new-order", 1), "at the challenge": ("challenge", 1),
                "during validation": ("authorization", 2), "at finalize": ("finalize", 1),
                "at the download": ("certificate", 1)}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("point", POINTS)
def test_signal(guard_for, proxy, lab, signum, point):
    name = signal.Signals(signum).name
    guard = guard_for(f"{name} {point}", proxy)
    guard.establish()
    guard.forget_account()  # the order goes through its challenge and validation, where some signals are sent
    process: list[subprocess.Popen] = []
    signalled: list[float] = []

    def kill_and_wait() -> None:
        signalled.append(time.monotonic())
        process[0].send_signal(signum)
        process[0].wait(10)

    env = {}
    if point in PROXY_POINTS:
        at_step, nth = PROXY_POINTS[point]
        proxy.on_request = at(at_step, kill_and_wait, nth)  # the request goes on to pebble once the client is gone
    else:
        # The reload command is certrenew's child: it signals its parent mid-install.
        env["CERTRENEW_RELOAD_COMMAND"] = f"sh -c 'kill -{name[3:]} $PPID; sleep 5'"
    process.append(guard.start("--force", env=env))
    out, err = process[0].communicate(timeout=60)
    ended = time.monotonic()
    if point in PROXY_POINTS:  # the signal was sent where meant, and the run ended within the wait
        assert (proxy.on_request.ran, proxy.on_request.errors) == (1, []), err
    proxy.on_request = lambda method, path: None
    if signum == signal.SIGTERM:
        assert process[0].returncode == 143, err
        assert "SIGTERM" in err and "Traceback" not in err
        if signalled:
            assert ended - signalled[0] < 2.5
    else:
        assert process[0].returncode == -signal.SIGKILL
    guard.survived(killed=signum == signal.SIGKILL)
    if signum == signal.SIGTERM and point == "during install":  # an install cut short by a signal is rolled back
        assert guard.bundle_path.read_bytes() == guard.old
    orders = proxy.count("new-order")
    recovered = guard.recover()
    if point in ("at finalize", "at the download", "during install"):
        # What the CA finalized is downloaded or installed, not ordered again.
        assert "installed" in recovered.stdout and proxy.count("new-order") == orders


# Concurrent runs.

def test_two_concurrent_runs(guard_for, lab):
    guard = guard_for("two concurrent runs")
    guard.establish()
    runs = [guard.start("--force") for _ in range(2)]
    results = [run.communicate(timeout=60) + (run.returncode,) for run in runs]
    assert [code for _, _, code in results] == [0, 0], "\n\n".join(f"exit {code}:\n{out}{err}" for out, err, code in results)
    assert all("renewed" in out for out, _, _ in results)
    guard.survived()
    guard.recover(expect="unchanged")


def test_lock_held_names_the_holder_and_times_out(guard_for, lab):
    guard = guard_for("state dir locked by another run")
    guard.establish()
    with (lab.state_dir / "lock").open("r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.seek(0)
        held.truncate()
        held.write("4242\n")
        held.flush()
        started = time.monotonic()
        result = guard.run("--force", "--lock-timeout", "1")
        assert result.returncode == 1 and 1 <= time.monotonic() - started < 5
        waiting, gave_up = result.stderr.splitlines()  # said at once, then at the end
        assert "pid 4242" in waiting and "waiting up to 1 s" in waiting
        assert "pid 4242" in gave_up and "gave up after 1 s (--lock-timeout)" in gave_up
        assert guard.bundle_path.read_bytes() == guard.old
    guard.survived()
    guard.recover()


# The disk.

def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def can_mount(tmp_path: Path) -> bool:
    probe = tmp_path / "mount-probe"
    probe.mkdir()
    try:
        mount("-t", "tmpfs", "-o", "size=16k", "tmpfs", str(probe))
    except (subprocess.CalledProcessError, FileNotFoundError):
        return False
    subprocess.run(["umount", str(probe)], check=True)
    return True


@pytest.fixture
def mounts(tmp_path):
    """Mount helpers that are undone at teardown; the test is skipped without mount privileges."""
    if not can_mount(tmp_path):
        pytest.skip("mount is not permitted here (needs root with CAP_SYS_ADMIN)")
    mounted: list[Path] = []
    yield mounted
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_ssl_dir_read_only(guard_for, lab, mounts):
    guard = guard_for("ssl dir read-only")
    guard.establish()
    mount("--bind", str(lab.ssl_dir), str(lab.ssl_dir))
    mounts.append(lab.ssl_dir)
    mount("-o", "remount,bind,ro", str(lab.ssl_dir))
    result = guard.run("--force")
    assert result.returncode == 1 and "not writable" in result.stderr, result.stderr
    guard.survived()
    subprocess.run(["umount", str(lab.ssl_dir)], check=True)
    mounts.clear()
    guard.recover()


def test_ssl_dir_full(guard_for, lab, mounts, tmp_path):
    """A real ENOSPC: the ssl dir is a small tmpfs, filled up before the install."""
    guard = guard_for("ssl dir full (ENOSPC)")
    guard.establish()
    saved = tmp_path / "ssl-before"
    shutil.copytree(lab.ssl_dir, saved)
    mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(lab.ssl_dir))
    mounts.append(lab.ssl_dir)
    for entry in saved.iterdir():
        shutil.copy2(entry, lab.ssl_dir / entry.name)
    filler = lab.ssl_dir / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # ENOSPC: the tmpfs is full
        pass
    finally:
        os.close(fd)
    result = guard.run("--force")
    assert result.returncode == 1 and "No space left on device" in result.stderr, result.stderr
    assert guard.bundle_path.read_bytes() == guard.old
    guard.survived()
    filler.unlink()
    guard.recover(expect="installed")


def test_write_cut_part_way(guard_for, lab):
    """RLIMIT_FSIZE makes any write past 1 KiB fail with EFBIG after a partial write.

    That hits the pending bundle in the state dir (2.4 KiB) half-written; the order
    saved before finalizing (under 1 KiB) lets the next run download the certificate.
    """
    guard = guard_for("write cut part way (RLIMIT_FSIZE)")
    guard.establish()

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
    process = guard.start("--force", preexec_fn=limit)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1 and "File too large" in err, err
    assert guard.bundle_path.read_bytes() == guard.old
    guard.survived()
    guard.recover(expect="installed")


# The responder.

def test_responder_flood_does_not_block_validation(guard_for, proxy, lab):
    """At the challenge, 300 slow and 200 junk connections hit the responder and HAProxy; validation passes."""
    guard = guard_for("responder flood (300 slow + 200 junk connections)", proxy)
    guard.establish()
    guard.forget_account()  # the order goes through its challenge, where the flood comes
    held: list[socket.socket] = []
    junk_connected: list[int] = []
    junk_errors: list[BaseException] = []
    stop = threading.Event()

    def junk() -> None:
        try:
            for attempt in range(200):
                if stop.is_set():
                    return
                port, data = ((lab.backend_port, b"POST /.well-known/acme-challenge/x HTTP/1.1\r\n\r\n"),
                              (lab.http_port, b"GET /.well-known/acme-challenge/../../x HTTP/1.1\r\nHost: a\r\n\r\n"),
                              (lab.backend_port, os.urandom(300)))[attempt % 3]
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                        junk_connected.append(port)
                        sock.sendall(data)
                except (ConnectionResetError, BrokenPipeError):
                    pass  # the responder may close a junk connection before all of it is sent
                except ConnectionRefusedError:
                    return  # the run is over and its responder closed
        except BaseException as error:
            junk_errors.append(error)

    junk_thread = threading.Thread(target=junk, daemon=True)

    def flood() -> None:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", lab.backend_port), timeout=10)
            held.append(sock)
            sock.sendall(b"GET /.well-known/acme-challenge/")  # and then nothing: a slowloris
        junk_thread.start()
    proxy.on_request = at("challenge", flood)
    try:
        result = guard.run("--force")
    finally:
        stop.set()
        if junk_thread.is_alive():
            junk_thread.join(timeout=30)
        for sock in held:
            sock.close()
    # The fault really happened: the flood ran once, without error, and every connection was opened.
    assert proxy.on_request.ran == 1 and proxy.on_request.errors == []
    assert len(held) == 300 and junk_errors == [] and len(junk_connected) > 0
    assert result.returncode == 0, result.stderr
    guard.survived()
    guard.recover()


BURSTS = {
    # case: the open-files limit certrenew runs with (soft and hard), or None for the machine's
    "responder burst (2000 idle connections at once)": None,
    "responder burst under a 1024 open-files limit": 1024,
}


@pytest.mark.parametrize("case", BURSTS)
def test_a_burst_of_idle_connections_is_held_to_the_cap(guard_for, proxy, lab, open_files, case):
    """At the challenge, 2000 idle connections arrive as fast as they can; certrenew holds at most its cap of
    them, and validation, the CA, the state and HAProxy still get every file they need."""
    from certrenew.system.httpd import MAX_CONNECTIONS

    limit = BURSTS[case]
    guard = guard_for(case, proxy)
    guard.establish()
    guard.forget_account()  # the order goes through its challenge, where the burst comes
    held: list[socket.socket] = []
    pid: list[int] = []
    most = [0]

    def burst() -> None:
        for _ in range(min(2000, open_files - 300)):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", lab.backend_port))
            held.append(sock)
        for _ in range(10):  # while the responder works through the backlog
            most[0] = max(most[0], held_open(lab.backend_port, pid[0]))
            time.sleep(0.05)
    proxy.on_request = at("challenge", burst)
    preexec = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))) if limit else None
    process = guard.start("--force", preexec_fn=preexec)
    pid.append(process.pid)
    try:
        out, err = process.communicate(timeout=60)
    finally:
        for sock in held:
            sock.close()
    assert len(held) >= 1500
    assert process.returncode == 0, err
    assert 0 < most[0] <= MAX_CONNECTIONS + 1, most[0]
    guard.survived()
    guard.recover()
