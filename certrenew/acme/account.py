"""The ACME account: its key, and registering it with the CA (RFC 8555 section 7.3)."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acme import errors, messages

from certrenew.acme.transport import AccountUnknown, Transport, problem_code
from certrenew.errors import ConfigurationError, UsageError
from certrenew.pki.keys import generate_key, key_to_pem
from certrenew.system.owned import read_secret

MAX_HMAC_KEY_FILE = 4096
"""Bytes read of an EAB key file: CAs hand out keys of 32 to 64 bytes, about 86 in base64url."""
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
BINDING_REFUSED = frozenset({"unauthorized", "malformed", "badExternalAccountBinding"})
"""Problem types a CA answers a binding it cannot verify with (pebble: unauthorized; RFC 8555
leaves it open): with a binding sent, they name the operator's key id or key, not a passing fault."""


@dataclass(frozen=True)
class ExternalAccount:
    """The binding a CA that knows its customers asks of a new account (RFC 8555 section 7.3.4):
    the key id it gave (--eab-kid) and the file of the HMAC key that goes with it."""

    kid: str
    key_file: Path

    def hmac_key(self) -> str:
        """The key as CAs hand it out, base64url (read only to create an account; checked, never logged)."""
        what = "EAB HMAC key file (--eab-hmac-key-file)"
        try:
            key = read_secret(self.key_file, what, MAX_HMAC_KEY_FILE).decode("ascii").strip().rstrip("=")
        except UnicodeDecodeError:
            key = ""
        if not _BASE64URL.fullmatch(key):
            raise UsageError(f"{what} {self.key_file} does not hold one base64url key as the CA gave it "
                             "(letters, digits, '-' and '_')")
        return key

    def binding(self, transport: Transport) -> dict[str, Any]:
        """The externalAccountBinding field: a JWS of the account key, MAC-ed with the CA's key for `kid`."""
        return messages.ExternalAccountBinding.from_data(transport.key.public_key(), self.kid, self.hmac_key(),
                                                         transport.directory)


def new_account_key_pem() -> bytes:
    """An ECDSA P-256 account key: ES256 signatures are small and fast to make."""
    return key_to_pem(generate_key("ecdsa-p256"))


def register(transport: Transport, email: str | None, agree_tos: bool, eab: ExternalAccount | None = None) -> str:
    """The URI of the account of the transport's key, registering the key if the CA has none.

    A newAccount for a key the CA knows answers with that key's account (RFC 8555 section
    7.3.1), so a run carries on after a registration whose answer was lost, or a second
    registration of the same key, rather than failing on a conflict. Without --agree-tos
    nothing is created: the CA is only asked for the key's account (onlyReturnExisting).
    `eab` binds a new account to the operator's account at the CA; an existing one needs
    no binding, so the key file is read only here.
    """
    if agree_tos:
        binding = eab.binding(transport) if eab is not None else None
        registration = messages.NewRegistration.from_data(email=email, terms_of_service_agreed=True,
                                                          external_account_binding=binding)
    else:
        registration = messages.NewRegistration(only_return_existing=True)

    def post() -> str:
        try:
            return transport.client.new_account(registration).uri
        except errors.ConflictError as existing:  # the library's name for "200, here is the account"
            return existing.location
        except messages.Error as error:
            refused = f"the CA refused to register the account: {error.detail or error}"
            code = problem_code(error)
            if code == "externalAccountRequired":
                raise ConfigurationError(f"{refused}; pass --eab-kid and --eab-hmac-key-file as the CA gave them "
                                         "(RFC 8555 section 7.3.4)") from error
            if eab is not None and agree_tos and code in BINDING_REFUSED:
                raise ConfigurationError(f"{refused}; the binding of key id {eab.kid!r} did not verify: check "
                                         "--eab-kid and --eab-hmac-key-file against what the CA gave") from error
            raise

    transport.net.account = None
    try:
        return transport.call("register the account", post)
    except AccountUnknown as cause:
        if agree_tos:
            raise
        terms = transport.directory.meta.terms_of_service
        raise UsageError(
            "registering an ACME account requires agreeing to the CA's terms of service"
            + (f" ({terms})" if terms else "") + ": pass --agree-tos"
        ) from cause


def use_account(transport: Transport, uri: str) -> None:
    """Sign the transport's requests as the account at `uri`, without a round trip."""
    transport.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
