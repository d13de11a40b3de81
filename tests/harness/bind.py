"""A real BIND 9 on loopback: the authoritative server DNS-01 tests publish into.

`named -g` serves example.test (and lagging.test, below) on a free loopback port and
accepts RFC 2136 updates of TXT records signed with a TSIG key made by `tsig-keygen`
(`update-policy { grant <key> zonesub TXT; }`, as docs/dns-01.md tells operators to write).
Every name under the zone is 127.0.0.1 (apex and wildcard A records), so a CA pointed at
this server (pebble -dnsserver) still reaches HAProxy for HTTP-01.

Everything lives in one work dir (config, zones, journals, pid file) and named needs no
privilege: it binds an unprivileged port and reads nothing under /etc/bind. Started by
root it stays root (no -u, which would need the work dir to belong to that user), which
is harmless on loopback; run by an ordinary user (e.g. nobody) it works the same.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from tests.harness.lab import LOOPBACK, START_TIMEOUT, free_ports, terminate, wait_until

ZONE = "example.test"
KEY_NAME = "certrenew-test"
CAA_ISSUER = "pebble.test"

ZONE_FILE = f"""\
$TTL 60
@       SOA   ns1.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 60
@       NS    ns1.{ZONE}.
ns1     A     {LOOPBACK}
@       A     {LOOPBACK}
*       A     {LOOPBACK}
@       CAA   0 issue "{CAA_ISSUER}"
other-ca  CAA 0 issue "ca.invalid"
other-ca  A   {LOOPBACK}
pinned    CAA 0 issue "{CAA_ISSUER}; accounturi=https://ca.invalid/acct/1"
pinned    A   {LOOPBACK}
dns-only  CAA 0 issue "{CAA_ISSUER}; validationmethods=dns-01"
dns-only  A   {LOOPBACK}
"""
"""ns1 is 127.0.0.1: the zone's NS set names this very server, as for a primary that is also public.
CAA (RFC 8659) lets only CAA_ISSUER (the lab's pebble, by --caa-identity) issue for the zone; three
names forbid it: another CA's, another account's (RFC 8657 accounturi), another challenge's."""

LAGGING_ZONE = "lagging.test"
LAGGING_ZONE_FILE = f"""\
$TTL 60
@       SOA   ns1.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 60
@       NS    ns1.{ZONE}.
@       NS    ns2.{LAGGING_ZONE}.
@       NS    ns.unresolvable.invalid.
ns2     A     127.0.0.2
"""
"""A zone with a second name server that never gets the update (nothing answers DNS on 127.0.0.2),
and one whose name does not resolve: a propagation wait must notice the first and skip the second."""

ZONES = {ZONE: ZONE_FILE, LAGGING_ZONE: LAGGING_ZONE_FILE}


def sbin(program: str) -> str:
    """The path of a BIND program: named and tsig-keygen are in sbin, which an ordinary user's PATH may lack."""
    return shutil.which(program, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") or program


class Bind:
    """One named process, authoritative for example.test, updatable with `key_file`.

    Use as a context manager. `address` is "127.0.0.1:PORT", as --dns-server and
    pebble's -dnsserver take it.
    """

    def __init__(self, workdir: Path, algorithm: str = "hmac-sha256"):
        self.workdir = Path(workdir).resolve()
        self.port = free_ports(1)[0]  # the first port of free_ports is free for UDP too
        self.address = f"{LOOPBACK}:{self.port}"
        self.key_file = self.workdir / "tsig.key"
        self.algorithm = algorithm
        self.log = self.workdir / "named.log"
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> Bind:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        """Write key, zone and config, start named in the foreground, and wait until it answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        keygen = subprocess.run([sbin("tsig-keygen"), "-a", self.algorithm, KEY_NAME],
                                capture_output=True, text=True, check=True, timeout=START_TIMEOUT)
        self.key_file.write_text(keygen.stdout)
        self.key_file.chmod(0o600)
        for zone, text in ZONES.items():
            (self.workdir / f"{zone}.db").write_text(text)
        config = self.workdir / "named.conf"
        config.write_text(f"""\
include "{self.key_file}";
options {{
    directory "{self.workdir}";
    pid-file "{self.workdir}/named.pid";
    session-keyfile "{self.workdir}/session.key";
    managed-keys-directory "{self.workdir}";
    listen-on port {self.port} {{ {LOOPBACK}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-transfer {{ none; }};
    dnssec-validation no;
    notify no;
}};
controls {{ }};
""" + "".join(f"""\
zone "{zone}" {{
    type primary;
    file "{self.workdir}/{zone}.db";
    update-policy {{ grant {KEY_NAME} zonesub TXT; }};
}};
""" for zone in ZONES))
        with self.log.open("ab") as out:
            # -g: foreground, log to stderr; -n 1: one worker, the machine is shared.
            self._process = subprocess.Popen(
                [sbin("named"), "-g", "-4", "-n", "1", "-c", str(config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
            )
        try:
            wait_until("named", self._answers, self._process, self.log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop named (SIGTERM: it writes its journal and exits); safe to call more than once."""
        terminate(self._process)

    def txt(self, name: str) -> set[str]:
        """The TXT values BIND serves for `name` right now (empty if none)."""
        response = self.query(name, "TXT")
        return {b"".join(rdata.strings).decode() for rrset in response.answer for rdata in rrset}

    def query(self, name: str, rdtype: str) -> dns.message.Message:
        """Ask this BIND directly (no recursion) for `name`."""
        query = dns.message.make_query(name, rdtype)
        return dns.query.udp(query, LOOPBACK, timeout=2, port=self.port)

    def _answers(self) -> bool:
        try:
            response = self.query(ZONE, "SOA")
        except (dns.exception.DNSException, OSError):
            return False
        return response.rcode() == dns.rcode.NOERROR and bool(response.answer)

