"""The EAB HMAC key file is a secret: read only if it is a small private file of ours holding one base64url key."""

import os

import pytest

from certrenew.acme.account import ExternalAccount
from certrenew.errors import UsageError

KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


def account(tmp_path, content: bytes, mode: int = 0o600) -> ExternalAccount:
    path = tmp_path / "eab.key"
    path.write_bytes(content)
    path.chmod(mode)
    return ExternalAccount("kid-1", path)


@pytest.mark.parametrize("content", [KEY.encode(), KEY.encode() + b"\n", b"  " + KEY.encode() + b"==\r\n"])
def test_the_key_is_read_as_the_ca_hands_it_out(tmp_path, content):
    assert account(tmp_path, content).hmac_key() == KEY


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_key_file_others_may_read_is_refused(tmp_path, mode):
    with pytest.raises(UsageError, match=f"open to others .mode {mode:04o}.: chmod 600"):
        account(tmp_path, KEY.encode(), mode).hmac_key()


@pytest.mark.parametrize("content, says", [
    (b"", "does not hold one base64url key"),
    (b"not base64url!", "does not hold one base64url key"),
    (KEY.encode() + b"\n" + KEY.encode(), "does not hold one base64url key"),
    (b"\xff\xfe", "does not hold one base64url key"),
    (b"A" * 5000, "larger than 4096 bytes"),
])
def test_a_key_file_that_is_no_key_is_refused_without_quoting_it(tmp_path, content, says):
    with pytest.raises(UsageError, match=says) as refused:
        account(tmp_path, content).hmac_key()
    assert "not base64url" not in str(refused.value)


def test_a_missing_key_file_or_a_directory_is_refused(tmp_path):
    with pytest.raises(UsageError, match="cannot read it: No such file"):
        ExternalAccount("kid-1", tmp_path / "missing").hmac_key()
    with pytest.raises(UsageError, match="is not a regular file"):
        ExternalAccount("kid-1", tmp_path).hmac_key()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file away")
def test_a_key_file_of_another_user_is_refused(tmp_path):
    key = account(tmp_path, KEY.encode())
    os.chown(key.key_file, 65534, -1)
    with pytest.raises(UsageError, match="owned by uid 65534"):
        key.hmac_key()


def test_a_symbolic_link_to_a_private_key_file_is_followed(tmp_path):
    """A Kubernetes secret volume mounts each key as a symbolic link."""
    key = account(tmp_path, KEY.encode())
    link = tmp_path / "link.key"
    link.symlink_to(key.key_file)
    assert ExternalAccount("kid-1", link).hmac_key() == KEY
