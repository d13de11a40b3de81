"""A lock per certificate, with real pebble, BIND, HAProxy and `certrenew run` processes on one state dir:
runs on different certificates go on side by side, and a run whose lock was taken over cannot write."""

import os
import signal
import time
from pathlib import Path

import pytest

from certrenew.pki.bundle import leaf_info
from certrenew.state.store import FileStore
from tests.harness.bind import ZONE, Bind
from tests.harness.lab import Lab

pytestmark = pytest.mark.dns_at_bind

HOOK = Path(__file__).resolve().parents[1] / "harness" / "nsupdate-hook"
SLOW, QUICK = f"slow.{ZONE}", f"www.{ZONE}"
HOOK_SLEEP = 5


def slow_config(lab: Lab, bind: Bind) -> Path:
    """Certificate `slow` over DNS-01 through a hook that marks when it adds a record, then sleeps."""
    hook = lab.workdir / "slow-hook"
    hook.write_text(f"""#!/bin/sh
if [ "$4" = add ]; then touch {lab.workdir / 'in-hook'}; sleep {HOOK_SLEEP}; touch {lab.workdir / 'hook-done'}; fi
exec {HOOK} "$@"
""")
    hook.chmod(0o755)
    config = lab.workdir / "slow.toml"
    config.write_text(f"""
[[certificate]]
name = "slow"
domains = ["{SLOW}"]
challenge = "dns-01"
dns_server = "{bind.address}"
dns_hook = "{hook} 127.0.0.1 {bind.port} {bind.key_file}"
dns_propagation_timeout = 10
""")
    return config


def wait_for(path: Path, process, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def serial_in(lab: Lab, name: str) -> str:
    return leaf_info((lab.ssl_dir / f"{name}.pem").read_bytes()).serial


def test_a_run_on_another_certificate_is_served_while_the_first_run_still_waits_for_its_dns(lab, bind):
    quick = lab.workdir / "quick.toml"
    quick.write_text(f'[[certificate]]\nname = "quick"\ndomains = ["{QUICK}"]\n')
    assert lab.certrenew("run", "--config", str(quick)).returncode == 0  # the account exists: both only log in

    slow = lab.start_certrenew("run", "--config", str(slow_config(lab, bind)))
    try:
        wait_for(lab.workdir / "in-hook", slow)
        started = time.monotonic()
        forced = lab.certrenew("run", "--config", str(quick), "--force")
        assert forced.returncode == 0 and "quick: renewed" in forced.stdout, forced.stderr
        lab.wait_served_serial(QUICK, serial_in(lab, "quick"), interval=0.01)  # a reload: its worker comes soon
        took = time.monotonic() - started
        # The first run was still in its hook's sleep: it held nothing the second needed.
        assert slow.poll() is None and not (lab.workdir / "hook-done").exists()
        assert took < 2, f"the second run took {took:.1f} s"
        out, err = slow.communicate(timeout=120)
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.communicate()
    assert slow.returncode == 0 and "slow: issued" in out, err
    lab.wait_served_serial(SLOW, serial_in(lab, "slow"))


def test_a_run_paused_past_its_lease_cannot_write_over_the_run_that_took_the_certificate_over(lab, bind):
    config, ttl = slow_config(lab, bind), ["--lock-ttl", "1"]
    late = lab.start_certrenew("run", "--config", str(config), *ttl)
    try:
        wait_for(lab.workdir / "in-hook", late)
        os.kill(late.pid, signal.SIGSTOP)  # paused while it holds the certificate's lock
        time.sleep(2)  # past its lease
        (lab.workdir / "in-hook").unlink()
        successor = lab.certrenew("run", "--config", str(config), *ttl)
        assert successor.returncode == 0 and "slow: issued" in successor.stdout, successor.stderr
        issued = serial_in(lab, "slow")
        assert late.poll() is None  # really still there, paused, all along
    finally:
        os.kill(late.pid, signal.SIGCONT)
    out, err = late.communicate(timeout=120)
    assert late.returncode == 1 and "Traceback" not in err, (out, err)
    assert "slow: the lock on certificates/slow (token 1) is no longer ours" in err, err  # refused, and said
    store = FileStore(lab.state_dir)
    assert store.load_record("slow").serial == issued and not store.unfinished("slow")
    assert store.load_record("slow").failures == 0  # the late run's failure was not recorded either
    assert serial_in(lab, "slow") == issued and leaf_info(store.load_bundle("slow")).serial == issued
    lab.wait_served_serial(SLOW, issued)
