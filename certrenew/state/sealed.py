"""Private keys encrypted before they reach a shared store: an etcd backup, a snapshot or a reader
with the role but without the key file gets no private key.

`SealedBackend` wraps any `Backend`: the values the store calls secret (those holding a private
key) are written as AES-GCM under the fleet's key, with the value's key name as associated data,
so a value copied to another key (another certificate's bundle, an account) does not decrypt
there. Moving a value (promote, set aside, archive) reads it in the clear and writes it sealed
under its new name, as any write. A secret value found in the clear is refused, not trusted:
whoever can write the store without the key could otherwise plant a key of their own.
"""

import base64
import binascii
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from certrenew.errors import CertrenewError, UsageError
from certrenew.state.backend import ABSENT, Backend, Changes, Conflict, Entry, Holder, Lease, Outage
from certrenew.system.owned import read_secret

KEY_SIZE = 32
MAX_KEY_FILE = 256
NONCE = 12
MAGIC = b"certrenew-sealed-v1 "
"""What a sealed value starts with, then base64 of nonce and ciphertext: plain text for `etcdctl get`."""
CHECK_KEY = "store-key-check"
"""An entry sealed with the fleet's key by the first node that used it: a node with another key is
refused before it does anything, not half-way through a run."""
CHECK_TEXT = b"the private keys of this store are sealed with the key that opens this\n"
MAKE_KEY = "head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE"


def read_key_file(path: Path) -> bytes:
    """The 32-byte key in `path` (base64, a secret file of ours), or UsageError naming the fix."""
    what = "the store key file (--store-key-file)"
    text = read_secret(path, what, MAX_KEY_FILE)
    try:
        key = base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_SIZE:
        raise UsageError(f"{what} {path} does not hold {KEY_SIZE} random bytes in base64; make one with `{MAKE_KEY}` "
                         "and give every node of the fleet the same file")
    return key


class SealedBackend:
    """`inner`, with the values `secret` names encrypted under `key`."""

    def __init__(self, inner: Backend, key: bytes, secret: Callable[[str], bool], key_file: Path) -> None:
        self.inner = inner
        self.shared = inner.shared
        self._aead = AESGCM(key)
        self._secret = secret
        self._key_file = key_file

    @property
    def outage(self) -> Outage | None:
        return self.inner.outage

    def seal(self, key: str, value: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return MAGIC + base64.b64encode(nonce + self._aead.encrypt(nonce, value, key.encode())) + b"\n"

    def unseal(self, key: str, value: bytes) -> bytes:
        if not value.startswith(MAGIC):
            raise CertrenewError(f"{self.inner.where(key)} is not encrypted, as every private key of this store must "
                                 "be: refusing it (was it written by a certrenew without --store-key-file?)")
        try:
            sealed = base64.b64decode(value[len(MAGIC):], validate=False)
            return self._aead.decrypt(sealed[:NONCE], sealed[NONCE:], key.encode())
        except (InvalidTag, binascii.Error, ValueError) as cause:
            raise UsageError(f"{self.inner.where(key)} does not decrypt with the store key file {self._key_file}: "
                             "give this node the fleet's key file (--store-key-file)") from cause

    def check_key(self) -> None:
        """Refuse a key file that is not the one this store's keys are sealed with (UsageError);
        the first node to use one leaves the check entry behind, create-if-absent."""
        entry = self.inner.get(CHECK_KEY)
        if entry is None:
            try:
                self.inner.write({CHECK_KEY: self.seal(CHECK_KEY, CHECK_TEXT)}, expect={CHECK_KEY: ABSENT})
                return
            except Conflict:  # another node was first: its key must be ours
                entry = self.inner.get(CHECK_KEY)
                assert entry is not None
        try:
            self.unseal(CHECK_KEY, entry.value)
        except CertrenewError as cause:
            raise UsageError(f"the store key file {self._key_file} is not the key this store's private keys are "
                             "encrypted with: give this node the same key file as the rest of the fleet") from cause

    def _open(self, key: str, entry: Entry) -> Entry:
        return Entry(self.unseal(key, entry.value), entry.version) if self._secret(key) else entry

    def get(self, key: str) -> Entry | None:
        entry = self.inner.get(key)
        return None if entry is None else self._open(key, entry)

    def list(self, prefix: str, suffix: str = "") -> dict[str, Entry]:
        return {key: self._open(key, entry) for key, entry in self.inner.list(prefix, suffix).items()}

    def write(self, changes: Mapping[str, bytes | None], *, expect: Mapping[str, int] | None = None,
              fence: Lease | None = None) -> int:
        sealed = {key: self.seal(key, value) if value is not None and self._secret(key) else value
                  for key, value in changes.items()}
        return self.inner.write(sealed, expect=expect, fence=fence)

    def watch(self, prefix: str, after: int, timeout: float) -> Changes:
        changes = self.inner.watch(prefix, after, timeout)
        return Changes(changes.revision, {key: None if entry is None else self._open(key, entry)
                                          for key, entry in changes.entries.items()}, changes.complete)

    def lock(self, key: str, *, ttl: float, wait: float, holder: str) -> AbstractContextManager[Lease]:
        return self.inner.lock(key, ttl=ttl, wait=wait, holder=holder)

    def locks(self, prefix: str) -> dict[str, Holder]:
        return self.inner.locks(prefix)

    def where(self, key: str) -> str:
        return self.inner.where(key)

    def close(self) -> None:
        self.inner.close()
