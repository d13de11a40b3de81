import base64
import datetime

import trustme
from cryptography import x509

from certrenew.acme.ari import RenewalWindow, ari_cert_id


def test_ari_cert_id_is_authority_key_id_dot_serial():
    cert = x509.load_pem_x509_certificate(trustme.CA().issue_cert("a.example").cert_chain_pems[0].bytes())
    aki, serial = ari_cert_id(cert).split(".")
    assert "=" not in aki + serial
    aki_ext = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert base64.urlsafe_b64decode(aki + "=" * (-len(aki) % 4)) == aki_ext.key_identifier
    decoded = base64.urlsafe_b64decode(serial + "=" * (-len(serial) % 4))
    assert int.from_bytes(decoded, "big", signed=True) == cert.serial_number


def test_window_pick_stays_inside():
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    window = RenewalWindow(start, start + datetime.timedelta(days=2), start)
    assert all(start <= window.pick() <= window.end for _ in range(100))
