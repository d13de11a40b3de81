"""The ACME account: its key, and registering it with the CA (RFC 8555 section 7.3)."""

from acme import errors, messages

from certrenew.acme_transport import Transport
from certrenew.errors import UsageError
from certrenew.keys import generate_key, key_to_pem


def new_account_key_pem() -> bytes:
    """An ECDSA P-256 account key: ES256 signatures are small and fast to make."""
    return key_to_pem(generate_key("ecdsa-p256"))


def register(transport: Transport, email: str | None, agree_tos: bool) -> str:
    """Register the transport's key with the CA, or find the account it already has; return its URI."""
    if not agree_tos:
        terms = transport.directory.meta.terms_of_service
        raise UsageError(
            "registering an ACME account requires agreeing to the CA's terms of service"
            + (f" ({terms})" if terms else "") + ": pass --agree-tos"
        )
    registration = messages.NewRegistration.from_data(email=email, terms_of_service_agreed=True)
    transport.net.account = None
    try:
        return transport.call("register the account", transport.client.new_account, registration).uri
    except errors.ConflictError as conflict:
        return conflict.location


def use_account(transport: Transport, uri: str) -> None:
    """Sign the transport's requests as the account at `uri`, without a round trip."""
    transport.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
