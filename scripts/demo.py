"""Run certrenew against a throw-away pebble + HAProxy lab and show what HAProxy serves."""

import shlex
import sys
import tempfile
from pathlib import Path

from certrenew.pki.bundle import leaf_info  # noqa: E402
from tests.harness.lab import Lab

DOMAINS = ["demo.example", "www.demo.example"]


def command_line(lab: Lab, *args: str) -> str:
    """The whole command as run, its environment included: copied without it, certrenew would order
    from Let's Encrypt's production CA into /var/lib/certrenew."""
    settings = [f"{name}={shlex.quote(value)}" for name, value in lab.certrenew_env.items()]
    return " \\\n    ".join([*settings, f".venv/bin/certrenew {shlex.join(args)}"])


def show(lab: Lab, *args: str) -> None:
    print(f"\n$ {command_line(lab, *args)}")
    result = lab.certrenew(*args)
    sys.stdout.write(result.stderr + result.stdout)
    if result.returncode != 0:
        raise SystemExit(f"certrenew exited {result.returncode}")


def served(lab: Lab, sni: str) -> None:
    cert = lab.served_certificate(sni)
    print(f"  TLS {sni} -> serial {cert.serial_number:x}, issuer {cert.issuer.rfc4514_string()}, "
          f"valid until {cert.not_valid_after_utc:%Y-%m-%d}; chain verified against pebble's root")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="certrenew-demo-") as workdir, Lab(Path(workdir), unix_socket=True) as lab:
        print(f"pebble (ACME CA): {lab.directory_url}, validating HTTP-01 through HAProxy on :{lab.http_port}")
        print(f"HAProxy: http :{lab.http_port} (acme-challenge ACL -> {lab.listen}), https :{lab.https_port}, "
              f"crt {lab.ssl_dir}/")
        print("\nBefore: HAProxy serves only the placeholder:")
        placeholder = lab.served_certificate_unverified(DOMAINS[0])
        print(f"  TLS {DOMAINS[0]} -> {placeholder.subject.rfc4514_string()}")

        show(lab, "--haproxy-socket", str(lab.admin_socket), *DOMAINS)
        bundle = (lab.ssl_dir / f"{DOMAINS[0]}.pem").read_bytes()
        lab.wait_served_serial(DOMAINS[0], leaf_info(bundle).serial)
        print("After:")
        for domain in DOMAINS:
            served(lab, domain)

        show(lab, "--haproxy-socket", str(lab.admin_socket), *DOMAINS)
        print("\nThe second run found nothing due and did not contact the CA.")


if __name__ == "__main__":
    main()
