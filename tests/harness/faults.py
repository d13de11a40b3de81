"""What every fault case checks, and the ledger scripts/faults prints.

After each faulty run a `Guard` checks that the bundle in the ssl dir is the old one
byte for byte or a complete new one, that HAProxy serves a verified certificate for
the name, that no temp file, lock or listening responder is left; then a clean run
must succeed and serve what it installed. A certificate is *lost* when the ssl dir
holds anything else or HAProxy serves nothing valid for the name.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from certrenew.pki.bundle import leaf_info, pem_blocks, serial_hex
from certrenew.pki.keys import load_key

NAME = "site.example"
TEMPS = ".certrenew-*.tmp"
REPORT_ENV = "CERTRENEW_FAULTS_REPORT"
FAST = {"CERTRENEW_TIMEOUT": "20"}
"""Every fault case's runs: a CA that does not answer ends the run in 20 s."""


def public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def complete(bundle: bytes) -> bool:
    """Leaf, at least one chain certificate, and the key that matches the leaf."""
    from cryptography import x509
    try:
        blocks = pem_blocks(bundle)
        certs = [b for b in blocks if b.startswith(b"-----BEGIN CERTIFICATE-----")]
        leaf = x509.load_pem_x509_certificate(certs[0])
        return len(certs) >= 2 and public_der(load_key(bundle).public_key()) == public_der(leaf.public_key())
    except Exception:
        return False


def held_open(port: int, pid: int | str = "self") -> int:
    """How many connections to `port` process `pid` holds open: its socket files that are such a connection.

    /proc/net/tcp alone overcounts: it is read in pieces, and lists a socket the process
    has just closed, or one still waiting in the accept queue, for a moment longer.
    """
    server_ends = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
            server_ends.add(f"socket:[{fields[9]}]")
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            held += os.readlink(fd) in server_ends
        except OSError:  # closed meanwhile
            pass
    return held


class Guard:
    """Runs certrenew for one fault case against a lab and keeps its ledger line."""

    def __init__(self, lab, case: str, env: dict[str, str] | None = None) -> None:
        self.lab, self.case, self.env = lab, case, dict(env or {})
        self.runs = 0
        self.lost = 0
        self.old: bytes | None = None

    @property
    def bundle_path(self) -> Path:
        return self.lab.ssl_dir / f"{NAME}.pem"

    def run(self, *args: str, env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
        self.runs += 1
        return self.lab.certrenew(NAME, *args, env={**self.env, **(env or {})}, timeout=timeout)

    def start(self, *args: str, env: dict | None = None, **popen) -> subprocess.Popen:
        self.runs += 1
        return self.lab.start_certrenew(NAME, *args, env={**self.env, **(env or {})}, **popen)

    def establish(self) -> None:
        """A first certificate, served: what every fault must not lose."""
        self.recover()

    def forget_account(self) -> None:
        """Make the next order a new account's, so the CA has no valid authorization of ours to reuse
        and the order goes through its challenge. pebble reuses one now and then even with
        PEBBLE_AUTHZREUSE=0 (its test is `rand.Intn(100) > percent`: about one order in a hundred),
        and a fault placed at the challenge or the validation then never happens."""
        for account in (self.lab.state_dir / "accounts").iterdir():
            shutil.rmtree(account)

    def survived(self, killed: bool = False, served: bool = True) -> None:
        """After a faulty run: old bundle intact or a complete new one; nothing left behind.

        A SIGKILLed run may leave a temp file (the next run clears it); `served=False`
        when HAProxy is down and cannot be asked.
        """
        bundle = self.bundle_path.read_bytes() if self.bundle_path.exists() else b""
        intact = bundle == self.old or complete(bundle)
        accepted = {leaf_info(self.old).serial}
        if complete(bundle):
            accepted.add(leaf_info(bundle).serial)
        serving = not served or self._serves_one_of(accepted)
        if not (intact and serving):
            self.lost += 1
        assert intact, f"{self.case}: the ssl dir bundle is neither the old one nor complete"
        assert serving, f"{self.case}: HAProxy serves no valid certificate for {NAME}"
        if not killed:
            self.assert_nothing_left()
        self.assert_unlocked()

    def recover(self, expect: str | None = None) -> subprocess.CompletedProcess:
        """A clean run succeeds, and HAProxy serves the bundle it leaves, verified."""
        result = self.run()
        assert result.returncode == 0, f"{self.case}: the clean run failed: {result.stderr}"
        if expect:
            assert expect in result.stdout, result.stdout
        bundle = self.bundle_path.read_bytes()
        if not complete(bundle):
            self.lost += 1
        assert complete(bundle), f"{self.case}: the clean run left an incomplete bundle"
        try:
            self.lab.wait_served_serial(NAME, leaf_info(bundle).serial)
        except Exception:
            self.lost += 1
            raise
        self.assert_nothing_left()
        self.assert_unlocked()
        self.old = bundle
        return result

    def assert_nothing_left(self) -> None:
        found = list(self.lab.ssl_dir.glob(TEMPS)) + list(self.lab.state_dir.rglob(TEMPS))
        temps = [path for path in found if not path.is_dir()]  # a directory so named is not one
        assert not temps, f"{self.case}: temp files left: {temps}"
        with socket.socket() as probe:  # the responder's port is free again
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", self.lab.backend_port))

    def assert_unlocked(self) -> None:
        lock = self.lab.state_dir / "lock"
        if lock.exists():
            with lock.open("rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if a run still holds it

    def _serves_one_of(self, serials: set[str], timeout: float = 5.0) -> bool:
        """Whether HAProxy serves, verified, one of `serials` (a reload may still be under way)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if serial_hex(self.lab.served_certificate(NAME).serial_number) in serials:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def record(self, passed: bool) -> None:
        """Append this case's line to the report file scripts/faults reads, if it asked for one."""
        path = os.environ.get(REPORT_ENV)
        if path:
            with open(path, "a") as report:
                report.write(json.dumps({"case": self.case, "runs": self.runs, "lost": self.lost,
                                         "passed": passed}) + "\n")
