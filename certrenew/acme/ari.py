"""ACME Renewal Information (RFC 9773): when the CA suggests renewing a certificate."""

import base64
import datetime
import random
from dataclasses import dataclass

import josepy as jose
from acme import messages
from cryptography import x509

from certrenew.acme.transport import Transport, retry_after_seconds
from certrenew.errors import CertrenewError

DEFAULT_RETRY = datetime.timedelta(hours=6)
MAX_RETRY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class RenewalWindow:
    """The CA's suggested renewal window for a certificate and when to ask again."""

    start: datetime.datetime
    end: datetime.datetime
    next_check: datetime.datetime

    def pick(self) -> datetime.datetime:
        """A uniformly random time in the window, so a fleet does not renew all at once."""
        return self.start + (self.end - self.start) * random.random()


def ari_cert_id(cert: x509.Certificate) -> str:
    """The certificate's ARI identifier: base64url(authority key id) "." base64url(serial)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    serial = cert.serial_number.to_bytes((cert.serial_number.bit_length() + 8) // 8, "big", signed=True)
    return f"{_b64url(aki or b'')}.{_b64url(serial)}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def supports_ari(transport: Transport) -> bool:
    try:
        transport.directory["renewalInfo"]
    except KeyError:
        return False
    return True


def renewal_window(transport: Transport, cert: x509.Certificate) -> RenewalWindow:
    """Ask the CA when to renew `cert` (only where `supports_ari`)."""
    url = f"{transport.directory['renewalInfo'].rstrip('/')}/{ari_cert_id(cert)}"
    response = transport.get("send renewal information", url)
    try:
        window = messages.RenewalInfo.from_json(response.json()).suggested_window
    except (ValueError, jose.DeserializationError) as error:
        raise CertrenewError(f"malformed renewal information from {url}: {error}") from error
    if window.start is None or window.end is None or window.end < window.start:
        raise CertrenewError(f"malformed renewal window from {url}: {window.start} to {window.end}")
    retry = retry_after_seconds(response)
    wait = DEFAULT_RETRY if retry is None else min(datetime.timedelta(seconds=retry), MAX_RETRY)
    return RenewalWindow(window.start, window.end, datetime.datetime.now(datetime.timezone.utc) + wait)
