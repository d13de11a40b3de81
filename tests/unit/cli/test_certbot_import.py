"""Reading certbot's lineages: the renewal conf, key types, what is skipped and what cannot be carried over.

The end-to-end import, on lineages a real certbot made, is tests/integration/test_import_certbot.py.
"""

import configparser
import datetime
import ipaddress
import json
import os
import re
from pathlib import Path

import josepy as jose
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from certrenew.cli.certbot_import import TOP, import_certbot, make_plan, read_renewal_conf
from certrenew.config import Settings
from certrenew.errors import CertrenewError, UsageError
from certrenew.pki.keys import key_to_pem, key_type_of
from certrenew.state.store import Account, FileStore
from certrenew.system import limits

SERVER = "https://127.0.0.1:9/directory"
"""No CA answers there, at once: an import's question whether the CA issued a certificate fails without a wait."""

# As certbot 5 writes it, with what configobj adds for other plugins: a quoted value, a nested section.
CONF = """\
version = 5.8.0
archive_dir = /etc/letsencrypt/archive/example.com
cert = /etc/letsencrypt/live/example.com/cert.pem
privkey = /etc/letsencrypt/live/example.com/privkey.pem
chain = /etc/letsencrypt/live/example.com/chain.pem
fullchain = /etc/letsencrypt/live/example.com/fullchain.pem
renew_before_expiry = 30 days

# Options used in the renewal process
[renewalparams]
account = fd446262c1edab4ef7d0ad346efb7451
key_type = ecdsa
server = https://acme-v02.api.letsencrypt.org/directory
authenticator = webroot
webroot_path = /var/www/html,
pre_hook = "systemctl stop nginx, really"
renew_hook = date +%s > /tmp/renewed
preferred_chain = ISRG Root X1
[[webroot_map]]
example.com = /var/www/html
"""


def test_the_renewal_conf_reads_as_certbot_wrote_it():
    conf = read_renewal_conf(CONF)
    assert conf[TOP]["archive_dir"] == "/etc/letsencrypt/archive/example.com"
    assert conf[TOP]["renew_before_expiry"] == "30 days"
    params = conf["renewalparams"]
    assert params["server"] == "https://acme-v02.api.letsencrypt.org/directory"
    assert params["pre_hook"] == "systemctl stop nginx, really"  # unquoted
    assert params["renew_hook"] == "date +%s > /tmp/renewed"  # no interpolation
    assert conf["[webroot_map]"] == {"example.com": "/var/www/html"}


@pytest.mark.parametrize("broken", ["account = a\naccount = b\n", "not a key value pair\n"])
def test_a_broken_renewal_conf_is_an_error_not_a_guess(broken):
    with pytest.raises(configparser.Error):
        read_renewal_conf(CONF.replace("[[webroot_map]]", broken + "[[webroot_map]]"))


@pytest.mark.parametrize("make_key, expected", [
    (lambda: ec.generate_private_key(ec.SECP256R1()), "ecdsa-p256"),
    (lambda: ec.generate_private_key(ec.SECP384R1()), "ecdsa-p384"),
    (lambda: rsa.generate_private_key(65537, 2048), "rsa2048"),
    (lambda: rsa.generate_private_key(65537, 3072), "rsa3072"),
    (lambda: ec.generate_private_key(ec.SECP521R1()), None),
    (lambda: rsa.generate_private_key(65537, 1024), None),
    (lambda: ed25519.Ed25519PrivateKey.generate(), None),
])
def test_certbot_key_types_map_to_certrenews_or_to_none(make_key, expected):
    assert key_type_of(make_key().public_key()) == expected


def lineage(root: Path, name: str, key, names: list, params: str = "", must_staple: bool = False,
            self_signed: bool = False, valid_days: tuple[int, int] = (0, 90)) -> None:
    """A lineage laid out as certbot lays it out, its certificate issued by a test CA (or `self_signed`)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = key if self_signed else ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name if self_signed else "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now + datetime.timedelta(days=valid_days[0]))
               .not_valid_after(now + datetime.timedelta(days=valid_days[1]))
               .add_extension(x509.SubjectAlternativeName(names), critical=False))
    if must_staple:
        builder = builder.add_extension(x509.TLSFeature([x509.TLSFeatureType.status_request]), critical=False)
    signer = key if self_signed else ca_key
    cert = builder.sign(signer, None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    chain = b"" if self_signed else ca.public_bytes(Encoding.PEM)
    archive, live = root / "archive" / name, root / "live" / name
    archive.mkdir(parents=True)
    live.mkdir(parents=True)
    for file, data in (("fullchain", cert.public_bytes(Encoding.PEM) + chain), ("privkey", key_to_pem(key))):
        (archive / f"{file}1.pem").write_bytes(data)
        os.symlink(f"../../archive/{name}/{file}1.pem", live / f"{file}.pem")
    (root / "renewal").mkdir(exist_ok=True)
    (root / "renewal" / f"{name}.conf").write_text(
        f"version = 5.8.0\n[renewalparams]\naccount = acct\nserver = {SERVER}\n{params}")
    account = root / "accounts" / "127.0.0.1:9" / "directory" / "acct"
    account.mkdir(parents=True, exist_ok=True)
    (account / "private_key.json").write_text(jose.JWKRSA(key=rsa.generate_private_key(65537, 2048)).json_dumps())
    (account / "regr.json").write_text(json.dumps({"body": {}, "uri": "https://acme.test/acct/1"}))


def plan(tmp_path: Path):
    settings = Settings.of(directory=SERVER, state_dir=tmp_path / "state", ssl_dir=tmp_path / "ssl")
    return make_plan(settings, tmp_path / "letsencrypt", tmp_path / "certrenew.toml", None, force=False)


def test_what_certrenew_cannot_issue_is_skipped_and_named(tmp_path):
    root = tmp_path / "letsencrypt"
    lineage(root, "p521.example", ec.generate_private_key(ec.SECP521R1()), [x509.DNSName("p521.example")])
    lineage(root, "wild.example", ec.generate_private_key(ec.SECP256R1()), [x509.DNSName("*.wild.example")])
    lineage(root, "ip.example", ec.generate_private_key(ec.SECP256R1()),
            [x509.DNSName("ip.example"), x509.IPAddress(ipaddress.ip_address("192.0.2.1"))])
    result = plan(tmp_path)
    assert result.takeovers == []
    assert "ECDSA secp521r1, a type certrenew does not issue" in result.skipped["p521.example"]
    assert "wildcard" in result.skipped["wild.example"]
    assert "IP addresses" in result.skipped["ip.example"]


def test_what_certrenew_does_not_do_is_listed_one_line_each(tmp_path):
    params = ("authenticator = webroot\nwebroot_path = /var/www/html,\ninstaller = nginx\npre_hook = stop\n"
              "post_hook = start\nrenew_hook = notify\npreferred_chain = ISRG Root X1\nreuse_key = True\n")
    root = tmp_path / "letsencrypt"
    lineage(root, "example.com", ec.generate_private_key(ec.SECP256R1()),
            [x509.DNSName("www.example.com"), x509.DNSName("example.com")], params, must_staple=True)
    (root / "renewal-hooks" / "deploy").mkdir(parents=True)
    (root / "renewal-hooks" / "deploy" / "reload-haproxy").write_text("#!/bin/sh\n")
    result = plan(tmp_path)
    [item] = result.takeovers
    assert item.spec.domains == ("example.com", "www.example.com")  # the lineage's name first
    assert [note.split(":")[0] for note in item.notes] == [
        "authenticator webroot (/var/www/html)", "installer nginx", "pre hook 'stop'", "post hook 'start'",
        "deploy hook 'notify'", "preferred_chain 'ISRG Root X1'", "must-staple", "reuse_key"]
    assert result.notes[0].startswith(f"certbot: the CA at {SERVER} could not be asked whether it issued these "
                                      "certificates (connection failed")  # no such CA here
    assert result.notes[1:] == [f"certbot: not carried over: {root / 'renewal-hooks/deploy/reload-haproxy'} "
                                "(a deploy hook for every certificate): certrenew does not run it"]
    assert result.account.uri == "https://acme.test/acct/1" and b"PRIVATE KEY" in result.account.key_pem


def test_an_account_certrenew_already_has_for_the_ca_is_kept(tmp_path):
    lineage(tmp_path / "letsencrypt", "example.com", ec.generate_private_key(ec.SECP256R1()),
            [x509.DNSName("example.com")])
    FileStore(tmp_path / "state").save_account(SERVER, Account(key_to_pem(ec.generate_private_key(ec.SECP256R1())),
                                                               "https://acme.test/acct/mine"))
    result = plan(tmp_path)
    assert result.account is None
    assert result.takeovers[0].notes == [f"certbot's account acct: certrenew renews with the account it already had "
                                         f"for {SERVER} (one account per CA)"]
    assert not any(line.startswith("account:") for line in result.lines(dry_run=False))


@pytest.mark.parametrize("uri", [5, None, ["https://acme.test/acct/1"], "acct/1"])
def test_an_account_uri_that_is_not_an_https_url_is_refused_not_stored(tmp_path, uri):
    """Stored as it came, a number made the account file unreadable: every later run failed on it."""
    root = tmp_path / "letsencrypt"
    lineage(root, "example.com", ec.generate_private_key(ec.SECP256R1()), [x509.DNSName("example.com")])
    (root / "accounts" / "127.0.0.1:9" / "directory" / "acct" / "regr.json").write_text(json.dumps({"uri": uri}))
    with pytest.raises(UsageError, match="certbot account acct: malformed account files .*not an https:// URL"):
        plan(tmp_path)


def test_a_fifo_named_like_a_bundle_in_the_ssl_dir_is_passed_over_not_waited_on(tmp_path):
    import threading

    lineage(tmp_path / "letsencrypt", "example.com", ec.generate_private_key(ec.SECP256R1()),
            [x509.DNSName("example.com")])
    (tmp_path / "ssl").mkdir()
    os.mkfifo(tmp_path / "ssl" / "example.com.pem")  # nobody ever writes to it: a plain read blocks for ever
    result = []
    worker = threading.Thread(target=lambda: result.append(plan(tmp_path)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert result, "import waited on a FIFO in the ssl dir"
    assert any("holds another certificate" in note for note in result[0].takeovers[0].ssl_dir)


@pytest.mark.parametrize(("file", "make", "said"), [
    ("fullchain", os.mkfifo, r"is a named pipe \(FIFO\), not a PEM file"),
    ("privkey", lambda path: os.symlink("/dev/zero", path), r"is a character device, not a PEM file"),
    ("fullchain", lambda path: path.write_bytes(b"#" * (limits.MAX_BUNDLE + 1)),
     r"is larger than any PEM file \(over 2 MiB\)"),
])
def test_a_live_file_that_is_no_pem_file_is_refused_in_one_line_not_waited_on_or_read_whole(tmp_path, file, make,
                                                                                             said):
    import threading

    root = tmp_path / "letsencrypt"
    lineage(root, "example.com", ec.generate_private_key(ec.SECP256R1()), [x509.DNSName("example.com")])
    target = root / "archive" / "example.com" / f"{file}1.pem"  # where live/'s link leads
    target.unlink()
    make(target)
    raised = []

    def attempt():
        try:
            plan(tmp_path)
        except UsageError as error:
            raised.append(str(error))
    worker = threading.Thread(target=attempt, daemon=True)  # a plain read of a FIFO blocks for ever
    worker.start()
    worker.join(timeout=10)
    assert len(raised) == 1, "import waited on what is in live/, or took it"
    assert re.fullmatch(rf"example\.com: {re.escape(str(root / 'live' / 'example.com' / file))}\.pem "
                        rf"\(a symbolic link to \.\./\.\./archive/example\.com/{file}1\.pem\) {said}.*: not imported; "
                        r"certbot keeps regular files there", raised[0]), raised[0]


def test_an_import_whose_config_could_not_be_written_is_finished_by_the_same_import_without_force(tmp_path):
    root = tmp_path / "letsencrypt"
    for name in ("a.example", "b.example"):
        lineage(root, name, ec.generate_private_key(ec.SECP256R1()), [x509.DNSName(name)])
    settings = Settings.of(directory=SERVER, state_dir=tmp_path / "state", ssl_dir=tmp_path / "ssl")
    config = tmp_path / "etc" / "certrenew.toml"
    config.parent.write_text("a file where the config's directory goes")
    with pytest.raises(CertrenewError, match=rf"cannot write {re.escape(str(config))}: .*run the same import again"):
        import_certbot(settings, root, config)
    store = FileStore(settings.state_dir)
    assert store.names() == ["a.example", "b.example"] and not config.exists()  # half done: the state, no config
    config.parent.unlink()
    plan = import_certbot(settings, root, config)  # the same import, no --force
    assert [item.spec.name for item in plan.takeovers] == ["a.example", "b.example"]
    assert not any(item.managed for item in plan.takeovers)  # its own work, not "replacing what certrenew had"
    assert config.read_text().count("[[certificate]]") == 2
    with pytest.raises(UsageError, match="certrenew already manages"):  # now done: a third is refused as before
        import_certbot(settings, root, config)


@pytest.mark.parametrize(("kind", "said"), [
    ({"self_signed": True, "valid_days": (0, 36525)}, "its certificate is self-signed, not issued by a CA"),
    ({"valid_days": (-90, -1)}, "it expired on "),
    ({"valid_days": (2, 92)}, "it is not valid before "),
])
def test_a_certificate_no_ca_issued_or_not_valid_now_is_skipped_not_imported(tmp_path, kind, said):
    root = tmp_path / "letsencrypt"
    lineage(root, "example.com", ec.generate_private_key(ec.SECP256R1()), [x509.DNSName("example.com")], **kind)
    lineage(root, "good.example", ec.generate_private_key(ec.SECP256R1()), [x509.DNSName("good.example")])
    result = plan(tmp_path)
    assert [item.spec.name for item in result.takeovers] == ["good.example"]  # the others go on
    assert result.skipped["example.com"].startswith(f"{root / 'live' / 'example.com' / 'fullchain.pem'}: {said}")
    assert result.skipped["example.com"].endswith("; certbot keeps it, or add it to the config for certrenew to order")


def test_a_chain_whose_next_certificate_did_not_sign_the_leaf_is_skipped(tmp_path):
    root = tmp_path / "letsencrypt"
    lineage(root, "example.com", ec.generate_private_key(ec.SECP256R1()), [x509.DNSName("example.com")])
    lineage(root, "other.example", ec.generate_private_key(ec.SECP256R1()), [x509.DNSName("other.example")])
    fullchain = root / "archive" / "example.com" / "fullchain1.pem"
    other_ca = (root / "archive" / "other.example" / "fullchain1.pem").read_bytes().split(b"-----END CERTIFICATE-----\n")[1]
    fullchain.write_bytes(fullchain.read_bytes().split(b"-----END CERTIFICATE-----\n")[0] + b"-----END CERTIFICATE-----\n"
                          + other_ca + b"-----END CERTIFICATE-----\n")
    assert "its chain is broken: certificate 1 (CN=example.com) is not signed by the next one (CN=test CA)" in (
        plan(tmp_path).skipped["example.com"])


@pytest.mark.parametrize(("file", "make", "said"), [
    ("renewal/example.com.conf", lambda path: os.symlink("/dev/zero", path), "is a character device, not a renewal conf"),
    ("renewal/example.com.conf", os.mkfifo, r"is a named pipe \(FIFO\), not a renewal conf"),
    ("accounts/127.0.0.1:9/directory/acct/regr.json", os.mkfifo, r"is a named pipe \(FIFO\), not a certbot account file"),
    ("accounts/127.0.0.1:9/directory/acct/private_key.json", lambda path: os.symlink("/dev/zero", path),
     "is a character device, not a certbot account file"),
])
def test_every_certbot_file_must_be_a_regular_file_read_bounded(tmp_path, file, make, said):
    """/dev/zero read until MemoryError, and a FIFO hung the import."""
    import threading

    root = tmp_path / "letsencrypt"
    lineage(root, "example.com", ec.generate_private_key(ec.SECP256R1()), [x509.DNSName("example.com")])
    (root / file).unlink()
    make(root / file)
    raised = []

    def attempt():
        try:
            plan(tmp_path)
        except UsageError as error:
            raised.append(str(error))
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert len(raised) == 1, "import waited on a certbot file, or read it whole"
    assert re.search(rf"{re.escape(str(root / file))} .*{said}: not imported; certbot keeps regular files there",
                     raised[0]), raised[0]
