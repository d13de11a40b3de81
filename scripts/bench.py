"""certrenew and certbot side by side on the same work, the same pebble and the same HAProxy.

Run through scripts/bench, which pip-installs certbot 5.x and this checkout's certrenew
into venvs of their own under .bench/ (git ignores it; delete it at will), so neither
pays for a development install. Every scenario ends where an operator's job ends: HAProxy
serving the new certificate, or a no-op run returning.

- one certificate: certbot `certonly --standalone` on the ACL's backend port, then
  `cat fullchain privkey > ssl/<name>.pem` and the reload (what operators did by hand),
  against `certrenew NAME`; each timed until HAProxy serves the new serial.
- N certificates from one config: certbot doing the same one by one, against
  `certrenew run --config FILE`; timed until HAProxy serves the last one, then every
  one is checked (untimed) against pebble's root.
- a no-op over those N: `certbot renew` against `certrenew run --config FILE`.
- a large batch (`--large`, 1,000 certificates) from one config, certrenew alone: certbot's
  column is its N-certificate run scaled up, not measured (it would take most of an hour).
- the peak RSS of the N-certificate run (the largest process for certbot's loop).

`--daemon` measures certrenew alone as a service: with `certrenew daemon` running and pebble
issuing 30-second certificates, the time from a certificate's renewal time (when it falls
due) to HAProxy serving its successor; no interpreter start-up in that path.

`--native` puts HAProxy 3.4's own (experimental) ACME client beside certrenew, both on HAProxy
3.4 and the same pebble: one certificate until served, N certificates until all are served,
the orders one reload causes, and the certificates a restart loses (HAProxy keeps the ones it
orders in memory only). The exact HAProxy config it runs is `native_config`.

`--fleet` measures a renewal's way to every node of a fleet (see `bench_fleet`): three HAProxy
nodes and three daemons on a 3-member etcd cluster, from the store's commit to the last node
serving the renewed certificate, and from its renewal time to every node serving it.

`--scale` measures certrenew alone at a size no CA lab reaches quickly: a no-op
`run` (with and without its schedule) and `status` over 10,000 certificates of one config, from
synthetic state.

Each tool registers its ACME account in an untimed warm-up issuance first, as it
would have on a server long before a timer runs it. Every figure is a median.
"""

import argparse
import contextlib
import datetime
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.utils import CryptographyDeprecationWarning

from certrenew.pki.bundle import leaf_info
from certrenew.renewal.policy import renew_at
from certrenew.state.schedule import SCHEDULE
from certrenew.state.store import FileStore
from scripts import bench_fleet
from tests.harness.lab import Lab, log_tail, parse_serial, terminate

REPO_ROOT = Path(__file__).resolve().parents[1]

# Validation without pebble's random 0-15 s sleeps, and no random badNonce or reused
# authorizations: both clients see the same CA doing the same work every time.
PEBBLE_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
EMAIL = "ops@example.com"
COMMAND_TIMEOUT = 120.0
SERVE_TIMEOUT = 30.0
SERVE_POLL = 0.005
RSS_PROBE = ("/usr/bin/time", "--format", "%M")
"""GNU time, printing the command's peak RSS in KiB (scripts/setup installs it)."""


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Usage:
    """What commands used: the largest peak RSS among them (KiB) and their CPU time, user and system."""

    max_rss_kib: int
    cpu_seconds: float

    @staticmethod
    def of_all(usages: list["Usage"]) -> "Usage":
        return Usage(max(u.max_rss_kib for u in usages), sum(u.cpu_seconds for u in usages))


@dataclass(frozen=True)
class Sample:
    seconds: float
    usage: Usage


def run_measured(argv: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> Usage:
    """Run a command to completion (bounded by COMMAND_TIMEOUT) and return what it used.

    `os.wait4` reports the CPU time of this child and the children it waited for, so a
    shell's figure covers the certbot it ran. It also returns the moment the child ends,
    where `subprocess.run(timeout=...)` polls and can add up to 50 ms. The peak RSS comes
    from GNU time, a small process that forks the command: a process spawned straight from
    this one starts from this one's high-water mark (vfork and exec keep it), so wait4
    would report the bench's own 40 MiB as the tool's.
    """
    with log.open("ab") as out, tempfile.NamedTemporaryFile(prefix="certrenew-bench-rss-") as rss:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        process = subprocess.Popen([*RSS_PROBE, "--output", rss.name, *argv], stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, env=env, cwd=cwd)
        timer = threading.Timer(COMMAND_TIMEOUT, process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise BenchError(f"{argv[0]} exited with {process.returncode}\n{log_tail(log)}")
        max_rss_kib = int(Path(rss.name).read_text().split()[-1])
    return Usage(max_rss_kib, usage.ru_utime + usage.ru_stime)


def serial_of(bundle: Path) -> str:
    return leaf_info(bundle.read_bytes()).serial


class Tool:
    """One renewer set up against the lab; `home` holds its configuration and state."""

    accounts: str
    """Where under `home` the tool keeps its ACME account."""

    def __init__(self, lab: Lab, home: Path, executable: Path) -> None:
        self.lab = lab
        self.home = home
        self.executable = executable
        self.log = home / "commands.log"
        home.mkdir(parents=True)

    def fresh(self, home: Path) -> "Tool":
        """The same tool with empty state but the account already registered."""
        other = type(self)(self.lab, home, self.executable)
        shutil.copytree(self.home / self.accounts, home / self.accounts)
        return other

    def issue(self, domains: list[str]) -> Sample:
        """Issue one certificate per domain and wait until HAProxy serves the last one."""
        started = time.perf_counter()
        usage = self._issue(domains)
        self.lab.wait_served_serial(domains[-1], serial_of(self.lab.ssl_dir / f"{domains[-1]}.pem"),
                                    timeout=SERVE_TIMEOUT, interval=SERVE_POLL, verify=False)
        seconds = time.perf_counter() - started
        self.lab.served_certificate(domains[-1])  # verified against pebble's root and the name, untimed
        return Sample(seconds, usage)

    def noop(self) -> Sample:
        started = time.perf_counter()
        usage = self._noop()
        return Sample(time.perf_counter() - started, usage)

    def _issue(self, domains: list[str]) -> Usage:
        raise NotImplementedError

    def _noop(self) -> Usage:
        raise NotImplementedError


class Certbot(Tool):
    """certbot 5.x standalone behind HAProxy's ACL, installed and reloaded the way operators did it."""

    accounts = "config/accounts"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "REQUESTS_CA_BUNDLE": str(self.lab.ca_bundle)}

    def _dirs(self) -> list[str]:
        return ["--config-dir", str(self.home / "config"), "--work-dir", str(self.home / "work"),
                "--logs-dir", str(self.home / "logs")]

    def _procedure(self, domain: str) -> str:
        certonly = [str(self.executable), "certonly", "--standalone", "--non-interactive", "--agree-tos",
                    "--email", EMAIL, "--server", self.lab.directory_url,
                    "--http-01-address", "127.0.0.1", "--http-01-port", str(self.lab.backend_port),
                    *self._dirs(), "-d", domain]
        live = self.home / "config" / "live" / domain
        return (f"{' '.join(certonly)} && umask 077 && "
                f"cat {live}/fullchain.pem {live}/privkey.pem > {self.lab.ssl_dir}/{domain}.pem && "
                f"{self.lab.reload_command}")

    def _issue(self, domains: list[str]) -> Usage:
        return Usage.of_all([run_measured(["sh", "-c", self._procedure(domain)], self.env, self.log)
                             for domain in domains])

    def _noop(self) -> Usage:
        return run_measured([str(self.executable), "renew", "--non-interactive", "--no-random-sleep-on-renew",
                             *self._dirs()], self.env, self.log)


class Certrenew(Tool):
    """certrenew's own CLI set up as docs/setup.md says: HAProxy updated over its Runtime API."""

    accounts = "state/accounts"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **certrenew_env(self.lab, self.home / "state")}

    @property
    def config(self) -> Path:
        return self.home / "certrenew.toml"

    def _issue(self, domains: list[str]) -> Usage:
        if len(domains) == 1:
            return run_measured([str(self.executable), *domains], self.env, self.log)
        self.config.write_text("".join(f'[[certificate]]\ndomains = ["{domain}"]\n\n' for domain in domains))
        return self._noop()

    def _noop(self) -> Usage:
        return run_measured([str(self.executable), "run", "--config", str(self.config)], self.env, self.log)


def certrenew_env(lab: Lab, state_dir: Path) -> dict[str, str]:
    """The lab's CERTRENEW_* settings with a state dir of our own and the admin socket for hot updates."""
    return {**lab.certrenew_env, "CERTRENEW_STATE_DIR": str(state_dir),
            "CERTRENEW_HAPROXY_SOCKET": str(lab.admin_socket)}


def median(samples: list[Sample], field: Callable[[Sample], float]) -> float:
    return statistics.median(field(sample) for sample in samples)


@dataclass(frozen=True)
class Row:
    scenario: str
    certbot: float
    certrenew: float
    unit: str
    target: str
    certbot_note: str = ""
    """Beside certbot's figure, e.g. "(x10)" for one scaled up, not measured."""

    def cells(self) -> list[str]:
        def show(value: float) -> str:
            return f"{value:.2f} {self.unit}" if value < 100 else f"{value:.0f} {self.unit}"
        ratio = self.certbot / self.certrenew
        return [self.scenario, " ".join(filter(None, [show(self.certbot), self.certbot_note])), show(self.certrenew),
                f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.0f}x", self.target]


def print_table(rows: list[Row]) -> None:
    table = [["scenario", "certbot", "certrenew", "ratio", "target"]] + [row.cells() for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for number, line in enumerate(table):
        print("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                        for i, (cell, width) in enumerate(zip(line, widths))).rstrip())
        if number == 0:
            print("  ".join("-" * width for width in widths))


def clear_bundles(lab: Lab, domains: list[str]) -> None:
    """Take a batch's bundles out of HAProxy, so every batch starts from the same crt dir."""
    if not domains:
        return
    for domain in domains:
        (lab.ssl_dir / f"{domain}.pem").unlink()
    lab.reload_haproxy()


def check_all_served(lab: Lab, domains: list[str]) -> None:
    for domain in domains:
        lab.served_certificate(domain)  # verified against pebble's root, name checked


def bench(args: argparse.Namespace, workdir: Path) -> list[Row]:
    with Lab(workdir / "lab", pebble_env=PEBBLE_ENV) as lab:
        tools = {"certbot": Certbot(lab, workdir / "certbot", args.certbot), "certrenew": Certrenew(lab, workdir / "certrenew", args.certrenew)}
        say = print if args.verbose else (lambda *_: None)
        for name, tool in tools.items():
            tool.issue([f"warmup.{name}.bench.example"])

        one = {name: [] for name in tools}
        for run in range(args.runs):  # interleaved, so both see the same background load
            for name, tool in tools.items():
                one[name].append(tool.issue([f"one{run}.{name}.bench.example"]))
                say(f"one certificate, {name}: {one[name][-1].seconds:.2f} s")

        batch = {name: [] for name in tools}
        last: dict[str, Tool] = {}  # each tool's last batch, for the no-op runs
        runs = {"certbot": args.certbot_batch_runs, "certrenew": args.batch_runs}
        previous: list[str] = []
        for name, tool in tools.items():
            for run in range(runs[name]):
                clear_bundles(lab, previous)
                domains = [f"c{i}.b{run}.{name}.bench.example" for i in range(args.certificates)]
                last[name] = tool.fresh(workdir / f"{name}-batch{run}")
                batch[name].append(last[name].issue(domains))
                say(f"{args.certificates} certificates, {name}: {batch[name][-1].seconds:.2f} s")
                check_all_served(lab, domains)
                previous = domains

        noop = {name: [] for name in tools}
        for _ in range(args.runs):
            for name in tools:
                noop[name].append(last[name].noop())
                say(f"no-op, {name}: {noop[name][-1].seconds:.2f} s")

        large = []
        for run in range(args.batch_runs if args.large else 0):
            clear_bundles(lab, previous)
            domains = [f"c{i}.l{run}.certrenew.bench.example" for i in range(args.large)]
            large.append(tools["certrenew"].fresh(workdir / f"certrenew-large{run}").issue(domains))
            say(f"{args.large} certificates, certrenew: {large[-1].seconds:.2f} s")
            check_all_served(lab, domains)
            previous = domains

    def row(scenario, samples, field, unit, target):
        return Row(scenario, median(samples["certbot"], field), median(samples["certrenew"], field), unit, target)

    n = args.certificates
    scaled = [Row(f"{args.large:,} certificates from one config", median(batch["certbot"], lambda s: s.seconds) *
                  args.large / n, median(large, lambda s: s.seconds), "s", "<= 20 s",
                  f"(x{args.large / n:g})")] if large else []  # none with --large 0
    return [
        row("one certificate, until HAProxy serves it", one, lambda s: s.seconds, "s", ">= 7x"),
        row(f"{n} certificates from one config", batch, lambda s: s.seconds, "s", ">= 20x"),
        *scaled,
        row(f"no-op run over {n} certificates", noop, lambda s: s.seconds, "s", ">= 3x"),
        row(f"peak RSS, {n}-certificate run", batch, lambda s: s.usage.max_rss_kib / 1024, "MiB", "> 1x"),
        row("CPU time (user+sys), one certificate", one, lambda s: s.usage.cpu_seconds, "s", ""),
        row(f"CPU time (user+sys), {n} certificates", batch, lambda s: s.usage.cpu_seconds, "s", ""),
    ]


HAPROXY_34 = Path(os.environ.get("HAPROXY_BIN") or REPO_ROOT.parent / "shared" / "haproxy-3.4" / "haproxy")
"""HAProxy 3.4, found as scripts/test finds it."""


def native_config(lab: Lab, store: Path, names: list[str]) -> str:
    """HAProxy 3.4 as its own ACME client on the lab's ports: one crt-store entry per name, ordered
    at start (no certificate on disk: a temporary key pair until then), HTTP-01 answered from the
    map the client fills. The CA's URL names localhost (3.4 checks the name in pebble's certificate,
    never an IP), which the lab's DNS, every name 127.0.0.1, resolves for its HTTP client."""
    loads = "".join(f'    load crt "{name}.pem" acme pebble domains "{name}" alias "{name}"\n' for name in names)
    return f"""global
    expose-experimental-directives
    stats socket {store}/admin.sock level admin
    httpclient.ssl.ca-file {lab.ca_bundle}
    httpclient.resolvers.id lab
    httpclient.resolvers.prefer ipv4

resolvers lab
    nameserver challtestsrv {lab.dns_server}

acme pebble
    directory https://localhost:{lab.acme_port}/dir
    contact {EMAIL}
    challenge http-01
    keytype ECDSA
    curves P-256
    map virt@acme

crt-store acme
    crt-base {store}
{loads}
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend http
    bind {lab.https_endpoint.split(":")[0]}:{lab.http_port}
    http-request return status 200 content-type text/plain lf-string "%[path,field(-1,/)].%[path,field(-1,/),map(virt@acme)]\\n" if {{ path_beg '/.well-known/acme-challenge/' }}

frontend https
    bind {lab.https_endpoint} ssl {" ".join(f'crt "@acme/{name}"' for name in names)}
    http-request return status 200 content-type text/plain string "ok"
"""


class NativeHAProxy:
    """HAProxy 3.4 running `native_config` (master-worker) in `store`; the lab's own HAProxy is stopped meanwhile."""

    def __init__(self, lab: Lab, store: Path, names: list[str]) -> None:
        self.lab, self.store, self.names = lab, store, names
        store.mkdir(parents=True, exist_ok=True)
        (store / "haproxy.cfg").write_text(native_config(lab, store, names))
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "NativeHAProxy":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> float:
        """Start it and wait until it answers TLS; return the moment it was started (time.monotonic)."""
        with (self.store / "haproxy.log").open("ab") as log:
            started = time.monotonic()
            self.process = subprocess.Popen([str(HAPROXY_34), "-W", "-f", str(self.store / "haproxy.cfg")],
                                            cwd=self.store, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        _wait(lambda: self._answers(), "HAProxy 3.4", self.process, self.store / "haproxy.log")
        return started

    def _answers(self) -> bool:
        try:
            self.lab.served_certificate_unverified(self.names[0])
        except OSError:
            return False
        return True

    def stop(self) -> None:
        terminate(self.process)

    def reload(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGUSR2)

    def cli(self, command: str) -> str:
        import socket
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.store / "admin.sock"))
            sock.sendall(command.encode() + b"\n")
            return b"".join(iter(functools.partial(sock.recv, 65536), b"")).decode()


def served_from_pebble(lab: Lab, name: str) -> int | None:
    """The serial HAProxy serves for `name` if pebble issued it (chain verified), else None."""
    try:
        return lab.served_certificate(name, timeout=0).serial_number
    except (OSError, ValueError):
        return None


def newly_served(lab: Lab, names: list[str], before: dict[str, int], timeout: float) -> dict[str, int]:
    """The serials of the names served a pebble certificate other than `before`'s, waiting up to `timeout`
    seconds for all of them."""
    deadline, served = time.monotonic() + timeout, {}
    while len(served) < len(names) and time.monotonic() < deadline:
        for name in names:
            serial = served_from_pebble(lab, name)
            if name not in served and serial is not None and serial != before.get(name):
                served[name] = serial
        time.sleep(SERVE_POLL * 4)
    return served


def wait_all_served(lab: Lab, names: list[str], before: dict[str, int], timeout: float = 120.0) -> dict[str, int]:
    """Wait until every name is served a pebble certificate other than `before`'s; return their serials."""
    served = newly_served(lab, names, before, timeout)
    if len(served) < len(names):
        raise BenchError(f"HAProxy served {len(served)} of {len(names)} new certificates within {timeout:.0f} s")
    return served


def native(args: argparse.Namespace, workdir: Path) -> list[tuple[str, str, str]]:
    """The rows of `--native`: (scenario, HAProxy 3.4's ACME client, certrenew)."""
    n, runs = args.certificates, args.runs
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)  # HAProxy's temporary certificates: serial 0
    with Lab(workdir / "lab", pebble_env=PEBBLE_ENV) as lab:
        tool = Certrenew(lab, workdir / "certrenew", args.certrenew)
        tool.issue(["warmup.certrenew.bench.example"])
        one = [tool.issue([f"one{run}.certrenew.bench.example"]).seconds for run in range(runs)]
        names = [f"c{i}.certrenew.bench.example" for i in range(n)]
        batch = tool.fresh(workdir / "certrenew-batch")
        many = batch.issue(names).seconds
        serials = {name: served_from_pebble(lab, name) for name in names}
        lab.reload_haproxy()
        reordered = sum(": renewed" in line or ": issued" in line for line in batch_run(batch).splitlines())
        lab.stop_haproxy()
        lab.start_haproxy()
        lost = sum(served_from_pebble(lab, name) != serials[name] for name in names)
        lab.stop_haproxy()

        with NativeHAProxy(lab, workdir / "native-warmup", ["warmup.native.bench.example"]) as node:
            node.start()
            served = wait_all_served(lab, node.names, {})  # registers the account
            native_one = []
            for _ in range(runs):  # a renewal started by hand: the whole order, as certrenew's issue
                started = time.monotonic()
                node.cli(f"acme renew @acme/{node.names[0]}")
                served = wait_all_served(lab, node.names, served)
                native_one.append(time.monotonic() - started)
        with NativeHAProxy(lab, workdir / "native", [f"c{i}.native.bench.example" for i in range(n)]) as node:
            shutil.copy(workdir / "native-warmup" / "pebble.account.key", node.store)  # registered already
            started = node.start()
            served = wait_all_served(lab, node.names, {})
            native_many = time.monotonic() - started
            node.reload()
            native_reordered = len(newly_served(lab, node.names, served, timeout=60))
            served = {name: served_from_pebble(lab, name) or 0 for name in node.names}
            node.stop()
            node.start()
            native_lost = sum(served_from_pebble(lab, name) != served[name] for name in node.names)
            wait_all_served(lab, node.names, {})
        lab.start_haproxy()
    return [
        ("one certificate, until HAProxy serves it", f"{statistics.median(native_one):.2f} s",
         f"{statistics.median(one):.2f} s"),
        (f"{n} certificates, until HAProxy serves all", f"{native_many:.2f} s", f"{many:.2f} s"),
        (f"orders caused by one reload ({n} certificates)", str(native_reordered), str(reordered)),
        (f"certificates lost by a restart ({n})", str(native_lost), str(lost)),
    ]


def batch_run(tool: "Certrenew") -> str:
    """A `certrenew run` of the tool's config, as a timer would start it; what it printed."""
    result = subprocess.run([str(tool.executable), "run", "--config", str(tool.config)], env=tool.env,
                            capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if result.returncode != 0:
        raise BenchError(f"certrenew run failed: {result.stderr}")
    return result.stdout


@contextlib.contextmanager
def on_path(program: Path):
    """`program` first on PATH as `haproxy`, for the lab and certrenew (as scripts/test does for a test run)."""
    if not os.access(program, os.X_OK):
        raise BenchError(f"no HAProxy 3.4 at {program}: set HAPROXY_BIN")
    with tempfile.TemporaryDirectory(prefix="certrenew-haproxy-") as bin_dir:
        os.symlink(program.resolve(), Path(bin_dir) / "haproxy")
        saved = os.environ["PATH"]
        os.environ["PATH"] = f"{bin_dir}:{saved}"
        try:
            yield
        finally:
            os.environ["PATH"] = saved


def print_native(rows: list[tuple[str, str, str]]) -> None:
    table = [("scenario", "HAProxy 3.4 ACME", "certrenew"), *rows]
    widths = [max(len(line[i]) for line in table) for i in range(3)]
    for number, line in enumerate(table):
        print("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                        for i, (cell, width) in enumerate(zip(line, widths))).rstrip())
        if number == 0:
            print("  ".join("-" * width for width in widths))


def startup_seconds(python: Path, code: str, runs: int, cwd: Path) -> float:
    """Median wall time of a fresh interpreter running `code`, then exiting as the `certrenew`
    command exits (`gc.freeze`, see `certrenew.cli.commands.console`).

    Run in `cwd`, away from the checkout, so `-c` imports the installed certrenew, as
    the `certrenew` command does, and not the sources beside it.
    """
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        run_measured([str(python), "-c", f"{code}; import gc; gc.freeze()"], dict(os.environ), cwd / "startup.log", cwd)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


class PhaseClock:
    """Wall time spent inside chosen functions, by patching them with timing wrappers."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._patches: list[tuple[object, str, object]] = []

    def watch(self, owner: object, attribute: str, phase: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started

        self._patches.append((owner, attribute, original))
        setattr(owner, attribute, timed)

    def restore(self) -> None:
        for owner, attribute, original in reversed(self._patches):
            setattr(owner, attribute, original)


def profile(args: argparse.Namespace, workdir: Path) -> list[tuple[str, float]]:
    """Where one certificate's time goes: startup and imports in fresh interpreters, the rest in-process."""
    from certrenew.acme import orders
    from certrenew.challenge.responder import Responder
    from certrenew.config import CertificateSpec, build_settings
    from certrenew.haproxy.install import Installer
    from certrenew.renewal import issue, preflight, renew

    interpreter = args.certrenew.parent / "python"  # the venv certrenew is installed in
    python = startup_seconds(interpreter, "pass", args.runs, workdir)
    noop_imports = startup_seconds(interpreter, "import certrenew.cli.commands, certrenew.renewal.renew", args.runs, workdir)
    acme_imports = startup_seconds(  # as the CLI imports them: without requests' charset guesser
        interpreter, "import certrenew.cli.commands as cli; cli._without_charset_guessing(); "
        "import certrenew.renewal.renew, certrenew.renewal.issue", args.runs, workdir)
    runs = []
    with Lab(workdir / "lab", pebble_env=PEBBLE_ENV) as lab:
        settings = build_settings({}, environ=certrenew_env(lab, workdir / "state"))
        for run in range(args.runs + 1):  # the first registers the account and is not counted
            domain = f"profile{run}.certrenew.bench.example"
            clock = PhaseClock()
            clock.watch(issue, "generate_key", "key generation and CSR")
            clock.watch(issue, "make_csr", "key generation and CSR")
            clock.watch(issue.Issuer, "_login", "ACME: directory and account")
            clock.watch(orders.AcmeClient, "_create_order", "ACME: new order and authorizations")
            clock.watch(orders.AcmeClient, "_wait_authorizations", "ACME: challenge validation (polling)")
            clock.watch(orders.AcmeClient, "_finalize", "ACME: finalize, issuance, download")
            clock.watch(Responder, "start", "responder start and stop")
            clock.watch(Responder, "__exit__", "responder start and stop")
            clock.watch(Installer, "install", "install: write bundle, hot update over the Runtime API")
            clock.watch(preflight, "probe_all", "pre-flight probe through HAProxy")
            started = time.perf_counter()
            try:
                [outcome] = renew.run(settings, [CertificateSpec(domain, (domain,))])
            finally:
                clock.restore()
            ran = time.perf_counter()
            if outcome.failed:
                raise BenchError(f"{domain}: {outcome.detail}")
            lab.wait_served_serial(domain, serial_of(lab.ssl_dir / f"{domain}.pem"),
                                   timeout=SERVE_TIMEOUT, interval=SERVE_POLL, verify=False)
            phases = dict(clock.seconds)
            phases["other in-process work (state, bundle, threads)"] = ran - started - sum(clock.seconds.values())
            phases["from the end of the run until HAProxy serves it"] = time.perf_counter() - ran
            lab.served_certificate(domain)  # verified, untimed
            runs.append(phases)
    runs = runs[1:]
    breakdown = [
        ("interpreter startup", python),
        ("imports: CLI, config, policy, store (all a no-op run needs)", noop_imports - python),
        ("imports: ACME stack (acme, josepy, requests, cryptography, ...)", acme_imports - noop_imports),
    ]
    return breakdown + [(phase, statistics.median(run.get(phase, 0.0) for run in runs)) for phase in runs[0]]


def print_profile(breakdown: list[tuple[str, float]]) -> None:
    width = max(len(phase) for phase, _ in breakdown)
    for phase, seconds in breakdown:
        print(f"{phase.ljust(width)}  {seconds * 1000:6.0f} ms")
    print(f"{'total'.ljust(width)}  {sum(seconds for _, seconds in breakdown) * 1000:6.0f} ms")


def write_scale_state(home: Path, count: int) -> Path:
    """A config of `count` certificates, each with a record not yet due and a bundle in the ssl dir.

    Records are written in the store's own format (`encode`), bundles are placeholders:
    a no-op run reads the records only, and lists the ssl dir for stale temps. Each
    certificate's directory and record are dated as they would be, at its issue 10 days ago:
    the no-op runs' schedule trusts only what has not just changed (`state/schedule.py`).
    """
    from certrenew.state.store import CertificateRecord, encode

    state, ssl_dir = home / "state", home / "ssl"
    ssl_dir.mkdir(parents=True)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    tables = []
    for index in range(count):
        name = f"c{index}.scale.bench.example"
        issued = now - datetime.timedelta(days=10, seconds=index)
        record = CertificateRecord(
            name, [name, f"www.{name}"], "ecdsa-p256", serial=format(index + 1, "x"), not_before=issued,
            not_after=issued + datetime.timedelta(days=90), issued_at=issued,
            ari_window_start=issued + datetime.timedelta(days=59), ari_window_end=issued + datetime.timedelta(days=61),
            ari_renew_at=issued + datetime.timedelta(days=60), ari_next_check=now + datetime.timedelta(hours=6))
        directory = state / "certificates" / name
        directory.mkdir(parents=True)
        (directory / "meta.json").write_bytes(encode(record.to_json()))
        (directory / "current.pem").write_text("placeholder\n")
        for written in (directory / "meta.json", directory):
            os.utime(written, ns=(int(issued.timestamp()) * 10**9,) * 2)
        (ssl_dir / f"{name}.pem").write_text("placeholder\n")
        tables.append(f'[[certificate]]\ndomains = ["{name}", "www.{name}"]\n')
    config = home / "certrenew.toml"
    config.write_text(f'state_dir = "{state}"\nssl_dir = "{ssl_dir}"\n'
                      'directory = "https://127.0.0.1:9/unreachable"\n\n' + "\n".join(tables))
    return config


def scale(args: argparse.Namespace, workdir: Path) -> list[tuple[str, Sample]]:
    """Median no-op `run` and `status` over `args.scale` certificates, whole processes, and their peak RSS."""
    config = write_scale_state(workdir, args.scale)
    log = workdir / "commands.log"
    env = dict(os.environ)
    noop = [str(args.certrenew), "run", "--config", str(config), "-q"]
    commands = {"no-op run": noop, NOTHING_KEPT: noop, "status": [str(args.certrenew), "status", "--config", str(config)]}
    run_measured([str(args.certrenew), "run", "--config", str(config)], env, log)  # warms the page cache too
    if log.read_text().count(": unchanged: not due until") != args.scale:
        raise BenchError(f"the warm-up run was not a no-op over {args.scale} certificates:\n{log_tail(log)}")
    schedule = workdir / "state" / SCHEDULE
    if len(json.loads(schedule.read_bytes())["certificates"]) != args.scale:
        raise BenchError(f"the warm-up run did not keep {args.scale} certificates in {schedule}")
    figures = []
    for scenario, argv in commands.items():
        samples = []
        for _ in range(args.runs):
            if scenario == NOTHING_KEPT:
                schedule.unlink()  # as the first run after an upgrade: every record read
            started = time.perf_counter()
            usage = run_measured(argv, env, log)  # exit 1 (a failure, an unhealthy status) raises
            samples.append(Sample(time.perf_counter() - started, usage))
        figures.append((scenario, Sample(median(samples, lambda s: s.seconds),
                                         Usage(int(median(samples, lambda s: s.usage.max_rss_kib)),
                                               median(samples, lambda s: s.usage.cpu_seconds)))))
    return figures


DAEMON_VALIDITY = 30
"""Seconds pebble's certificates live in --daemon: each falls due (half its lifetime) 15 s after issuance."""
DAEMON_NAME = "due.bench.example"


def daemon_latency(args: argparse.Namespace, workdir: Path) -> list[float]:
    """Seconds from each renewal time to HAProxy serving the renewed certificate, `args.runs` renewals in a row."""
    with Lab(workdir / "lab", pebble_env=PEBBLE_ENV, certificate_validity=DAEMON_VALIDITY) as lab:
        state = workdir / "state"
        config = workdir / "certrenew.toml"
        config.write_text(f'[[certificate]]\ndomains = ["{DAEMON_NAME}"]\n')
        log = workdir / "daemon.log"
        with log.open("w") as output:
            daemon = subprocess.Popen([str(args.certrenew), "daemon", "--config", str(config)],
                                      env={**os.environ, **certrenew_env(lab, state)}, stdin=subprocess.DEVNULL,
                                      stdout=output, stderr=output)
        try:
            store = FileStore(state)
            record = _wait(lambda: store.load_record(DAEMON_NAME), "the first issuance", daemon, log)
            samples = []
            for _ in range(args.runs):
                due, old = renew_at(record).timestamp(), parse_serial(record.serial)
                _wait(lambda: lab.served_certificate_unverified(DAEMON_NAME).serial_number != old,
                      "the renewed certificate served", daemon, log, timeout=DAEMON_VALIDITY)
                samples.append(time.time() - due)
                if args.verbose:
                    print(f"renewal served {samples[-1] * 1000:.0f} ms after it fell due")
                record = _wait(functools.partial(_renewed, store, old), "the renewal recorded", daemon, log)
        finally:
            terminate(daemon)
    return samples


def _renewed(store: FileStore, old_serial: int):
    record = store.load_record(DAEMON_NAME)
    return record if record is not None and parse_serial(record.serial or "0") != old_serial else None


def _wait(ready: Callable, what: str, process: subprocess.Popen, log: Path, timeout: float = SERVE_TIMEOUT):
    """Poll `ready` every SERVE_POLL until it returns something true, while `process` lives."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"the daemon exited with {process.returncode}\n{log_tail(log)}")
        try:
            result = ready()
        except (OSError, AttributeError):  # nothing stored or served yet
            result = None
        if result:
            return result
        time.sleep(SERVE_POLL)
    raise BenchError(f"{what}: not within {timeout:.0f} s\n{log_tail(log)}")


NOTHING_KEPT = "no-op run, no schedule"
"""The no-op run with every record read: its schedule (state/schedule.py) removed before each."""
SCALE_TARGETS = {"no-op run": 0.4, "status": 0.5}
"""Seconds over 10,000 certificates: issue 20's for the no-op run, the scale issue's for status."""


def print_scale(figures: list[tuple[str, Sample]]) -> None:
    for scenario, sample in figures:
        target = f"target <= {SCALE_TARGETS[scenario]} s" if scenario in SCALE_TARGETS else "(a first run: every record read)"
        print(f"{scenario:<22} {sample.seconds:6.2f} s   peak RSS {sample.usage.max_rss_kib / 1024:5.1f} MiB   "
              f"CPU (user+sys) {sample.usage.cpu_seconds:.2f} s   {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--certbot", type=Path, default=REPO_ROOT / ".bench" / "certbot" / "bin" / "certbot")
    parser.add_argument("--certrenew", type=Path, default=REPO_ROOT / ".bench" / "certrenew" / "bin" / "certrenew")
    parser.add_argument("--runs", type=int, default=5, help="runs of the one-certificate and no-op scenarios")
    parser.add_argument("--certificates", type=int, default=100, help="certificates in the batch (default 100)")
    parser.add_argument("--batch-runs", type=int, default=3, help="certrenew's batch runs, each size (default 3)")
    parser.add_argument("--large", type=int, default=1000, metavar="N",
                        help="certificates in certrenew's large batch (default 1000; 0: none); certbot's figure "
                             "is its --certificates run scaled up")
    parser.add_argument("--certbot-batch-runs", type=int, default=1,
                        help="certbot's batch runs (default 1: one takes about 3 s per certificate)")
    parser.add_argument("--profile", action="store_true",
                        help="instead of the comparison, show where certrenew's time for one certificate goes")
    parser.add_argument("--scale", type=int, nargs="?", const=10000, metavar="N",
                        help="instead of the comparison, time a no-op run and status over N certificates "
                             "(default 10000) from synthetic state; needs no certbot, pebble or HAProxy")
    parser.add_argument("--daemon", action="store_true",
                        help="instead of the comparison, time certrenew daemon from a certificate falling due to "
                             "HAProxy serving the renewed one (30-second certificates; needs no certbot)")
    parser.add_argument("--fleet", action="store_true",
                        help="instead of the comparison, a renewal's way to every node of a 3-node fleet on etcd: from "
                             "the store's commit to the last node serving it, and from due to served everywhere")
    parser.add_argument("--native", action="store_true",
                        help="instead of the comparison, HAProxy 3.4's own ACME client beside certrenew, both on "
                             "HAProxy 3.4 (HAPROXY_BIN, or ../shared/haproxy-3.4/haproxy); use --certificates 20")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every run")
    args = parser.parse_args()
    # `kill` must unwind through Lab.__exit__ like Ctrl-C, or pebble and HAProxy outlive the bench.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    if args.scale:
        print(f"certrenew over {args.scale} certificates of one config, nothing due; medians of {args.runs} "
              f"runs, {os.cpu_count()} cores", flush=True)
        with tempfile.TemporaryDirectory(prefix="certrenew-scale-") as workdir:
            print_scale(scale(args, Path(workdir)))
        return
    if args.daemon:
        print(f"certrenew daemon, {DAEMON_VALIDITY}-second certificates from pebble, {args.runs} renewals in a row, "
              f"{os.cpu_count()} cores", flush=True)
        with tempfile.TemporaryDirectory(prefix="certrenew-daemon-") as workdir:
            samples = daemon_latency(args, Path(workdir))
        print(f"due -> HAProxy serves the renewed certificate: median {statistics.median(samples) * 1000:.0f} ms "
              f"(min {min(samples) * 1000:.0f}, max {max(samples) * 1000:.0f})   target < 100 ms")
        return
    if args.fleet:
        with tempfile.TemporaryDirectory(prefix="certrenew-fleet-") as workdir:
            bench_fleet.main(args, Path(workdir))
        return
    if args.native:
        print(f"HAProxy 3.4's ACME client vs certrenew on HAProxy 3.4, against pebble (PEBBLE_VA_NOSLEEP=1) on "
              f"loopback, {os.cpu_count()} cores; one certificate: medians of {args.runs} runs", flush=True)
        with tempfile.TemporaryDirectory(prefix="certrenew-native-") as workdir, on_path(HAPROXY_34):
            print_native(native(args, Path(workdir)))
        return
    if args.profile:
        print(f"certrenew, one certificate, medians of {args.runs} runs", flush=True)
        with tempfile.TemporaryDirectory(prefix="certrenew-profile-") as workdir:
            print_profile(profile(args, Path(workdir)))
        return
    version = subprocess.run([str(args.certbot), "--version"], capture_output=True, text=True).stdout.strip()
    print(f"{version} vs certrenew, against pebble (PEBBLE_VA_NOSLEEP=1) and HAProxy on loopback, "
          f"{os.cpu_count()} cores; medians of {args.runs} runs (one certificate, no-op), "
          f"{args.certbot_batch_runs} certbot and {args.batch_runs} certrenew run(s) of {args.certificates} "
          f"certificates{f', {args.batch_runs} certrenew run(s) of {args.large:,}' if args.large else ''}", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="certrenew-bench-") as workdir:
        rows = bench(args, Path(workdir))
    print()
    print_table(rows)
    if args.large:
        print(f"(x{args.large / args.certificates:g}): certbot's {args.certificates}-certificate run times "
              f"{args.large / args.certificates:g}, not measured")
    print(f"\n(bench took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
