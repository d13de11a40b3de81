"""Install one renewed certificate into an HAProxy holding many, by hot update and by reload.

HAProxy (the shipped config, in the test lab) starts with COUNT certificates from one
throw-away CA. Each round replaces one of them through certrenew's Installer, with a
served-certificate check, while two clients keep requesting through HAProxy: one
opening a new TLS connection per request, one reusing a keep-alive connection. The
figures are the time until the new certificate is served and the requests that failed.
"""

import argparse
import datetime
import os
import socket
import ssl
import statistics
import tempfile
import threading
import time
from pathlib import Path

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from certrenew.haproxy.install import Installer  # noqa: E402
from certrenew.pki.bundle import build_bundle  # noqa: E402
from certrenew.pki.keys import generate_key, key_to_pem  # noqa: E402
from tests.harness.lab import Lab

REQUEST_TIMEOUT = 5.0


class ThrowawayCA:
    """One CA key signing every benchmark certificate: fast, and nothing is trusted outside this run."""

    def __init__(self) -> None:
        self.key = generate_key("ecdsa-p256")
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certrenew bench CA")])
        self.cert = self._builder(self.name, self.key.public_key()).add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(self.key, hashes.SHA256())

    def _builder(self, subject: x509.Name, public_key) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30)))

    def bundle(self, domain: str) -> bytes:
        key = generate_key("ecdsa-p256")
        leaf = self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]), key.public_key()) \
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False) \
            .sign(self.key, hashes.SHA256())
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, self.cert))
        return build_bundle(chain, key_to_pem(key))


class Clients:
    """Two request loops through HAProxy for one SNI name, counting successes and failures."""

    def __init__(self, port: int, sni: str) -> None:
        self.port, self.sni = port, sni
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.check_hostname, self.context.verify_mode = False, ssl.CERT_NONE
        self.counts = {"new connection": [0, 0], "keep-alive": [0, 0]}
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._fresh, daemon=True),
                        threading.Thread(target=self._keep_alive, daemon=True)]

    def __enter__(self) -> "Clients":
        for thread in self.threads:
            thread.start()
        time.sleep(0.3)  # both loops running before the install starts
        return self

    def __exit__(self, *exc_info) -> None:
        time.sleep(0.3)  # and still running after it ends
        self.stop.set()
        for thread in self.threads:
            thread.join(2 * REQUEST_TIMEOUT)

    def _connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=REQUEST_TIMEOUT)
        return self.context.wrap_socket(raw, server_hostname=self.sni)

    def _request(self, tls: ssl.SSLSocket, close: bool) -> bool:
        """One GET; True if the server keeps the connection open for another."""
        header = "Connection: close\r\n" if close else ""
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {self.sni}\r\n{header}\r\n".encode())
        answer = b""
        while not answer.endswith(b"ok"):
            chunk = tls.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the answer was complete")
            answer += chunk
        if not answer.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(answer[:40])
        return b"connection: close" not in answer.lower()

    def _count(self, kind: str, ok: bool) -> None:
        self.counts[kind][0 if ok else 1] += 1

    def _fresh(self) -> None:
        while not self.stop.is_set():
            try:
                with self._connect() as tls:
                    self._request(tls, close=True)
                self._count("new connection", True)
            except OSError:
                self._count("new connection", False)

    def _keep_alive(self) -> None:
        tls = None
        while not self.stop.is_set():
            try:
                tls = tls or self._connect()
                if not self._request(tls, close=False):
                    tls.close()
                    tls = None  # a graceful close asked for by HAProxy: not a failure
                self._count("keep-alive", True)
            except OSError:
                self._count("keep-alive", False)
                if tls is not None:
                    tls.close()
                tls = None
            time.sleep(0.001)
        if tls is not None:
            tls.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="certificates HAProxy loads (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="installs per method (default 3)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="certrenew-bench-") as workdir:
        ca = ThrowawayCA()
        ssl_dir = Path(workdir) / "lab" / "ssl"
        ssl_dir.mkdir(parents=True)
        started = time.monotonic()
        names = [f"site{index:04d}.bench.example" for index in range(args.count)]
        for name in names:
            fd = os.open(ssl_dir / f"{name}.pem", os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(ca.bundle(name))
        print(f"generated {args.count} certificates in {time.monotonic() - started:.1f} s")

        started = time.monotonic()
        with Lab(Path(workdir) / "lab") as lab:
            print(f"HAProxy {lab.https_endpoint} up with {args.count} certificates in "
                  f"{time.monotonic() - started:.1f} s")
            target = names[len(names) // 2]
            methods = {
                "hot update": Installer(ssl_dir, "false", [str(lab.admin_socket)], (), [lab.https_endpoint]),
                "reload": Installer(ssl_dir, lab.reload_command, (), (), [lab.https_endpoint]),
            }
            print(f"\ninstalling a renewed {target} ({args.rounds} rounds per method), time until it is served:")
            for method, installer in methods.items():
                times, failed, total = [], {}, {}
                for _ in range(args.rounds):
                    bundle = ca.bundle(target)
                    with Clients(lab.https_port, target) as clients:
                        begin = time.monotonic()
                        [result] = installer.install({target: bundle})
                        times.append(time.monotonic() - begin)
                    assert result.method == method, result
                    for kind, (ok, bad) in clients.counts.items():
                        failed[kind] = failed.get(kind, 0) + bad
                        total[kind] = total.get(kind, 0) + ok + bad
                runs = ", ".join(f"{t * 1000:.0f}" for t in times)
                load = "; ".join(f"{kind}: {failed[kind]} failed of {total[kind]}" for kind in total)
                print(f"  {method:10s} median {statistics.median(times) * 1000:7.0f} ms  (rounds: {runs} ms)  "
                      f"requests during installs: {load}")


if __name__ == "__main__":
    main()
