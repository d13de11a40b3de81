"""`certrenew daemon` as a subprocess against the real lab: issues, renews, re-reads, stops, shares the lock."""

import contextlib
import fcntl
import functools
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from certrenew.pki.bundle import leaf_info
from certrenew.system.atomicfile import TEMP_PREFIX
from certrenew.system.limits import MAX_CONFIG
from tests.harness.container import as_image_user, read_image
from tests.harness.faultproxy import FaultProxy
from tests.harness.faultproxy import step as step_of
from tests.harness.lab import Lab, closed_by_peer, free_ports, tcp_accepts, terminate
from tests.harness.lab import poll as lab_poll
from tests.harness.unfit import COMPLAINTS, UNFIT, place

ONE = '[[certificate]]\nname = "alpha"\ndomains = ["alpha.example", "www.alpha.example"]\n'
TWO = ONE + '\n[[certificate]]\nname = "beta"\ndomains = ["beta.example"]\n'
WAIT = 60.0
"""Seconds any one awaited event may take on a loaded machine (an issuance takes about one)."""
POLL = 0.1


def serial_of(lab, name):
    path = lab.ssl_dir / f"{name}.pem"
    return leaf_info(path.read_bytes()).serial if path.exists() else None


poll = functools.partial(lab_poll, interval=POLL)


class Daemon:
    """A `certrenew daemon` subprocess with its log in a file (it runs longer than a pipe buffer lasts)."""

    def __init__(self, lab, argv, env=None, process=None):
        self.lab = lab
        self.log_path = lab.workdir / f"daemon-{len(list(lab.workdir.glob('daemon-*.log')))}.log"
        self.metrics_port = free_ports(1)[0]
        with self.log_path.open("w") as log:
            self.process = process(log) if process else lab.start_certrenew(
                "daemon", *argv, "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
                "--haproxy-socket", str(lab.admin_socket), env=env, stdout=log, stderr=log)

    @property
    def log(self):
        return self.log_path.read_text()

    def wait_log(self, text, timeout=WAIT):
        poll(f"{text!r} in the daemon's log", lambda: self.alive() and text in self.log, timeout)

    def alive(self):
        assert self.process.poll() is None, f"the daemon exited with {self.process.returncode}:\n{self.log}"
        return True

    def wait_served(self, name, sni, not_serial=None):
        """Wait until HAProxy serves a bundle of `name` other than `not_serial`; return its serial."""
        def new_serial():
            self.alive()
            serial = serial_of(self.lab, name)
            return serial if serial not in (None, not_serial) else None

        serial = poll(f"a new {name}", new_serial)
        self.lab.wait_served_serial(sni, serial)
        return serial

    def get(self, path):
        return requests.get(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5)

    def stop(self):
        """SIGTERM; return (exit status, seconds it took to exit)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        return code, time.monotonic() - started


@pytest.fixture
def start_daemon():
    started = []

    def start(lab, config, *args, env=None, process=None):
        daemon = Daemon(lab, ["--config", str(config), *args], env, process)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        terminate(daemon.process)


def write_config(lab, text):
    path = lab.workdir / "certrenew.toml"
    path.write_text(text)
    return path


def metric(response, name):
    return {sample.labels["name"]: sample.value for family in text_string_to_metric_families(response.text)
            for sample in family.samples if sample.name == name}


def test_issues_serves_reports_and_stops_cleanly(lab, start_daemon):
    daemon = start_daemon(lab, write_config(lab, TWO))
    serials = {"alpha": daemon.wait_served("alpha", "www.alpha.example"), "beta": daemon.wait_served("beta", "beta.example")}
    daemon.wait_log("next pass at")

    # Between passes: the responder's port is still open (HAProxy's check keeps the backend up), and it
    # answers no token, as no order is in flight.
    assert tcp_accepts(lab.backend_port)
    challenge = requests.get(f"http://{lab.listen}/.well-known/acme-challenge/abc", timeout=5,
                             headers={"Host": "alpha.example"})
    assert challenge.status_code == 404
    health = daemon.get("/healthz")
    assert health.status_code == 200 and health.json() == {"healthy": True, "certificates": 2, "unhealthy": [],
                                                           "failing_passes": 0, "store": {"reachable": True}}
    expiry = metric(daemon.get("/metrics"), "certrenew_certificate_expiration_timestamp_seconds")
    assert set(expiry) == {"alpha", "beta"}
    for name, serial in serials.items():
        assert expiry[name] == leaf_info((lab.ssl_dir / f"{name}.pem").read_bytes()).not_after.timestamp()
        assert serial_of(lab, name) == serial

    code, took = daemon.stop()
    assert code == 0 and took < 2.0, daemon.log
    assert "stopping: interrupted by SIGTERM" in daemon.log and "Traceback" not in daemon.log
    assert not tcp_accepts(lab.backend_port) and not tcp_accepts(daemon.metrics_port)
    assert not [path for path in (*lab.ssl_dir.rglob("*"), *lab.state_dir.rglob("*"))
                if path.name.startswith(TEMP_PREFIX)]


class HugeHeads:
    """Clients sending requests of 99 headers of 65 KB each to `address`, in `threads` threads, one connection
    after another until stopped: what took the stdlib's server to 600 MB. Each ends its head only when all
    have sent theirs, so a server that keeps what it reads holds all of them at once. Counts what it did."""

    HEADER = b"a" * 65000

    def __init__(self, address, threads=16):
        self.address = address
        self.stop = threading.Event()
        self.sent: list[int] = []
        """Bytes of headers the kernel took on each connection (before the server stopped reading, say)."""
        self._lock = threading.Lock()
        self._together = threading.Barrier(threads, timeout=10)
        self.threads = [threading.Thread(target=self._send, daemon=True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def _send(self):
        while not self.stop.is_set():
            sent = 0
            try:
                with socket.create_connection(self.address, timeout=5) as client:
                    try:
                        client.sendall(b"GET /metrics HTTP/1.1\r\nHost: flood\r\n")
                        for index in range(99):
                            client.sendall(b"X-%d: %s\r\n" % (index, self.HEADER))
                            sent += len(self.HEADER)
                    finally:
                        with contextlib.suppress(threading.BrokenBarrierError):
                            self._together.wait()
                    client.sendall(b"\r\n")
                    client.recv(1)
            except OSError:  # refused, reset, or no answer: the server's choice
                pass
            with self._lock:
                self.sent.append(sent)

    def join(self):
        self.stop.set()
        self._together.abort()
        for thread in self.threads:
            thread.join(30)


def peak_rss(pid):
    """The process's peak resident memory so far (VmHWM), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB$", status, re.M)[1]) * 1024


def test_a_flood_of_huge_heads_and_idle_clients_leaves_memory_bounded_and_health_answered(lab, start_daemon):
    daemon = start_daemon(lab, write_config(lab, ONE))
    daemon.wait_served("alpha", "alpha.example")
    daemon.wait_log("next pass at")
    address = ("127.0.0.1", daemon.metrics_port)
    before = peak_rss(daemon.process.pid)

    flood = HugeHeads(address)
    idle = []
    try:
        poll("the flood under way", lambda: len(flood.sent) >= 48)  # three times the stdlib server's 16 threads
        idle = [socket.create_connection(address, timeout=5) for _ in range(100)]
        for client in idle:
            client.sendall(b"G")  # and nothing more
        try:
            health: requests.Response | Exception = daemon.get("/healthz")
        except requests.RequestException as error:
            health = error
        during = all(thread.is_alive() for thread in flood.threads)
        still_open = sum(not closed_by_peer(client) for client in idle)
    finally:
        flood.join()
        for client in idle:
            client.close()
    grown = peak_rss(daemon.process.pid) - before

    assert len(flood.sent) >= 48 and sum(flood.sent) > 48 * 99 * len(HugeHeads.HEADER), "the flood was sent"
    assert grown < 32 * 1024 ** 2, f"the flood took the daemon's peak memory {grown / 1024 ** 2:.0f} MB higher"
    assert isinstance(health, requests.Response) and health.status_code == 200, health
    assert during and still_open == len(idle), "answered during the flood, not after it"
    assert daemon.get("/healthz").status_code == 200
    assert daemon.stop()[0] == 0


def test_sigterm_mid_order_exits_at_once_and_leaves_it_to_resume(lab, start_daemon):
    daemon = start_daemon(lab, write_config(lab, ONE), "-v")
    daemon.wait_log("alpha: issuing")  # the pass has started ordering
    code, took = daemon.stop()
    assert code == 0 and took < 2.0, daemon.log
    assert not tcp_accepts(lab.backend_port)
    again = lab.certrenew("run", "--config", str(lab.workdir / "certrenew.toml"))
    assert again.returncode == 0 and "alpha: " in again.stdout, again.stderr  # issued, or installed if it got far
    lab.wait_served_serial("alpha.example", serial_of(lab, "alpha"))


@pytest.mark.haproxy
def test_thirty_second_certificates_are_renewed_again_and_again(tmp_path, start_daemon):
    with Lab(tmp_path / "lab", certificate_validity=30) as lab:
        daemon = start_daemon(lab, write_config(lab, TWO))
        served = {"alpha": [daemon.wait_served("alpha", "alpha.example")], "beta": [daemon.wait_served("beta", "beta.example")]}
        for _ in range(2):  # each renewed at half its 30 s: a new serial served every 15 s or so
            for name, sni in (("alpha", "www.alpha.example"), ("beta", "beta.example")):
                served[name].append(daemon.wait_served(name, sni, not_serial=served[name][-1]))
        assert all(len(set(serials)) == 3 for serials in served.values()), served
        poll("six hot updates logged", lambda: daemon.log.count("served by hot update") >= 6)  # none by reload
        assert daemon.process.poll() is None  # no restart
        assert daemon.stop()[0] == 0


def test_sighup_issues_a_new_certificate_and_a_broken_file_changes_nothing(lab, start_daemon):
    config = write_config(lab, ONE)
    deployed = lab.workdir / "deployed"
    hook = lab.workdir / "deploy-hook"
    hook.write_text(f'#!/bin/sh\necho "$CERTRENEW_NAME" >> {deployed}\n')
    hook.chmod(0o755)
    daemon = start_daemon(lab, config, "--deploy-hook", str(hook))
    alpha = daemon.wait_served("alpha", "alpha.example")
    daemon.wait_log("next pass at")
    assert deployed.read_text() == "alpha\n"  # the hooks run per pass, as in `run`

    config.write_text(TWO)
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_served("beta", "beta.example", not_serial=None)
    assert "SIGHUP: config re-read, 2 certificate(s)" in daemon.log
    assert serial_of(lab, "alpha") == alpha  # not reissued
    poll("the deploy hook for beta", lambda: deployed.read_text() == "alpha\nbeta\n")

    config.write_text(TWO + "[[certificate]]\ndomains = [\n")
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_log("SIGHUP: config refused, carrying on with the previous one: ")
    refused = [line for line in daemon.log.splitlines() if "config refused" in line]
    assert len(refused) == 1 and str(config) in refused[0]
    assert tcp_accepts(lab.backend_port) and daemon.get("/healthz").json()["certificates"] == 2
    lab.wait_served_serial("beta.example", serial_of(lab, "beta"))
    assert daemon.stop()[0] == 0


def test_sighup_with_a_config_it_cannot_read_keeps_the_old_one_whatever_stands_in_its_place(lab, start_daemon):
    """TOML nested too deeply killed the daemon (RecursionError); a FIFO blocked the SIGHUP for ever while
    /healthz said healthy. Each is one line now, the daemon carrying on with the config it had."""
    config = write_config(lab, ONE)
    daemon = start_daemon(lab, config)
    daemon.wait_served("alpha", "alpha.example")
    daemon.wait_log("next pass at")
    for count, what in enumerate(["deep", *UNFIT], 1):
        if config.is_dir():
            config.rmdir()
        else:
            config.unlink()
        if what == "deep":
            config.write_text(ONE + "x = " + "[" * 500 + "]" * 500 + "\n")
        else:
            place(config, what, MAX_CONFIG)
        daemon.process.send_signal(signal.SIGHUP)
        poll(f"the {what} config refused", lambda: daemon.alive() and daemon.log.count("config refused") == count)
        refused = [line for line in daemon.log.splitlines() if "config refused" in line][-1]
        assert str(config) in refused and (COMPLAINTS.get(what) or "nested more than") in refused, refused
        assert daemon.get("/healthz").json()["certificates"] == 1
    assert "Traceback" not in daemon.log

    config.unlink()
    config.write_text(TWO)
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_log("SIGHUP: config re-read, 2 certificate(s)")
    assert daemon.stop()[0] == 0


def test_a_run_by_hand_beside_the_daemon_is_serialised_by_the_lock(lab, start_daemon):
    config = write_config(lab, ONE)
    daemon = start_daemon(lab, config, "-v")
    daemon.wait_served("alpha", "alpha.example")
    daemon.wait_log("next pass at")
    status = lab.certrenew("status", "--config", str(config))
    assert status.returncode == 0 and "alpha" in status.stdout, status.stderr

    # Hold the lock, then ask the daemon for the new certificate: its pass waits. A run by hand
    # started once the daemon holds the lock again waits too, then finds the certificate issued.
    config.write_text(TWO)
    with open(lab.state_dir / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_log("SIGHUP: config re-read")
        time.sleep(1.0)  # a moment for the daemon to get past the lock, if it could (it must not)
        assert serial_of(lab, "beta") is None
    daemon.wait_log("beta: issuing")  # its pass has the lock now
    by_hand = lab.start_certrenew("run", "--config", str(config))
    out, err = by_hand.communicate(timeout=WAIT)
    assert by_hand.returncode == 0, err
    beta = daemon.wait_served("beta", "beta.example")
    assert "beta: unchanged" in out and daemon.log.count("beta: issued") == 1, (out, daemon.log)
    assert serial_of(lab, "beta") == beta

    # A run by hand that must order itself finds the responder's port held by the daemon: it
    # publishes its answers in the state dir, the daemon's responder answers the CA for it.
    forced = lab.certrenew("run", "--config", str(config), "--force", "--haproxy-socket", str(lab.admin_socket))
    assert forced.returncode == 0, forced.stderr
    assert "held by a certrenew serving this state dir" in forced.stderr and "beta: renewed" in forced.stdout
    renewed = serial_of(lab, "beta")
    assert renewed != beta and "served by hot update" in forced.stdout
    lab.wait_served_serial("beta.example", renewed)
    assert list((lab.state_dir / "challenges").iterdir()) == []  # every answer withdrawn
    assert tcp_accepts(lab.backend_port) and daemon.log.count("beta: issued") == 1
    # `certrenew check` beside it proves the path to the daemon's responder the same way.
    check = lab.certrenew("check", "--config", str(config), "--haproxy-socket", str(lab.admin_socket))
    assert "FAIL" not in check.stdout and "reached certrenew's responder" in check.stdout, check.stdout
    assert daemon.stop()[0] == 0


def test_a_record_that_does_not_hold_together_fails_its_certificate_alone_everywhere(lab, start_daemon):
    config = write_config(lab, TWO)
    assert lab.certrenew("run", "--config", str(config)).returncode == 0
    meta = lab.state_dir / "certificates" / "beta" / "meta.json"
    meta.write_text(meta.read_text().replace('"not_before": "', '"not_before": null, "was": "'))  # parseable JSON
    config.write_text(TWO + '\n[[certificate]]\nname = "gamma"\ndomains = ["gamma.example"]\n')
    reason = f"corrupt state file {meta}: not_before and not_after go together, but only one of them is set"

    run = lab.certrenew("run", "--config", str(config))
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "alpha: unchanged" in run.stdout and "gamma: issued" in run.stdout, run.stdout
    assert f"beta: failed: {reason}" in run.stderr
    status = lab.certrenew("status", "--config", str(config), "--json")
    rows = {row["name"]: row for row in json.loads(status.stdout)["certificates"]}
    assert status.returncode == 1 and "Traceback" not in status.stderr, status.stderr
    assert {name: row["state"] for name, row in rows.items()} == {"alpha": "ok", "beta": "failing", "gamma": "ok"}
    assert rows["beta"]["last_result"].startswith(f"failed: {reason}")

    daemon = start_daemon(lab, config)
    daemon.wait_log("pass done: 3 certificates: 2 unchanged, 1 failed")
    health = daemon.get("/healthz")
    assert health.status_code == 503 and health.json()["unhealthy"] == ["beta"]
    metrics = daemon.get("/metrics")
    assert metrics.status_code == 200
    assert set(metric(metrics, "certrenew_certificate_expiration_timestamp_seconds")) == {"alpha", "gamma"}
    assert metric(metrics, "certrenew_certificate_ready") == {"alpha": 1.0, "beta": 0.0, "gamma": 1.0}
    assert daemon.stop()[0] == 0 and "Traceback" not in daemon.log


def test_a_daemon_started_while_a_run_holds_the_port_waits_for_it(lab, start_daemon):
    import socket

    host, port = lab.listen.rsplit(":", 1)
    holder = socket.create_server((host, int(port)))  # as a run by hand's responder would, mid-order
    try:
        daemon = start_daemon(lab, write_config(lab, ONE), "--lock-timeout", "60")
        daemon.wait_log("waiting up to 60 s for it to be free")
        assert serial_of(lab, "alpha") is None
    finally:
        holder.close()
    daemon.wait_served("alpha", "alpha.example")
    assert tcp_accepts(lab.backend_port) and daemon.stop()[0] == 0


@pytest.mark.haproxy
def test_on_the_shipped_unix_socket_a_run_beside_the_daemon_borrows_its_responder(tmp_path, start_daemon):
    with Lab(tmp_path / "lab", unix_socket=True) as lab:
        socket = Path(lab.listen)
        config = write_config(lab, ONE)
        daemon = start_daemon(lab, config)
        alpha = daemon.wait_served("alpha", "alpha.example")
        assert socket.is_socket()
        forced = lab.certrenew("run", "--config", str(config), "--force", "--haproxy-socket", str(lab.admin_socket))
        assert forced.returncode == 0, forced.stderr
        assert f"responder: {socket} is held by a certrenew serving this state dir" in forced.stderr
        renewed = serial_of(lab, "alpha")
        assert renewed != alpha and "alpha: renewed" in forced.stdout
        lab.wait_served_serial("alpha.example", renewed)
        assert socket.is_socket() and daemon.log.count("alpha: issued") == 1  # the daemon's, still
        assert daemon.stop()[0] == 0
        assert not socket.exists()


@pytest.mark.haproxy
@pytest.mark.parametrize("unix_socket", [False, True], ids=["tcp", "unix-socket"])
def test_a_daemon_stopping_while_the_ca_validates_a_run_that_borrowed_its_responder_serves_it_first(
        tmp_path, start_daemon, unix_socket):
    """The daemon is told to stop (a restart, say) once the run has posted its challenge to the CA's proxy,
    before pebble validates: it keeps answering until the run's answers are withdrawn, then exits."""
    with Lab(tmp_path / "lab", unix_socket=unix_socket) as lab, FaultProxy(lab) as proxy:
        config = write_config(lab, ONE)
        daemon = start_daemon(lab, config)
        alpha = daemon.wait_served("alpha", "alpha.example")
        stopping = []

        def stop_the_daemon(method, path):
            if method == "POST" and step_of(path) == "challenge" and not stopping:
                daemon.process.send_signal(signal.SIGTERM)
                # Until the daemon has exited, or says it waits for the run: without the wait, it is gone.
                stopping.append(poll("the daemon stopping", lambda: daemon.process.poll() is not None
                                     or "a run borrowed" in daemon.log))
            return None

        proxy.on_request = stop_the_daemon
        # Through the proxy: another directory, so another account, whose order pebble validates afresh.
        forced = lab.certrenew("run", "--config", str(config), "--force", "--haproxy-socket", str(lab.admin_socket),
                               env=proxy.env)
        assert stopping, forced.stderr  # the fault happened
        assert forced.returncode == 0, forced.stderr
        assert f"responder: {lab.listen} is held by a certrenew serving this state dir" in forced.stderr
        renewed = serial_of(lab, "alpha")
        assert renewed != alpha and "alpha: renewed" in forced.stdout
        lab.wait_served_serial("alpha.example", renewed)
        code, took = daemon.stop()  # SIGTERM again: it has exited, or exits, once the run's answers are gone
        assert code == 0 and took < 10, daemon.log
        assert f"responder: a run borrowed {lab.listen}: serving its challenges" in daemon.log
        assert "answers still published" not in daemon.log


def test_the_log_can_be_json(lab, start_daemon):
    daemon = start_daemon(lab, write_config(lab, ONE), "--log-format", "json")
    daemon.wait_served("alpha", "alpha.example")
    daemon.wait_log("next pass at")
    lines = [json.loads(line) for line in daemon.log.splitlines()]
    assert all({"ts", "level", "message", "logger"} <= line.keys() for line in lines)
    (issued,) = [line for line in lines if line["message"].startswith("alpha: issued")]
    assert issued["name"] == "alpha" and issued["level"] == "info"
    assert daemon.stop()[0] == 0


@pytest.mark.haproxy
@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run a command as the image's user")
def test_the_daemon_runs_as_the_image_runs_it(start_daemon, site_for_anyone):
    """The image's entrypoint and command, its environment and user (10001), the volumes as directories
    owned by that user; the deployment's settings (where the CA and HAProxy are) by CERTRENEW_* as compose
    would set them, and the metrics address moved to a free loopback port by CERTRENEW_METRICS_LISTEN."""
    image = read_image()
    with tempfile.TemporaryDirectory() as top:  # not pytest's tmp_path: its parents are closed to other users
        Path(top).chmod(0o755)
        with Lab(Path(top) / "lab") as lab:
            for directory in (lab.state_dir, lab.ssl_dir, *lab.ssl_dir.iterdir(), lab.admin_socket):
                os.chown(directory, image.uid, image.gid)
            volumes = {"/var/lib/certrenew": lab.state_dir, "/etc/haproxy/ssl": lab.ssl_dir}
            config = write_config(lab, ONE)
            metrics_port = free_ports(1)[0]
            command, env = as_image_user(image, image.argv, volumes, site_for_anyone)
            deployment = {key: value for key, value in lab.certrenew_env.items()
                          if key not in ("CERTRENEW_STATE_DIR", "CERTRENEW_SSL_DIR", "CERTRENEW_RELOAD_COMMAND")}
            env.update(deployment, CERTRENEW_CONFIG=str(config), CERTRENEW_HAPROXY_SOCKET=str(lab.admin_socket),
                       CERTRENEW_METRICS_LISTEN=f"127.0.0.1:{metrics_port}")

            def process(log):
                return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

            daemon = start_daemon(lab, config, process=process)
            daemon.metrics_port = metrics_port
            daemon.wait_served("alpha", "www.alpha.example")
            assert (lab.ssl_dir / "alpha.pem").stat().st_uid == image.uid
            assert daemon.get("/healthz").status_code == 200
            assert daemon.stop()[0] == 0
