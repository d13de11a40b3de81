"""External account binding (RFC 8555 section 7.3.4) against a pebble that requires it:
an account is created only with the key id and HMAC key the CA gave, once; later runs need neither."""

import base64
import json
import secrets

import pytest

from certrenew.pki.bundle import leaf_info
from tests.harness.lab import Lab

pytestmark = pytest.mark.haproxy

NAME = "site.example"
KID = "kid-certrenew"
KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def key_file(tmp_path, key: str):
    path = tmp_path / f"eab-{secrets.token_hex(4)}.key"
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path


def eab(path) -> dict[str, str]:
    return {"CERTRENEW_EAB_KID": KID, "CERTRENEW_EAB_HMAC_KEY_FILE": str(path)}


def error_line(result) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def no_backoff(lab) -> None:
    meta = json.loads((lab.state_dir / "certificates" / NAME / "meta.json").read_text())
    assert meta["failures"] >= 1 and meta["next_attempt"] is None, meta


def test_an_account_is_created_only_with_the_binding_the_ca_gave(tmp_path):
    with Lab(tmp_path / "lab", eab_keys={KID: KEY}) as lab:
        without = error_line(lab.certrenew(NAME, "-q"))
        assert "requires newAccount requests must include a value for the 'externalAccountBinding'" in without
        assert "pass --eab-kid and --eab-hmac-key-file" in without, without
        no_backoff(lab)

        wrong = key_file(tmp_path, base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
        refused = error_line(lab.certrenew(NAME, "-q", env=eab(wrong)))
        assert f"the binding of key id {KID!r} did not verify" in refused, refused
        assert KEY not in refused and wrong.read_text().strip() not in refused  # no secret in the log
        no_backoff(lab)  # the operator's mistake: the run after the fix goes ahead at once

        right = key_file(tmp_path, KEY)
        issued = lab.certrenew(NAME, env=eab(right))
        assert issued.returncode == 0, issued.stderr
        serial = leaf_info((lab.ssl_dir / f"{NAME}.pem").read_bytes()).serial
        lab.wait_served_serial(NAME, serial)

        right.unlink()  # the account exists: no binding is asked for, nor the key file read
        renewed = lab.certrenew(NAME, "--force", env={**eab(right)})
        assert renewed.returncode == 0, renewed.stderr
        lab.wait_served_serial(NAME, leaf_info((lab.ssl_dir / f"{NAME}.pem").read_bytes()).serial)
        again = lab.certrenew(NAME, "--force")
        assert again.returncode == 0, again.stderr


def test_check_reads_the_key_file_as_registering_will(tmp_path):
    with Lab(tmp_path / "lab", eab_keys={KID: KEY}) as lab:
        path = key_file(tmp_path, KEY)
        checked = lab.certrenew("check", env=eab(path))
        assert f"ok   external account binding {KID!r}: {path} holds a key" in checked.stdout, checked.stdout
        path.chmod(0o644)
        checked = lab.certrenew("check", env=eab(path))
        assert (f"FAIL external account binding {KID!r}: EAB HMAC key file (--eab-hmac-key-file) {path} is open to "
                "others (mode 0644): chmod 600 it") in checked.stdout, checked.stdout
        assert checked.returncode == 1 and KEY not in checked.stdout + checked.stderr
