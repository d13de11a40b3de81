import ipaddress

from cryptography import x509
from cryptography.x509.oid import NameOID

from certrenew.pki.keys import generate_key, make_csr


def test_a_csr_names_ip_addresses_as_such_and_never_as_its_common_name():
    csr = x509.load_pem_x509_csr(make_csr(generate_key("ecdsa-p256"), ["192.0.2.1", "2001:db8::1", "a.example"]))
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.1"),
                                                       ipaddress.ip_address("2001:db8::1")]
    assert san.get_values_for_type(x509.DNSName) == ["a.example"]
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    named = x509.load_pem_x509_csr(make_csr(generate_key("ecdsa-p256"), ["a.example", "192.0.2.1"]))
    assert named.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "a.example"
