"""The ACME account: its key, and registering it with the CA (RFC 8555 section 7.3)."""

from acme import errors, messages

from certrenew.acme_transport import AccountUnknown, Transport
from certrenew.errors import UsageError
from certrenew.keys import generate_key, key_to_pem


def new_account_key_pem() -> bytes:
    """An ECDSA P-256 account key: ES256 signatures are small and fast to make."""
    return key_to_pem(generate_key("ecdsa-p256"))


def register(transport: Transport, email: str | None, agree_tos: bool) -> str:
    """The URI of the account of the transport's key, registering the key if the CA has none.

    A newAccount for a key the CA knows answers with that key's account (RFC 8555 section
    7.3.1), so a run carries on after a registration whose answer was lost, or a second
    registration of the same key, rather than failing on a conflict. Without --agree-tos
    nothing is created: the CA is only asked for the key's account (onlyReturnExisting).
    """
    if agree_tos:
        registration = messages.NewRegistration.from_data(email=email, terms_of_service_agreed=True)
    else:
        registration = messages.NewRegistration(only_return_existing=True)

    def post() -> str:
        try:
            return transport.client.new_account(registration).uri
        except errors.ConflictError as existing:  # the library's name for "200, here is the account"
            return existing.location

    transport.net.account = None
    try:
        return transport.call("register the account", post)
    except AccountUnknown:
        if agree_tos:
            raise
        terms = transport.directory.meta.terms_of_service
        raise UsageError(
            "registering an ACME account requires agreeing to the CA's terms of service"
            + (f" ({terms})" if terms else "") + ": pass --agree-tos"
        ) from None


def use_account(transport: Transport, uri: str) -> None:
    """Sign the transport's requests as the account at `uri`, without a round trip."""
    transport.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
