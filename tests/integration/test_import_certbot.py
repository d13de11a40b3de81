"""`certrenew import-certbot` on lineages a real certbot 5.x made against the lab's pebble.

certbot runs as operators ran it behind HAProxy (`certonly --standalone` on the ACL's
backend port), from the venv scripts/setup installs into .bench/certbot.
"""

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from certrenew.acme.ari import ari_cert_id
from certrenew.config import load_config
from certrenew.pki.bundle import leaf_info, serial_hex
from certrenew.pki.keys import key_to_pem
from tests.harness.lab import REPO_ROOT, Lab

CERTBOT = REPO_ROOT / ".bench" / "certbot" / "bin" / "certbot"
LINEAGES = {
    "ec.example": ["-d", "ec.example", "-d", "www.ec.example", "--key-type", "ecdsa"],
    "rsa.example": ["-d", "rsa.example", "--key-type", "rsa", "--rsa-key-size", "2048",
                    "--deploy-hook", "systemctl reload haproxy"],
}
CONFIG = "# the operator's own text stays as it is\nemail = \"ops@example.com\"\n"


def certbot(lab: Lab, home: Path, server: str) -> Path:
    """Issue every lineage of LINEAGES with certbot against `server`; return certbot's config dir."""
    if not CERTBOT.exists():
        pytest.fail(f"certbot is not installed at {CERTBOT}: run scripts/setup")
    for args in LINEAGES.values():
        result = subprocess.run(
            [str(CERTBOT), "certonly", "--standalone", "--non-interactive", "--agree-tos", "--email", "ops@example.com",
             "--server", server, "--http-01-address", "127.0.0.1", "--http-01-port", str(lab.backend_port),
             "--config-dir", str(home / "letsencrypt"), "--work-dir", str(home / "work"),
             "--logs-dir", str(home / "logs"), *args],
            env={**os.environ, "REQUESTS_CA_BUNDLE": str(lab.ca_bundle)}, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
    return home / "letsencrypt"


def tree(root: Path) -> dict[str, str]:
    """Every entry under `root`: content hash, symlink target, mode and mtime, to show nothing changed."""
    if not root.exists():
        return {}
    entries = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        what = (os.readlink(path) if path.is_symlink() else hashlib.sha256(path.read_bytes()).hexdigest()
                if path.is_file() else "dir")
        entries[str(path.relative_to(root))] = f"{what} {stat.st_mode:o} {stat.st_mtime_ns}"
    return entries


def live_cert(certbot_dir: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((certbot_dir / "live" / name / "cert.pem").read_bytes())


def serial_in_ssl_dir(lab: Lab, name: str) -> str:
    return leaf_info((lab.ssl_dir / f"{name}.pem").read_bytes()).serial


def test_import_then_noop_then_certrenew_renews_with_certbots_account_naming_certbots_certificates(lab, ari, tmp_path):
    server = f"{ari.url}/dir"  # pebble with ARI in front, so the renewal can name what it replaces
    certbot_dir = certbot(lab, tmp_path, server)
    # How certbot users fed HAProxy: one under certrenew's file name, one under another.
    for name, file in (("ec.example", "ec.example.pem"), ("rsa.example", "rsa-old.pem")):
        live = certbot_dir / "live" / name
        (lab.ssl_dir / file).write_bytes((live / "fullchain.pem").read_bytes() + (live / "privkey.pem").read_bytes())
    lab.reload_haproxy()
    for name in LINEAGES:
        lab.wait_served_serial(name, serial_hex(live_cert(certbot_dir, name).serial_number))
    config = tmp_path / "certrenew.toml"
    config.write_text(CONFIG)
    before = tree(certbot_dir)
    env = {"CERTRENEW_DIRECTORY": server}

    imported = lab.certrenew("import-certbot", "--certbot-dir", str(certbot_dir), "--config", str(config), env=env)
    assert imported.returncode == 0, imported.stderr
    lines = imported.stdout.splitlines()
    assert "ec.example: imported: ecdsa-p256, ec.example www.ec.example, serial" in lines[0]
    assert "rsa.example: not carried over: deploy hook 'systemctl reload haproxy': certrenew does not run" \
        in imported.stdout
    assert f"rsa.example: ssl dir: {lab.ssl_dir / 'rsa-old.pem'} serves this certificate today, but renewals " \
           "write rsa.example.pem: rename it" in imported.stdout
    assert "ec.example: ssl dir" not in imported.stdout  # already where certrenew will write it
    assert tree(certbot_dir) == before
    assert config.read_text().startswith(CONFIG)
    specs = {spec.name: (spec.domains, spec.key_type) for spec in load_config(config).certificates}
    assert specs == {"ec.example": (("ec.example", "www.ec.example"), "ecdsa-p256"),
                     "rsa.example": (("rsa.example",), "rsa2048")}

    (lab.ssl_dir / "rsa-old.pem").rename(lab.ssl_dir / "rsa.example.pem")  # as that line advises
    lab.reload_haproxy()

    served = {p.name: p.read_bytes() for p in lab.ssl_dir.iterdir()}
    assert set(ari.requests) == {ari_cert_id(live_cert(certbot_dir, name)) for name in LINEAGES}  # the import's proof
    ari.requests.clear()
    noop = lab.certrenew("run", "--config", str(config), env=env)
    assert noop.returncode == 0, noop.stderr
    assert [line.split(":")[:2] for line in noop.stdout.splitlines()] == [
        ["ec.example", " unchanged"], ["rsa.example", " unchanged"]]
    assert {p.name: p.read_bytes() for p in lab.ssl_dir.iterdir()} == served
    # The first run asked the CA about certbot's certificates, as after an issuance.
    assert sorted(ari.requests) == sorted(ari_cert_id(live_cert(certbot_dir, name)) for name in LINEAGES)

    renewed = lab.certrenew("run", "--config", str(config), "--force", "-v", env=env)
    assert renewed.returncode == 0, renewed.stderr
    assert renewed.stdout.count(": renewed:") == 2
    for name in LINEAGES:
        old = live_cert(certbot_dir, name)
        assert f'"replaces": "{ari_cert_id(old)}"' in renewed.stderr  # the newOrder payload, as logged with -v
        new_serial = serial_in_ssl_dir(lab, name)
        assert int(new_serial, 16) != old.serial_number
        lab.wait_served_serial(name, new_serial)
    assert "RSA" in type(lab.served_certificate("rsa.example").public_key()).__name__

    accounts = list((lab.state_dir / "accounts").iterdir())
    assert len(accounts) == 1
    certbot_account = json.loads(next((certbot_dir / "accounts").rglob("regr.json")).read_text())["uri"]
    assert json.loads((accounts[0] / "account.json").read_text())["uri"] == certbot_account
    assert tree(certbot_dir) == before


def test_a_certificate_the_ca_says_another_issued_is_skipped_and_the_others_imported(lab, ari, tmp_path):
    server = f"{ari.url}/dir"
    certbot_dir = certbot(lab, tmp_path, server)
    intermediate = x509.load_pem_x509_certificate(
        requests.get(f"{lab.management_url}/intermediates/0", verify=str(lab.ca_bundle), timeout=5).content)
    ari.issuers = [intermediate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest]
    # Another CA's certificate for the same name, with a chain as good as pebble's.
    other_ca = trustme.CA()
    leaf = other_ca.issue_cert("rsa.example")
    archive = certbot_dir / "archive" / "rsa.example"
    (archive / "fullchain1.pem").write_bytes(leaf.cert_chain_pems[0].bytes() + other_ca.cert_pem.bytes())
    (archive / "privkey1.pem").write_bytes(leaf.private_key_pem.bytes())
    config = tmp_path / "certrenew.toml"
    config.write_text(CONFIG)
    result = lab.certrenew("import-certbot", "--certbot-dir", str(certbot_dir), "--config", str(config),
                           env={"CERTRENEW_DIRECTORY": server})
    assert result.returncode == 0, result.stderr
    assert "ec.example: imported:" in result.stdout
    assert (f"rsa.example: skipped: the CA at {server} does not know its certificate (its renewal information is "
            "404 Not Found): another CA issued it") in result.stdout
    assert [spec.name for spec in load_config(config).certificates] == ["ec.example"]
    assert len(set(ari.requests)) == 2  # each certificate asked about (again when the plan is made under the lock)


CALM = {"PEBBLE_WFE_NONCEREJECT": "0"}
"""certbot gives up when pebble rejects a nonce (5% of them by default) more than once in a row."""


pytestmark = pytest.mark.pebble_env(CALM)  # the `lab` fixture's pebble too


@pytest.fixture(scope="module")
def lineages(tmp_path_factory):
    """certbot's directory after issuing LINEAGES against a lab that is gone: for tests that only read it."""
    home = tmp_path_factory.mktemp("certbot")
    with Lab(home / "lab", pebble_env=CALM) as lab:
        return certbot(lab, home, lab.directory_url), lab.directory_url


@pytest.fixture
def offline(lineages, tmp_path):
    """A copy of the lineages, a config file and the settings to import them with; nothing runs."""
    source, directory = lineages
    certbot_dir = tmp_path / "letsencrypt"
    shutil.copytree(source, certbot_dir, symlinks=True)
    config = tmp_path / "certrenew.toml"
    config.write_text(CONFIG)
    (tmp_path / "ssl").mkdir()
    env = {**os.environ, "CERTRENEW_DIRECTORY": directory, "CERTRENEW_STATE_DIR": str(tmp_path / "state"),
           "CERTRENEW_SSL_DIR": str(tmp_path / "ssl")}

    def import_certbot(*args, certbot_dir=certbot_dir):
        return subprocess.run([sys.executable, "-m", "certrenew", "import-certbot", "--certbot-dir", str(certbot_dir),
                               "--config", str(config), *args], env=env, capture_output=True, text=True, timeout=60)

    import_certbot.certbot_dir, import_certbot.config, import_certbot.state = certbot_dir, config, tmp_path / "state"
    return import_certbot


def unchanged(offline, state_before: dict[str, str]) -> bool:
    return offline.config.read_text() == CONFIG and tree(offline.state) == state_before


def refused(result, message: str) -> bool:
    return (result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1
            and "Traceback" not in result.stderr)


@pytest.mark.haproxy
def test_a_directory_that_is_not_certbots_is_refused(offline, tmp_path):
    result = offline(certbot_dir=tmp_path / "ssl")
    assert refused(result, "is not a certbot configuration directory: no renewal/*.conf in it"), result.stderr
    assert unchanged(offline, {}) and not offline.state.exists()


def break_archive(certbot_dir: Path) -> str:
    (certbot_dir / "archive" / "rsa.example" / "privkey1.pem").unlink()
    return "rsa.example: cannot read"


def swap_key(certbot_dir: Path) -> str:
    shutil.copy(certbot_dir / "live" / "rsa.example" / "privkey.pem", certbot_dir / "archive" / "ec.example" /
                "privkey1.pem")
    return "is not the key of"


def garble_conf(certbot_dir: Path) -> str:
    with (certbot_dir / "renewal" / "ec.example.conf").open("a") as conf:
        conf.write("this line is no key = value pair\nnor this one\n")
    return "ec.example: cannot read"


def drop_account(certbot_dir: Path) -> str:
    shutil.rmtree(certbot_dir / "accounts")
    return "cannot read"


@pytest.mark.parametrize("corrupt", [break_archive, swap_key, garble_conf, drop_account])
def test_a_corrupted_lineage_is_refused_and_nothing_is_written(offline, corrupt):
    message = corrupt(offline.certbot_dir)
    result = offline()
    assert refused(result, message), result.stderr
    assert unchanged(offline, {}) and not offline.state.exists()


def test_unknown_names_are_refused(offline):
    result = offline("ec.example", "nope.example")
    assert refused(result, "no certbot certificate named nope.example"), result.stderr
    assert unchanged(offline, {})


def test_dry_run_prints_the_entries_and_writes_nothing(offline):
    result = offline("--dry-run")
    assert result.returncode == 0, result.stderr
    assert "ec.example: would import" in result.stdout and 'key_type = "rsa2048"' in result.stdout
    assert unchanged(offline, {}) and not offline.state.exists()


def test_a_certificate_certrenew_manages_is_replaced_only_with_force(offline):
    first = offline("rsa.example")
    assert first.returncode == 0, first.stderr
    config, state = offline.config.read_text(), tree(offline.state)
    assert config.count("[[certificate]]") == 1

    again = offline()
    assert refused(again, "rsa.example: certrenew already manages a certificate of that name"), again.stderr
    assert offline.config.read_text() == config and tree(offline.state) == state

    forced = offline("--force")
    assert forced.returncode == 0, forced.stderr
    assert "rsa.example: imported (replacing what certrenew had)" in forced.stdout
    assert offline.config.read_text().count("[[certificate]]") == 2  # rsa.example is not appended twice
    assert (offline.state / "certificates" / "rsa.example" / "previous.pem").exists()


def test_a_self_signed_certificate_in_a_lineage_is_skipped_and_the_others_imported(offline):
    """It was imported, and reported ok until 2093."""
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa.example")])
    now = datetime.datetime.now(datetime.timezone.utc)
    forged = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now)
              .not_valid_after(now + datetime.timedelta(days=36525))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("rsa.example")]), critical=False)
              .sign(key, hashes.SHA256()))
    archive = offline.certbot_dir / "archive" / "rsa.example"
    (archive / "fullchain1.pem").write_bytes(forged.public_bytes(Encoding.PEM))
    (archive / "privkey1.pem").write_bytes(key_to_pem(key))
    result = offline()
    assert result.returncode == 0, result.stderr
    assert "ec.example: imported:" in result.stdout
    assert (f"rsa.example: skipped: {offline.certbot_dir / 'live' / 'rsa.example' / 'fullchain.pem'}: its certificate "
            "is self-signed, not issued by a CA; certbot keeps it") in result.stdout
    assert [spec.name for spec in load_config(offline.config).certificates] == ["ec.example"]
    assert not (offline.state / "certificates" / "rsa.example").exists()


@pytest.mark.parametrize(("make", "said"), [
    (lambda path: os.symlink("/dev/zero", path), " (a symbolic link to /dev/zero) is a character device"),
    (os.mkfifo, " is a named pipe (FIFO)")], ids=["/dev/zero", "FIFO"])
def test_a_renewal_conf_that_is_not_a_regular_file_is_refused_in_one_line_not_read_or_waited_on(offline, make, said):
    conf = offline.certbot_dir / "renewal" / "ec.example.conf"
    conf.unlink()
    make(conf)
    result = offline()  # within the fixture's timeout: a FIFO hung the import, /dev/zero ran it out of memory
    assert refused(result, f"ec.example: {conf}{said}, not a renewal conf: not imported; certbot keeps regular "
                           "files there"), result.stderr
    assert unchanged(offline, {}) and not offline.state.exists()
