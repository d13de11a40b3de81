"""An IP address certificate (RFC 8738) end to end: pebble validates 127.0.0.1 over HTTP-01
through HAProxy's port, and a TLS client connecting to the address (no SNI: RFC 6066 names
no IP address in it) is served the certificate once it is the bind's default."""

import ipaddress

from cryptography import x509

from certrenew.pki.bundle import leaf_info

IP = "127.0.0.1"
NAME = "ip-127.0.0.1"


def serial(lab) -> str:
    return leaf_info((lab.ssl_dir / f"{NAME}.pem").read_bytes()).serial


def test_an_ip_address_is_certified_and_served_to_clients_that_connect_to_it(lab):
    issued = lab.certrenew(IP)
    assert issued.returncode == 0, issued.stderr
    assert issued.stdout.startswith(f"{NAME}: issued: ")
    cert = x509.load_pem_x509_certificate((lab.ssl_dir / f"{NAME}.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(IP)]
    assert san.get_values_for_type(x509.DNSName) == []
    first = serial(lab)
    # In the crt directory it is no default: a client that sends no SNI gets the placeholder.
    assert lab.served_certificate_unverified(IP).serial_number != int(first, 16)

    # Served through the --verify-endpoint check, which sees what such a client sees: refused, rolled back.
    env = {"CERTRENEW_HAPROXY_SOCKET": str(lab.admin_socket), "CERTRENEW_VERIFY_ENDPOINT": lab.https_endpoint}
    refused = lab.certrenew(IP, "--force", env=env)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "a TLS client sends no SNI for an IP address" in refused.stderr, refused.stderr
    assert serial(lab) == first  # put back

    # The operator makes it the bind's default (the first crt); the run after installs the pending one.
    lab.reconfigure_haproxy(f"ssl alpn h2,http/1.1 crt {lab.ssl_dir}/\n",
                            f"ssl alpn h2,http/1.1 crt {lab.ssl_dir}/{NAME}.pem crt {lab.ssl_dir}/\n")
    installed = lab.certrenew(IP, env=env)
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.startswith(f"{NAME}: installed: ") and "hot update" in installed.stdout, installed.stdout
    second = serial(lab)
    assert second != first
    served = lab.served_certificate(IP)  # verified against pebble's root, for the IP address, with no SNI sent
    assert served.serial_number == int(second, 16)
