"""A real etcd cluster on loopback (3 members by default), for the etcd backend's tests and the bench.

Each member is a real `etcd` process with its own data dir, client and peer ports; elections are
fast (50 ms heartbeats, 500 ms election timeout) so a test that kills the leader waits about a
second for the next. A member can be SIGKILLed, SIGSTOPped and restarted on its data dir.
Run `python -m tests.harness.etcd [workdir]` to keep one up for exploring by hand.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
import trustme

from certrenew.state.etcd_client import Tls
from tests.harness.lab import LOOPBACK, POLL_INTERVAL, START_TIMEOUT, STOP_TIMEOUT, LabError, free_ports

HEARTBEAT_MS = 50
ELECTION_MS = 500


class EtcdCluster:
    """`size` etcd members on loopback under `workdir`, running between `start()` and `stop()`."""

    def __init__(self, workdir: Path, size: int = 3, extra: tuple[str, ...] = (), tls: bool = False) -> None:
        self.workdir = workdir
        self.size = size
        self.extra = extra
        """More flags for every member (e.g. `--auth-token` settings)."""
        self.tls: Tls | None = None
        """With `tls`, clients must connect over TLS with a client certificate of the cluster's own CA."""
        if tls:
            ca = trustme.CA()
            workdir.mkdir(parents=True, exist_ok=True)
            ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
            ca.issue_cert(LOOPBACK).private_key_and_cert_chain_pem.write_to_path(str(workdir / "server.pem"))
            ca.issue_cert("certrenew-node").private_key_and_cert_chain_pem.write_to_path(str(workdir / "client.pem"))
            self.tls = Tls(ca=workdir / "ca.pem", cert=workdir / "client.pem")
        self.scheme = "https" if tls else "http"
        ports = free_ports(2 * size)
        self.client_ports, self.peer_ports = ports[:size], ports[size:]
        self.names = [f"m{i}" for i in range(size)]
        self.processes: list[subprocess.Popen | None] = [None] * size

    @property
    def endpoints(self) -> list[str]:
        return [f"{LOOPBACK}:{port}" for port in self.client_ports]

    def url(self, prefix: str) -> str:
        return f"etcd://{','.join(self.endpoints)}/{prefix}"

    def _command(self, i: int) -> list[str]:
        peers = ",".join(f"{name}=http://{LOOPBACK}:{port}" for name, port in zip(self.names, self.peer_ports))
        client, peer = f"{self.scheme}://{LOOPBACK}:{self.client_ports[i]}", f"http://{LOOPBACK}:{self.peer_ports[i]}"
        tls = ["--cert-file", str(self.workdir / "server.pem"), "--key-file", str(self.workdir / "server.pem"),
               "--client-cert-auth", "--trusted-ca-file", str(self.workdir / "ca.pem")] if self.tls else []
        return ["etcd", "--name", self.names[i], "--data-dir", str(self.workdir / self.names[i]),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", peers, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"certrenew-test-{self.peer_ports[0]}",
                "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS),
                "--logger", "zap", "--log-outputs", str(self.workdir / f"{self.names[i]}.log"), *tls, *self.extra]

    def etcdctl(self, *args: str) -> str:
        """Run `etcdctl` against the cluster (as root once auth is on); its output."""
        tls = [f"--cacert={self.tls.ca}", f"--cert={self.tls.cert}", f"--key={self.tls.cert}"] if self.tls else []
        done = subprocess.run(["etcdctl", "--endpoints", ",".join(self.endpoints), *tls, *args],
                              capture_output=True, text=True, timeout=STOP_TIMEOUT, env={"ETCDCTL_API": "3"})
        if done.returncode:
            raise LabError(f"etcdctl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def enable_auth(self, prefix: str, user: str = "node", password: str = "nodepw") -> None:
        """Auth on, as docs/fleet.md sets it up: a root user, and `user` whose role may read and write `prefix` only."""
        self.etcdctl("user", "add", "root:rootpw")
        self.etcdctl("role", "add", "certrenew")
        self.etcdctl("role", "grant-permission", "certrenew", "--prefix=true", "readwrite", prefix)
        self.etcdctl("user", "add", f"{user}:{password}")
        self.etcdctl("user", "grant-role", user, "certrenew")
        self.etcdctl("auth", "enable")

    def start(self) -> EtcdCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for i in range(self.size):
            self.restart(i, wait=False)
        self.wait_healthy()
        return self

    def restart(self, i: int, *, wait: bool = True) -> None:
        """Start member `i` (again, on its data dir after a kill)."""
        process = self.processes[i]
        if process is not None and process.poll() is None:
            raise LabError(f"etcd member {self.names[i]} still runs")
        with open(self.workdir / f"{self.names[i]}.out", "ab") as out:
            self.processes[i] = subprocess.Popen(self._command(i), stdout=out, stderr=subprocess.STDOUT)
        if wait:
            self.wait_healthy()

    def _ask(self, i: int, path: str) -> dict | None:
        """Member `i`'s answer at `path` (a GET for /health, else an empty POST), or None."""
        tls = {"verify": str(self.tls.ca), "cert": str(self.tls.cert)} if self.tls else {}
        url = f"{self.scheme}://{self.endpoints[i]}{path}"
        try:
            answer = requests.get(url, timeout=1, **tls) if path == "/health" else \
                requests.post(url, json={}, timeout=1, **tls)
            return answer.json()
        except (requests.RequestException, ValueError):
            return None

    def running(self) -> list[int]:
        return [i for i, process in enumerate(self.processes) if process is not None and process.poll() is None]

    def wait_healthy(self) -> None:
        """Until every running member answers /health and they agree on a leader."""
        end = time.monotonic() + START_TIMEOUT
        while time.monotonic() < end:
            if all((self._ask(i, "/health") or {}).get("health") == "true" for i in self.running()):
                return
            time.sleep(POLL_INTERVAL)
        logs = "\n".join((self.workdir / f"{name}.out").read_text()[-1000:] for name in self.names)
        raise LabError(f"etcd cluster not healthy within {START_TIMEOUT} s:\n{logs}")

    def leader(self) -> int:
        """The index of the member that leads now (waiting for an election if need be)."""
        end = time.monotonic() + START_TIMEOUT
        while time.monotonic() < end:
            for i in self.running():
                status = self._ask(i, "/v3/maintenance/status")
                if status and status.get("leader") and status["leader"] == status["header"]["member_id"]:
                    return i
            time.sleep(POLL_INTERVAL)
        raise LabError("no etcd leader")

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        process = self.processes[i]
        assert process is not None
        process.send_signal(sig)
        if sig == signal.SIGKILL:
            process.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.terminate()
        for process in self.processes:
            if process is not None:
                try:
                    process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Gateway:
    """An HTTP proxy in front of one etcd member that counts the requests to each path, and lets
    the first `lose` transactions through to etcd but then drops the connection instead of
    answering: a write with an ambiguous outcome, as when a leader dies between applying a write
    and answering it."""

    def __init__(self, upstream: str, lose: int = 0) -> None:
        self.lost = 0
        self.calls: Counter[str] = Counter()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                gateway.calls[self.path] += 1
                answer = requests.post(f"http://{upstream}{self.path}", data=body, timeout=5,
                                       headers={k: v for k, v in self.headers.items() if k == "Authorization"})
                if self.path == "/v3/kv/txn" and gateway.lost < lose:
                    gateway.lost += 1
                    self.close_connection = True
                    return
                self.send_response(answer.status_code)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.endpoint = f"{LOOPBACK}:{self._server.server_address[1]}"

    def __enter__(self) -> Gateway:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


if __name__ == "__main__":
    import tempfile

    with EtcdCluster(Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="etcd-"))) as cluster:
        print(f"etcd cluster up: {cluster.url('certrenew')} (Ctrl-C stops it)")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
