"""The names of the key types certrenew generates.

Apart from `keys`, so the configuration checks a key type without loading
`cryptography`: a run with nothing due stays cheap.
"""

from certrenew.errors import UsageError

KEY_TYPES = ("ecdsa-p256", "ecdsa-p384", "rsa2048", "rsa3072", "rsa4096")
DEFAULT_KEY_TYPE = "ecdsa-p256"


def check_key_type(key_type: str) -> str:
    """Return `key_type` if certrenew can generate it, else raise UsageError."""
    if key_type not in KEY_TYPES:
        raise UsageError(f"unknown key type {key_type!r}; choose one of {', '.join(KEY_TYPES)}")
    return key_type
