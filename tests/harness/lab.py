"""A throwaway ACME world on loopback: a real CA (pebble) and a real HAProxy.

HAProxy runs the shipped haproxy/haproxy.cfg with only its addresses and paths
swapped for loopback ones, so every HTTP-01 validation pebble makes really goes
through the production ACL to certrenew's responder. Integration tests,
scripts/demo and the benchmark all drive certrenew against this lab.

Run `python -m tests.harness.lab [workdir]` to keep one up for exploring by hand.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import random
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests
import trustme
from cryptography import x509

REPO_ROOT = Path(__file__).resolve().parents[2]

from certrenew.pki.placeholder import write_placeholder  # noqa: E402

SHIPPED_HAPROXY_CFG = REPO_ROOT / "haproxy" / "haproxy.cfg"
SHIPPED_SOCKET = "certrenew/http-01.sock"
"""Where the shipped haproxy.cfg finds the responder, inside HAProxy's chroot."""
SHIPPED_TLS_ALPN = REPO_ROOT / "haproxy" / "tls-alpn-01.cfg"
SHIPPED_TLS_ALPN_SOCKET = "certrenew/tls-alpn-01.sock"
"""Where the shipped tls-alpn-01.cfg finds the TLS-ALPN-01 responder, inside HAProxy's chroot."""
LOOPBACK = "127.0.0.1"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
FRAMES_SHOWN = 6
"""Innermost frames of each thread a hung certrenew run's report shows: where it waits, and for what."""
POLL_INTERVAL = 0.1
START_POLL = 0.01
"""Seconds between looks at a process starting: a lab starts for every integration test, twice a suite."""
PORT_ATTEMPTS = 3
"""How many sets of fresh ports the lab tries when another process took one between
`free_ports` and the bind: a race, not a fault of the lab's processes."""


class LabError(RuntimeError):
    """A lab process failed to start, reload or answer; the message carries its log tail."""


class PortTaken(LabError):
    """A lab process exited at start because another process had bound its port."""


def _below_ephemeral_range() -> range:
    """Ports the kernel never hands out as the local end of an outgoing connection.

    A port picked by binding to 0 comes from the ephemeral range, and in a busy test
    run some client connection may take it before the lab's server binds it.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(10000, max(low, 10001))


def _bindable(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _shuffled_forever(ports: range) -> Iterator[int]:
    """Every port of `ports` once, in a random order, then again in the same order."""
    return itertools.cycle(random.sample(ports, len(ports)))


_PORTS = _shuffled_forever(_below_ephemeral_range())
"""Where free_ports takes its next candidate. A port free a moment ago may still be a lab's: one it holds
unbound, as the responder's port between runs. Taking each port once before any again keeps a later test
from being handed it."""


def free_ports(count: int) -> list[int]:
    """Return `count` distinct loopback ports, free for TCP (the first also for UDP) a moment ago, and not
    handed out by an earlier call (until all others have been).

    The first is for challtestsrv's DNS, which serves both protocols.
    """
    ports: list[int] = []
    for port in itertools.islice(_PORTS, 1000):
        if port in ports or not _bindable(port, socket.SOCK_STREAM):
            continue
        if not ports and not _bindable(port, socket.SOCK_DGRAM):
            continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise LabError(f"could not find {count} free loopback ports")


def render_haproxy_config(shipped: str, replacements: list[tuple[str, str]]) -> str:
    """Apply each (old, new) replacement to `shipped`, each of which must match exactly once.

    Failing on a missing match keeps the lab honest: if the shipped config
    changes shape, the lab stops rather than quietly testing something else.
    """
    for old, new in replacements:
        count = shipped.count(old)
        if count != 1:
            raise LabError(f"expected {old!r} once in the shipped haproxy.cfg, found it {count} times")
        shipped = shipped.replace(old, new)
    return shipped


def production_replacements(ssl_dir: Path, admin_socket: Path) -> list[tuple[str, str]]:
    """The substitutions that move the shipped config's certificate dir and admin socket into a work dir."""
    return [
        ("crt /etc/haproxy/ssl/\n", f"crt {ssl_dir}/\n"),
        ("stats socket /run/haproxy/admin.sock ", f"stats socket {admin_socket} "),
    ]


def fleet_address(index: int) -> str:
    """Where fleet node `index` (1, 2, 3...) listens: Linux answers on all of 127.0.0.0/8, so each node binds
    an address of its own on the lab's ports, and pebble validates on whichever one the name resolves to."""
    return f"127.0.0.{index}"


def with_lines(config: str, global_lines: Sequence[str] = (), frontend_lines: Sequence[str] = ()) -> str:
    """A rendered haproxy.cfg with `global_lines` added to its global section, and `frontend_lines` first in
    its port-80 frontend (before its ACME ACL, which sends challenges to the responder)."""
    acl = "    acl letsencrypt-request path_beg"
    return render_haproxy_config(config, [
        ("\nglobal\n", "\nglobal\n" + "".join(f"    {line}\n" for line in global_lines)),
        (acl, "".join(f"    {line}\n" for line in frontend_lines) + acl),
    ])


def check_haproxy_config(path: Path) -> None:
    """Run `haproxy -c` on `path`; raise with HAProxy's own words when it is rejected, or warns that a
    keyword is deprecated (the shipped config must run on the next HAProxy line too)."""
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=START_TIMEOUT
    )
    if result.returncode != 0 or "deprecated" in result.stdout + result.stderr:
        raise LabError(f"haproxy -c rejected {path}:\n{result.stdout}{result.stderr}")


def poll(what: str, ready: Callable[[], Any], timeout: float = 60.0, interval: float = POLL_INTERVAL) -> Any:
    """What `ready` returns once it is truthy, asked every `interval` seconds; AssertionError naming `what`
    if it is not within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = ready()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def wait_until(what: str, ready: Callable[[], bool], process: subprocess.Popen, log: Path, since: int = 0) -> None:
    """Poll `ready` until it holds; fail fast if `process` dies, and give up after START_TIMEOUT.

    A process that died saying, in its log from offset `since` on, that its address was
    in use raises PortTaken, so the caller can pick other ports.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = PortTaken if _address_in_use(log, since) else LabError
            raise error(f"{what}: process exited with {process.returncode}\n{log_tail(log)}")
        if ready():
            return
        time.sleep(START_POLL)
    raise LabError(f"{what}: not ready after {START_TIMEOUT:.0f}s\n{log_tail(log)}")


T = TypeVar("T")


def on_fresh_ports(start: Callable[[], T], before_retry: Callable[[], None] = lambda: None) -> T:
    """`start()`, again (after `before_retry()`, which picks other ports) when it raises PortTaken,
    up to PORT_ATTEMPTS times in all; any other failure is raised at once."""
    for _ in range(PORT_ATTEMPTS - 1):
        try:
            return start()
        except PortTaken as taken:
            print(f"lab: a port was taken, starting over on fresh ones: {str(taken).splitlines()[0]}",
                  file=sys.stderr)
            before_retry()
    return start()


def _address_in_use(log: Path, since: int) -> bool:
    """Whether the output a process wrote to `log` from offset `since` on says a bind failed on a taken port."""
    try:
        with log.open("rb") as out:
            out.seek(since)
            return b"address already in use" in out.read().lower()
    except FileNotFoundError:
        return False


def log_size(log: Path) -> int:
    """Where a process started now begins writing to its (appended) log."""
    try:
        return log.stat().st_size
    except FileNotFoundError:
        return 0


def log_tail(log: Path, lines: int = 30) -> str:
    """The last lines of a process log, to put in an error message."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {log})"
    return f"--- tail of {log} ---\n" + "\n".join(text.splitlines()[-lines:])


def terminate(process: subprocess.Popen | None) -> None:
    """Stop `process` with SIGTERM, escalating to SIGKILL if it lingers."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


def cli_command(path: Path, command: str) -> str:
    """Send one command to the HAProxy CLI at unix socket `path` and return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(command.encode() + b"\n")
        # The master CLI answers only once it sees the end of our input.
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def tcp_accepts(port: int) -> bool:
    """Whether something accepts TCP connections on the loopback `port`."""
    try:
        socket.create_connection((LOOPBACK, port), timeout=1).close()
    except OSError:
        return False
    return True


def closed_by_peer(client: socket.socket) -> bool:
    """Whether the server closed `client` (EOF or reset), waiting a hundredth of a second."""
    client.settimeout(0.01)
    try:
        return client.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def parse_serial(serial_hex: str) -> int:
    """Read a serial written as hex, with or without colons (as openssl and HAProxy print it)."""
    return int(serial_hex.replace(":", ""), 16)


@dataclass(frozen=True)
class HAProxyNode:
    """Another HAProxy process serving the lab's ssl dir: a second node of a cluster."""

    name: str
    https_port: int
    admin_socket: Path
    process: subprocess.Popen
    address: str = LOOPBACK
    """Where it listens: the loopback for another node on ports of its own; 127.0.0.I for node I of a fleet."""

    @property
    def https_endpoint(self) -> str:
        return f"{self.address}:{self.https_port}"


@dataclass(frozen=True)
class SecondCa:
    """Another pebble beside the lab's (see `Lab.start_second_ca`)."""

    directory_url: str
    management_url: str
    ca_bundle: Path
    process: subprocess.Popen

    def intermediate(self) -> x509.Certificate:
        """The certificate this CA signs leaves with."""
        return x509.load_pem_x509_certificate(self._get("intermediates/0"))

    def root(self) -> bytes:
        """PEM of this CA's root."""
        return self._get("roots/0")

    def cert_status(self, serial_hex: str) -> str:
        """What this CA says of the certificate with this serial: "Valid" or "Revoked"."""
        return cert_status(self.management_url, self.ca_bundle, serial_hex)

    def _get(self, path: str) -> bytes:
        response = requests.get(f"{self.management_url}/{path}", verify=self.ca_bundle, timeout=5)
        response.raise_for_status()
        return response.content


def cert_status(management_url: str, ca_bundle: Path, serial_hex: str) -> str:
    """What the pebble at `management_url` says of the certificate with this serial: "Valid" or "Revoked"."""
    serial = format(parse_serial(serial_hex), "x")  # pebble's spelling: lower-case hex, no leading zeros
    response = requests.get(f"{management_url}/cert-status-by-serial/{serial}", verify=ca_bundle, timeout=5)
    response.raise_for_status()
    return response.json()["Status"]


def _answers(url: str, ca_bundle: Path) -> bool:
    try:
        return requests.get(url, verify=ca_bundle, timeout=2).ok
    except requests.RequestException:
        return False


class Lab:
    """pebble, its DNS (challtestsrv) and HAProxy on loopback, living under one work dir.

    Use as a context manager, or call start() and stop(). Nothing listens
    beyond 127.0.0.1, and every wait is bounded.
    """

    def __init__(self, workdir: Path, pebble_env: Mapping[str, str] | None = None, dns_server: str | None = None,
                 certificate_validity: int | None = None, unix_socket: bool = False, tls_alpn: bool = False,
                 eab_keys: Mapping[str, str] | None = None):
        """`dns_server` (HOST:PORT, e.g. a tests/harness/bind.py BIND) is where pebble resolves names and
        looks up DNS-01 records, instead of challtestsrv, which calls every name 127.0.0.1.
        `certificate_validity` (seconds) is the lifetime pebble gives every certificate (its default: 5 years).
        `unix_socket`: the responder on a unix socket in HAProxy's chroot, as shipped; else on a TCP port
        (which the tests of a busy, flooded or borrowed responder port use). `tls_alpn`: HAProxy runs
        haproxy/tls-alpn-01.cfg too, its TCP frontend on the https port, where pebble validates TLS-ALPN-01.
        `eab_keys` (key id: base64url HMAC key): pebble then registers only accounts bound to one of them."""
        self.workdir = Path(workdir).resolve()
        self.chroot = self.workdir / "haproxy-root" if unix_socket else None
        """HAProxy's chroot, where the responder's socket is; None: no chroot, the responder on TCP."""
        self.tls_alpn = tls_alpn
        self.pebble_env = dict(pebble_env or {})
        self.certificate_validity = certificate_validity
        self.eab_keys = dict(eab_keys or {})
        self._given_dns_server = dns_server
        self._pick_ports()
        self.ca_bundle = self.workdir / "pebble-ca.pem"
        self.pebble_cert = self.workdir / "pebble-cert.pem"
        self.pebble_key = self.workdir / "pebble-key.pem"
        self.ssl_dir = self.workdir / "ssl"
        self.state_dir = self.workdir / "state"
        self.haproxy_cfg = self.workdir / "haproxy.cfg"
        self.admin_socket = self.workdir / "admin.sock"
        self.master_socket = self.workdir / "master.sock"

        self._pebble: subprocess.Popen | None = None
        self._challtestsrv: subprocess.Popen | None = None
        self._haproxy: subprocess.Popen | None = None
        self._nodes: list[HAProxyNode] = []
        self._second_cas: list[SecondCa] = []
        # pebble makes a new root on every start; certificates issued before a
        # restart must still verify, so every root seen stays trusted.
        self._issuer_roots: list[bytes] = []

    def _pick_ports(self) -> None:
        (self.dns_port, self.acme_port, self.management_port, self.challtestsrv_port, self.http_port,
         self.https_port, self.backend_port, self.tls_alpn_port) = free_ports(8)
        self.directory_url = f"https://{LOOPBACK}:{self.acme_port}/dir"
        self.management_url = f"https://{LOOPBACK}:{self.management_port}"
        self.challtestsrv_url = f"http://{LOOPBACK}:{self.challtestsrv_port}"
        self.dns_server = self._given_dns_server or f"{LOOPBACK}:{self.dns_port}"
        self.listen = str(self.chroot / SHIPPED_SOCKET) if self.chroot else f"{LOOPBACK}:{self.backend_port}"
        self.tls_alpn_listen = (str(self.chroot / SHIPPED_TLS_ALPN_SOCKET) if self.chroot
                                else f"{LOOPBACK}:{self.tls_alpn_port}")

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def reload_command(self) -> str:
        """A shell command that reloads this HAProxy, as certrenew's --reload-command would run it.

        After stop_haproxy() it still names the stopped HAProxy, so it fails as
        `systemctl reload haproxy` fails for a stopped service.
        """
        if self._haproxy is None:
            raise LabError("HAProxy was never started")
        return f"kill -USR2 {self._haproxy.pid}"

    @property
    def certrenew_env(self) -> dict[str, str]:
        """The CERTRENEW_* settings that point certrenew at this lab."""
        return {
            "CERTRENEW_DIRECTORY": self.directory_url,
            "CERTRENEW_CA_BUNDLE": str(self.ca_bundle),
            "CERTRENEW_STATE_DIR": str(self.state_dir),
            "CERTRENEW_SSL_DIR": str(self.ssl_dir),
            "CERTRENEW_LISTEN": self.listen,
            "CERTRENEW_TLS_ALPN_LISTEN": self.tls_alpn_listen,
            # The pre-flight self-check goes through HAProxy's http port, as pebble's validation does.
            "CERTRENEW_SELF_CHECK_ADDRESS": f"{LOOPBACK}:{self.http_port}",
            # And TLS-ALPN-01's through the port pebble validates it on.
            "CERTRENEW_SELF_CHECK_TLS_ADDRESS": f"{LOOPBACK}:{self.https_port if self.tls_alpn else self.tls_alpn_port}",
            "CERTRENEW_RELOAD_COMMAND": self.reload_command,
            "CERTRENEW_EMAIL": "ops@example.com",
            "CERTRENEW_AGREE_TOS": "1",
        }

    def start(self) -> None:
        """Bring up challtestsrv, pebble and HAProxy; on any failure stop what did start.

        Ports are only free as of `free_ports`: when another process takes one first,
        the lab starts over on fresh ones, at most PORT_ATTEMPTS times.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(mode=0o700, exist_ok=True)  # as an operator makes it (certrenew never chmods one)
        if self.chroot:
            self.chroot.mkdir(exist_ok=True)

        def start_over() -> None:
            self.stop()
            self._pick_ports()

        try:
            on_fresh_ports(self._start_processes, start_over)
        except BaseException:
            self.stop()
            raise

    def _start_processes(self) -> None:
        self._write_pebble_tls()
        self._start_challtestsrv()
        self.start_pebble()
        self._start_haproxy()

    def stop(self) -> None:
        """Stop every lab process; safe to call more than once."""
        for process in (*(node.process for node in self._nodes), *(ca.process for ca in self._second_cas),
                        self._haproxy, self._pebble, self._challtestsrv):
            terminate(process)

    def start_pebble(self, extra_env: Mapping[str, str] | None = None) -> None:
        """Start pebble on the lab's ports, e.g. after stop_pebble() to bring a CA back.

        `extra_env` (pebble's PEBBLE_* knobs) replaces the lab's pebble_env for
        this start. A restarted pebble has forgotten every account and order
        and signs with a new root: it is a different CA at the same address.
        """
        if self._pebble is not None and self._pebble.poll() is None:
            raise LabError("pebble is already running")
        self._pebble = self._spawn_pebble("pebble", self.acme_port, self.management_port, self.http_port,
                                          self.pebble_env if extra_env is None else extra_env)
        self._issuer_roots.append(self.issuer_root())

    def start_second_ca(self, http_port: int | None = None, own_tls: bool = False) -> SecondCa:
        """Start another pebble beside the lab's: a second CA with its own roots and accounts, resolving
        through the lab's DNS and validating through HAProxy (or at `http_port`: where nothing listens,
        its every validation fails while the probe through HAProxy passes); the lab's CA bundle trusts
        its API (with `own_tls`, only its own `ca_bundle` does), and `served_certificate` its root.
        Stopped with the lab."""
        acme_port, management_port = free_ports(2)
        tls = "pebble2" if own_tls else "pebble"
        bundle = self._write_pebble_tls(tls) if own_tls else self.ca_bundle
        second = SecondCa(f"https://{LOOPBACK}:{acme_port}/dir", f"https://{LOOPBACK}:{management_port}", bundle,
                          self._spawn_pebble("pebble2", acme_port, management_port, http_port or self.http_port, {},
                                             tls))
        self._second_cas.append(second)
        self._issuer_roots.append(second.root())  # what it issues verifies as served
        return second

    def _spawn_pebble(self, name: str, acme_port: int, management_port: int, http_port: int,
                      env: Mapping[str, str], tls: str = "pebble") -> subprocess.Popen:
        """Run pebble `name` with the TLS files `_write_pebble_tls(tls)` made."""
        config = self.workdir / f"{name}.json"
        config.write_text(json.dumps({"pebble": {
            "listenAddress": f"{LOOPBACK}:{acme_port}",
            "managementListenAddress": f"{LOOPBACK}:{management_port}",
            "certificate": str(self.workdir / f"{tls}-cert.pem"),
            "privateKey": str(self.workdir / f"{tls}-key.pem"),
            # Validate through HAProxy's http frontend, as a real CA would.
            "httpPort": http_port,
            "tlsPort": self.https_port if self.tls_alpn else self.tls_alpn_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": bool(self.eab_keys),
            **({"externalAccountMACKeys": self.eab_keys} if self.eab_keys else {}),
            **({"certificateValidityPeriod": self.certificate_validity} if self.certificate_validity else {}),
        }}, indent=2))
        log = self.workdir / f"{name}.log"
        since = log_size(log)
        process = self._spawn(["pebble", "-config", str(config), "-dnsserver", self.dns_server], log,
                              {"PEBBLE_VA_NOSLEEP": "1", **env})
        directory_url = f"https://{LOOPBACK}:{acme_port}/dir"
        wait_until(name, lambda: _answers(directory_url, self.workdir / f"{tls}-ca.pem"), process, log, since)
        return process

    def stop_pebble(self) -> None:
        """Stop pebble, leaving its ports unanswered, to play a CA that is down."""
        terminate(self._pebble)

    def break_dns(self, name: str) -> None:
        """Point `name` at an address where nothing listens, so HTTP-01 validation really fails: for a name never
        validated before, as pebble reuses a valid authorization now and then, even with PEBBLE_AUTHZREUSE=0."""
        self.point_name(name, "127.0.0.9")

    def issuer_root(self) -> bytes:
        """PEM of the root that the running pebble chains issued certificates to."""
        response = requests.get(f"{self.management_url}/roots/0", verify=self.ca_bundle, timeout=5)
        response.raise_for_status()
        return response.content

    def cert_status(self, serial_hex: str) -> str:
        """What pebble says of the certificate with this serial: "Valid" or "Revoked"."""
        return cert_status(self.management_url, self.ca_bundle, serial_hex)

    def reload_haproxy(self) -> None:
        """Reload HAProxy as certrenew would, and wait until the master reports the reload done."""
        process = self._running(self._haproxy, "HAProxy")
        before = self.settled_reloads()  # the master may still re-execute for a reload someone else asked for
        deadline = time.monotonic() + START_TIMEOUT
        process.send_signal(signal.SIGUSR2)
        while time.monotonic() < deadline:
            try:
                reloads, failed = self.master_reloads()
            except OSError:  # the master re-executes itself to reload; its CLI drops meanwhile
                time.sleep(POLL_INTERVAL)
                continue
            if failed > before[1]:
                raise LabError(f"HAProxy reload failed\n{log_tail(self.workdir / 'haproxy.log')}")
            if reloads > before[0] and self.worker_serves_admin_socket():
                return
            time.sleep(POLL_INTERVAL)
        raise LabError(f"HAProxy did not reload in {START_TIMEOUT:.0f}s\n{log_tail(self.workdir / 'haproxy.log')}")

    def master_cli(self, command: str) -> str:
        """Send one command to HAProxy's master CLI and return its answer."""
        return cli_command(self.master_socket, command)

    def worker_serves_admin_socket(self) -> bool:
        """Whether the admin socket is answered by the worker the master lists as current: right after
        a reload, an old worker on its way out can still take a connection there, and reset it."""
        try:
            current = next(fields[0] for fields in map(str.split, self.master_cli("show proc").splitlines())
                           if len(fields) > 1 and fields[1] == "worker")
            return f"Pid: {current}\n" in cli_command(self.admin_socket, "show info")
        except (OSError, StopIteration):
            return False

    def served_certificate(self, sni: str, timeout: float = 10.0) -> x509.Certificate:
        """The leaf HAProxy serves for `sni`, after verifying its chain to a pebble root and its name.

        Only a certificate pebble really issued for `sni`, installed with its
        intermediate, passes; the placeholder does not. A reload is asynchronous (the
        old worker answers for a moment after certrenew exits), so a handshake that does
        not verify is tried again for up to `timeout` seconds before its error is raised.
        """
        context = ssl.create_default_context(cadata=b"".join(self._issuer_roots).decode())
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._handshake(context, sni)
            except ssl.SSLCertVerificationError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(POLL_INTERVAL)

    def served_certificate_unverified(self, sni: str, port: int | None = None,
                                      address: str = LOOPBACK) -> x509.Certificate:
        """The leaf HAProxy (or the node on `port`, or at `address`) serves for `sni`, whatever it is (e.g. the
        placeholder)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return self._handshake(context, sni, port, address)

    @property
    def https_endpoint(self) -> str:
        """HAProxy's TLS address as HOST:PORT, as certrenew's --verify-endpoint takes it."""
        return f"{LOOPBACK}:{self.https_port}"

    def start_haproxy_node(self, name: str) -> HAProxyNode:
        """Start one more HAProxy on the same ssl dir with its own ports and admin socket; stop() stops it.

        Like start(), it tries fresh ports when another process took one first.
        """
        admin_socket = self.workdir / f"{name}-admin.sock"
        config = self.workdir / f"{name}.cfg"
        log = self.workdir / f"{name}.log"

        def start() -> HAProxyNode:
            http_port, https_port = free_ports(2)
            config.write_text(self._render_haproxy_config(admin_socket, http_port, https_port))
            check_haproxy_config(config)
            since = log_size(log)
            process = self._spawn(["haproxy", "-W", "-f", str(config)], log)
            node = HAProxyNode(name, https_port, admin_socket, process)
            self._nodes.append(node)
            wait_until(name, lambda: self._https_answers(https_port), process, log, since)
            return node

        return on_fresh_ports(start)

    def start_fleet_node(self, index: int, global_lines: Sequence[str] = (),
                         frontend_lines: Sequence[str] = (), responder: str | None = None,
                         ssl_dir: Path | None = None, crt_list: Path | None = None) -> HAProxyNode:
        """Start node `index` (2, 3...) of a fleet beside the lab's HAProxy (node 1): the shipped config on
        the lab's http and https ports at `fleet_address(index)`, serving the lab's ssl dir, with the lines
        `with_lines` adds; pebble validates on it for a name `point_name` points there. stop() stops it.
        `responder` (HOST:PORT): the node's own responder (its daemon's), instead of node 1's. `ssl_dir`: the
        node's own ssl dir (given a placeholder), instead of the lab's. `crt_list`: its HTTPS bind serves that
        crt-list (which must exist) instead of the ssl dir."""
        if self.tls_alpn:
            raise LabError("a fleet node shares the lab's ports: not with tls_alpn's internal frontend")
        if responder and self.chroot:
            raise LabError("a fleet node's own responder is on TCP: not with the lab's unix socket")
        name, address = f"node{index}", fleet_address(index)
        admin_socket, config, log = (self.workdir / f"{name}{suffix}" for suffix in ("-admin.sock", ".cfg", ".log"))
        if ssl_dir is not None:
            write_placeholder(ssl_dir)
        rendered = self._render_haproxy_config(admin_socket, self.http_port, self.https_port, address, ssl_dir)
        if responder:
            rendered = render_haproxy_config(rendered, [(f"server letsencrypt {self.listen}\n",
                                                         f"server letsencrypt {responder}\n")])
        if crt_list:
            rendered = render_haproxy_config(rendered, [(f"crt {ssl_dir or self.ssl_dir}/\n", f"crt-list {crt_list}\n")])
        config.write_text(with_lines(rendered, global_lines, frontend_lines))
        check_haproxy_config(config)
        since = log_size(log)
        process = self._spawn(["haproxy", "-W", "-f", str(config)], log)
        node = HAProxyNode(name, self.https_port, admin_socket, process, address)
        self._nodes.append(node)
        wait_until(name, lambda: self._https_answers(self.https_port, address), process, log, since)
        return node

    def add_haproxy_lines(self, global_lines: Sequence[str] = (), frontend_lines: Sequence[str] = ()) -> None:
        """Add lines to the lab's HAProxy (node 1 of a fleet) as `with_lines` does, and reload it."""
        self.haproxy_cfg.write_text(with_lines(self.haproxy_cfg.read_text(), global_lines, frontend_lines))
        check_haproxy_config(self.haproxy_cfg)
        self.reload_haproxy()

    def point_name(self, name: str, address: str) -> None:
        """Make pebble resolve `name` to `address` (challtestsrv's /add-a), e.g. to one node of a fleet."""
        answer = requests.post(f"{self.challtestsrv_url}/add-a",
                               json={"host": name + ".", "addresses": [address]}, timeout=5)
        answer.raise_for_status()

    def wait_served_serial(self, sni: str, serial_hex: str, timeout: float = 10.0,
                           interval: float = POLL_INTERVAL, verify: bool = True) -> x509.Certificate:
        """Wait until HAProxy serves the certificate with this serial for `sni`, and return it verified
        (unless not `verify`: the benchmark stops its clock first, then verifies it).

        A reload is asynchronous: the old worker keeps answering for a moment. The
        benchmark asks every few milliseconds (`interval`) so the wait does not round its timings.
        """
        expected = parse_serial(serial_hex)
        seen = "nothing"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                served = self.served_certificate_unverified(sni)
            except OSError as error:
                seen = f"error {error}"
            else:
                if served.serial_number == expected:
                    return self.served_certificate(sni) if verify else served
                seen = f"serial {served.serial_number:x} for {served.subject.rfc4514_string()}"
            time.sleep(interval)
        raise LabError(f"HAProxy did not serve serial {expected:x} for {sni} within {timeout}s; last saw {seen}")

    def certrenew(self, *args: str, env: Mapping[str, str | None] | None = None,
                  timeout: float = 120, stdin=None) -> subprocess.CompletedProcess:
        """Run the certrenew CLI against this lab; `env` adds settings, and a None value removes one.

        `stdin` as subprocess takes it; None inherits the test runner's, which may be a terminal.
        A run still going after `timeout` seconds raises LabError saying where it and pebble
        were stuck (`_hang_report`): a hang seen once in CI may not come back at will.
        """
        process = subprocess.Popen(
            [sys.executable, "-m", "certrenew", *args], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=REPO_ROOT, env={**self._certrenew_env(env), "PYTHONFAULTHANDLER": "1"}, text=True,
        )
        with process:
            try:
                stdout, stderr = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack, then it aborts
                try:
                    stdout, stderr = process.communicate(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    stdout, stderr = process.communicate()
                raise LabError(self._hang_report(args, timeout, stderr))
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def _hang_report(self, args: Sequence[str], timeout: float, stderr: str) -> str:
        """Where a certrenew run that did not end was: each thread's innermost frames (from the
        faulthandler dump in `stderr`), and whether pebble still answered; if not, what its
        goroutines were waiting for (pebble 2.4's memory store can deadlock on its own locks)."""
        lines = stderr.splitlines()
        dump = next((at for at, line in enumerate(lines) if line.startswith("Fatal Python error")), len(lines))
        threads: list[str] = []
        for line in lines[dump:]:
            if line.startswith(("Thread 0x", "Current thread 0x")):
                threads.append(line.split(" (most recent")[0] + ":")
            elif line.startswith("  File ") and threads and threads[-1].count("\n") < FRAMES_SHOWN:
                threads[-1] += "\n" + line
        report = [f"certrenew {shlex.join(args)} did not end within {timeout:g} s",
                  "its threads, innermost frames first:", *threads]
        if self._pebble is not None and self._pebble.poll() is None and not self._directory_answers():
            report.append("pebble no longer answers its directory; its goroutines, by what they wait in:")
            report += self._pebble_goroutines()
        else:
            report.append("pebble answers its directory")
        report.append("certrenew's output before the dump:\n" + "\n".join(lines[max(dump - 20, 0):dump]))
        return "\n".join(report)

    def _pebble_goroutines(self) -> list[str]:
        """Make pebble print its goroutines (SIGQUIT, which ends it) and count them by their state and
        innermost pebble function, e.g. "12 [semacquire] db.(*MemoryStore).GetOrderByID"."""
        log = self.workdir / "pebble.log"
        since = log_size(log)
        pebble = self._running(self._pebble, "pebble")
        pebble.send_signal(signal.SIGQUIT)
        pebble.wait(STOP_TIMEOUT)
        with log.open("rb") as out:
            out.seek(since)
            blocks = out.read().decode(errors="replace").split("\n\n")
        waits: collections.Counter[str] = collections.Counter()
        for block in blocks:
            head, *frames = block.strip().splitlines() or [""]
            if head.startswith("goroutine "):
                where = next((frame.split("pebble/", 1)[1].rsplit("(", 1)[0] for frame in frames
                              if "letsencrypt/pebble/" in frame and not frame.startswith("\t")), "(outside pebble)")
                waits[f"{head[head.find('['):head.find(']') + 1]} {where}"] += 1
        return [f"  {count} {what}" for what, count in waits.most_common()]

    def start_certrenew(self, *args: str, env: Mapping[str, str | None] | None = None,
                        **popen) -> subprocess.Popen:
        """Start the certrenew CLI like certrenew() but without waiting, e.g. to signal it mid-run.
        Output goes to pipes unless `popen` says otherwise (a long-lived daemon's to a file, say)."""
        popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
        return subprocess.Popen([sys.executable, "-m", "certrenew", *args], cwd=REPO_ROOT,
                                env=self._certrenew_env(env), stdin=subprocess.DEVNULL, **popen)

    def _certrenew_env(self, env: Mapping[str, str | None] | None) -> dict[str, str]:
        full_env = {**os.environ, **self.certrenew_env}
        for name, value in (env or {}).items():
            if value is None:
                full_env.pop(name, None)
            else:
                full_env[name] = value
        return full_env

    def reconfigure_haproxy(self, old: str, new: str) -> None:
        """Replace `old` (exactly once) in the running HAProxy's config and reload it: a misconfigured load balancer."""
        self.haproxy_cfg.write_text(render_haproxy_config(self.haproxy_cfg.read_text(), [(old, new)]))
        check_haproxy_config(self.haproxy_cfg)
        self.reload_haproxy()

    def stop_haproxy(self) -> None:
        """Stop HAProxy, to play a load balancer that is down, and wait until nothing answers on its ports.

        A SIGTERM that reaches the master while it re-executes for a reload (certrenew's, a
        moment ago) can leave the worker it is starting behind, which binds the ports after
        the master is gone: so wait for the master first, and check the ports after.
        """
        deadline = time.monotonic() + START_TIMEOUT
        while self._haproxy is not None and self._haproxy.poll() is None and not self.master_answers():
            if time.monotonic() >= deadline:
                raise LabError(f"HAProxy's master CLI did not answer in {START_TIMEOUT:.0f}s")
            time.sleep(POLL_INTERVAL)
        terminate(self._haproxy)
        while tcp_accepts(self.http_port) or tcp_accepts(self.https_port):
            if time.monotonic() >= deadline:
                raise LabError(f"something still answers on HAProxy's ports after it stopped\n"
                               f"{log_tail(self.workdir / 'haproxy.log')}")
            time.sleep(POLL_INTERVAL)

    def start_haproxy(self) -> None:
        """Start HAProxy again on the lab's ports, e.g. after stop_haproxy()."""
        if self._haproxy is not None and self._haproxy.poll() is None:
            raise LabError("HAProxy is already running")
        self._start_haproxy()

    def _write_pebble_tls(self, name: str = "pebble") -> Path:
        """Give pebble `name` a server certificate for its HTTPS API (NAME-cert.pem, NAME-key.pem), and
        clients the CA to trust it with (NAME-ca.pem, returned)."""
        ca = trustme.CA()
        leaf = ca.issue_cert("localhost", LOOPBACK)
        bundle = self.workdir / f"{name}-ca.pem"
        ca.cert_pem.write_to_path(str(bundle))
        leaf.private_key_pem.write_to_path(str(self.workdir / f"{name}-key.pem"))
        (self.workdir / f"{name}-cert.pem").write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        return bundle

    def _start_challtestsrv(self) -> None:
        """Start the DNS pebble resolves through: every name is 127.0.0.1, so validation stays on loopback."""
        log = self.workdir / "challtestsrv.log"
        since = log_size(log)
        self._challtestsrv = self._spawn([
            "pebble-challtestsrv",
            "-defaultIPv4", LOOPBACK,
            "-defaultIPv6", "",
            "-dns01", f"{LOOPBACK}:{self.dns_port}",
            "-http01", "", "-https01", "", "-tlsalpn01", "",
            "-management", f"{LOOPBACK}:{self.challtestsrv_port}",
        ], log)
        wait_until("pebble-challtestsrv", lambda: tcp_accepts(self.dns_port), self._challtestsrv, log, since)

    def _start_haproxy(self) -> None:
        """Render the shipped config for the lab, check it, and run HAProxy in master-worker mode."""
        write_placeholder(self.ssl_dir)
        self.haproxy_cfg.write_text(self._render_haproxy_config(self.admin_socket, self.http_port, self.https_port))
        check_haproxy_config(self.haproxy_cfg)
        log = self.workdir / "haproxy.log"
        since = log_size(log)
        self._haproxy = self._spawn(
            ["haproxy", "-W", "-S", str(self.master_socket), "-f", str(self.haproxy_cfg)], log
        )
        # Serving TLS is not all: reload_haproxy and the tests talk to the master CLI, which may come up later.
        wait_until("HAProxy", lambda: self._https_answers() and self.master_answers(), self._haproxy, log, since)

    def _render_haproxy_config(self, admin_socket: Path, http_port: int, https_port: int,
                               address: str = LOOPBACK, ssl_dir: Path | None = None) -> str:
        internal = f"abns@certrenew-https-{https_port}"  # abstract names are host-wide: one per lab
        shipped = render_haproxy_config(
            SHIPPED_HAPROXY_CFG.read_text(),
            production_replacements(ssl_dir or self.ssl_dir, admin_socket) + [
                # Loopback IPv4 only, so the lab runs on hosts without IPv6 too.
                ("bind :::80 v4v6\n", f"bind {address}:{http_port}\n"),
                ("bind :::443 v4v6 ssl", f"bind {internal} accept-proxy ssl" if self.tls_alpn
                 else f"bind {address}:{https_port} ssl"),
                *([] if self.chroot else [(f"server letsencrypt unix@/{SHIPPED_SOCKET}\n",
                                           f"server letsencrypt {self.listen}\n")]),
                # No syslog here: send HAProxy's logs to its log file instead.
                ("log /dev/log local0\n", "log stderr format short local0\n"),
                # The lab needs neither a haproxy user nor /var/lib/haproxy on the host.
                ("    chroot /var/lib/haproxy\n", f"    chroot {self.chroot}\n" if self.chroot else ""),
                ("    user haproxy\n", ""),
                ("    group haproxy\n", ""),
            ],
        )
        if not self.tls_alpn:
            return shipped
        return shipped + "\n" + render_haproxy_config(SHIPPED_TLS_ALPN.read_text(), [
            ("bind :::443 v4v6\n", f"bind {LOOPBACK}:{https_port}\n"),
            ("abns@certrenew-https send-proxy-v2", f"{internal} send-proxy-v2"),
            *([] if self.chroot else [(f"server certrenew unix@/{SHIPPED_TLS_ALPN_SOCKET}\n",
                                       f"server certrenew {self.tls_alpn_listen}\n")]),
        ])

    def _spawn(self, argv: list[str], log: Path, extra_env: Mapping[str, str] | None = None) -> subprocess.Popen:
        """Start a lab process with its output appended to `log` (appended, so restarts keep history)."""
        with log.open("ab") as out:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **(extra_env or {})}, cwd=self.workdir,
            )


    def _directory_answers(self) -> bool:
        return _answers(self.directory_url, self.ca_bundle)

    def _https_answers(self, port: int | None = None, address: str = LOOPBACK) -> bool:
        try:
            self.served_certificate_unverified("localhost", port, address)
        except OSError:
            return False
        return True

    def master_answers(self) -> bool:
        """Whether the master CLI answers: not for a moment while the master re-executes itself to reload."""
        try:
            self.master_reloads()
        except (OSError, LabError):
            return False
        return True

    def settled_reloads(self) -> tuple[int, int]:
        """`master_reloads` once the master's CLI answers: it drops for a moment while the master
        re-executes itself for a reload, such as the one a run that has just exited asked for (as for
        `master_answers`, an answer without the master's line counts as none yet)."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                return self.master_reloads()
            except (OSError, LabError):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(POLL_INTERVAL)

    def master_reloads(self) -> tuple[int, int]:
        """(reloads, failed reloads) from the master's line of `show proc`."""
        for line in self.master_cli("show proc").splitlines():
            fields = line.split()
            if len(fields) > 4 and fields[1] == "master":
                # e.g. "4565  master  2 [failed: 0]  0d00h10m11s  2.6.12"
                return int(fields[2]), int(fields[4].rstrip("]"))
        raise LabError("HAProxy master CLI gave no master line to `show proc`")

    def _handshake(self, context: ssl.SSLContext, sni: str, port: int | None = None,
                   address: str = LOOPBACK) -> x509.Certificate:
        with socket.create_connection((address, port or self.https_port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=sni) as tls:
                return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))

    @staticmethod
    def _running(process: subprocess.Popen | None, what: str) -> subprocess.Popen:
        if process is None or process.poll() is not None:
            raise LabError(f"{what} is not running")
        return process


def main() -> None:
    """Start a lab in the given work dir (default: lab/ in the checkout, which git ignores) until Ctrl-C."""
    workdir = Path(sys.argv[1] if len(sys.argv) > 1 else REPO_ROOT / "lab")
    # `kill` as well as Ctrl-C must unwind through Lab.__exit__, or the lab's processes outlive us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    started = time.monotonic()
    with Lab(workdir) as lab:
        print(f"lab up in {time.monotonic() - started:.1f}s under {lab.workdir}")
        for name in ("directory_url", "management_url", "challtestsrv_url", "ca_bundle", "http_port",
                     "https_port", "backend_port", "listen", "ssl_dir", "state_dir", "haproxy_cfg",
                     "admin_socket", "master_socket", "reload_command"):
            print(f"  {name} = {getattr(lab, name)}")
        print("certrenew settings:")
        for name, value in lab.certrenew_env.items():
            print(f"  export {name}={shlex.quote(value)}")
        print("Ctrl-C to stop.")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
