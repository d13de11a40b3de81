import dataclasses
import datetime
import re
from pathlib import Path

import pytest

from certrenew.config import LETSENCRYPT_STAGING, CertificateSpec, build_settings, env_flag, load_config
from certrenew.errors import UsageError


def config_file(tmp_path, text):
    path = tmp_path / "certrenew.toml"
    path.write_text(text)
    return load_config(path)


def test_command_line_beats_environment_beats_file(tmp_path):
    config = config_file(tmp_path, 'email = "file@example.com"\nlisten = "127.0.0.1:1"\ntimeout = 10\n')
    environ = {"CERTRENEW_EMAIL": "env@example.com", "CERTRENEW_LISTEN": "127.0.0.1:2"}
    settings = build_settings({"email": "cli@example.com"}, config, environ)
    assert (settings.acme.email, settings.responder.listen, settings.acme.timeout) == ("cli@example.com", "127.0.0.1:2", 10)
    assert build_settings({}, None, {}).state_dir == Path("/var/lib/certrenew")


def test_environment_values_are_parsed_and_checked():
    settings = build_settings({}, None, {"CERTRENEW_AGREE_TOS": "yes", "CERTRENEW_RENEW_BEFORE": "12h",
                                         "CERTRENEW_CONCURRENCY": "8", "CERTRENEW_STAGING": "1"})
    assert settings.acme.agree_tos and settings.concurrency == 8
    assert settings.renew_before == datetime.timedelta(hours=12)
    assert settings.acme.directory_url == LETSENCRYPT_STAGING
    for name, value in (("AGREE_TOS", "maybe"), ("TIMEOUT", "-1"), ("KEY_TYPE", "dsa"), ("RENEW_BEFORE", "soon")):
        with pytest.raises(UsageError, match=f"CERTRENEW_{name}"):
            build_settings({}, None, {f"CERTRENEW_{name}": value})


@pytest.mark.parametrize("raw, value", [("1", True), ("TRUE", True), ("Yes", True), ("on", True),
                                        ("0", False), ("false", False), ("NO", False), ("Off", False)])
def test_boolean_variables_are_parsed_one_way_everywhere(raw, value):
    assert env_flag("CERTRENEW_VERBOSE", {"CERTRENEW_VERBOSE": raw}) is value
    assert build_settings({}, None, {"CERTRENEW_STAGING": raw}).acme.staging is value


def test_a_bad_boolean_variable_is_a_usage_error_naming_it():
    assert env_flag("CERTRENEW_QUIET", {}) is None
    with pytest.raises(UsageError, match="invalid CERTRENEW_QUIET: expected 1/true/yes/on"):
        env_flag("CERTRENEW_QUIET", {"CERTRENEW_QUIET": "maybe"})


def test_a_no_flag_overrides_true_from_the_environment_and_the_file(tmp_path):
    config = config_file(tmp_path, "agree_tos = true\nstaging = true\n")
    environ = {"CERTRENEW_STAGING": "yes"}
    settings = build_settings({"agree_tos": False, "staging": False}, config, environ)
    assert (settings.acme.agree_tos, settings.acme.staging) == (False, False)
    settings = build_settings({"agree_tos": None, "staging": None}, config, environ)  # flag not given
    assert (settings.acme.agree_tos, settings.acme.staging) == (True, True)
    assert build_settings({}, config, {"CERTRENEW_STAGING": "off"}).acme.staging is False


def test_certificates_default_their_name_and_key_type(tmp_path):
    config = config_file(tmp_path, """
key_type = "rsa2048"
[[certificate]]
name = "shop"
domains = ["Shop.Example.", "www.shop.example"]
profile = "shortlived"
[[certificate]]
domains = ["b.example"]
key_type = "ecdsa-p384"
""")
    assert config.certificates == [
        CertificateSpec("shop", ("shop.example", "www.shop.example"), "rsa2048", "shortlived"),
        CertificateSpec("b.example", ("b.example",), "ecdsa-p384"),
    ]


def test_specs_certificate_specs_made_are_marked_checked_and_others_are_not(tmp_path):
    config = config_file(tmp_path, '[[certificate]]\ndomains = ["Shop.Example."]\n')
    assert [spec.checked for spec in config.certificates] == [True]
    assert config.certificates == [CertificateSpec("shop.example", ("shop.example",))]
    assert not CertificateSpec("shop.example", ("Shop.Example.",)).checked
    assert not dataclasses.replace(config.certificates[0], domains=("Shop.Example.",)).checked


@pytest.mark.parametrize("text, says", [
    ("timeout = true\n", "timeout: must be a number"),
    ("force = true\n", "unknown key 'force'"),
    ("certificate = 1\n", "array of tables"),
    ("[[certificate]]\nname = 'x'\n", "domains must be a list"),
    ("[[certificate]]\nname = '../x'\ndomains = ['a.example']\n", "invalid certificate name"),
    ("[[certificate]]\ndomains = ['a.example']\nprofile = 3\n", "profile must be a string"),
    ("[[certificate]]\ndomains = ['a.example']\nprofile = 'short lived'\n",
     "certificate #1: profile 'short lived' is not a profile name"),
    ("x = \n", "Invalid value"),
])
def test_errors_name_the_file_and_the_key(tmp_path, text, says):
    with pytest.raises(UsageError, match=says) as error:
        config_file(tmp_path, text)
    assert "certrenew.toml" in str(error.value)


def test_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cannot read config file"):
        load_config(tmp_path / "nope.toml")


def test_list_options_come_repeated_separated_or_as_a_toml_list(tmp_path):
    config = config_file(tmp_path, 'haproxy_socket = ["/run/a.sock", "ipv4@10.0.0.2:9999"]\n'
                                   'verify_endpoint = ["10.0.0.2:443"]\n')
    settings = build_settings({}, config, {})
    assert settings.haproxy.haproxy_socket == ("/run/a.sock", "ipv4@10.0.0.2:9999")
    assert settings.haproxy.verify_endpoint == ("10.0.0.2:443",)
    settings = build_settings({"haproxy_config": ["/etc/haproxy/a.cfg", "/etc/haproxy/b.cfg"]}, config,
                              {"CERTRENEW_HAPROXY_SOCKET": "/run/b.sock, /run/c.sock"})
    assert settings.haproxy.haproxy_socket == ("/run/b.sock", "/run/c.sock")
    assert settings.haproxy.haproxy_config == (Path("/etc/haproxy/a.cfg"), Path("/etc/haproxy/b.cfg"))
    assert build_settings({}, None, {}).haproxy.haproxy_socket == ()


def test_list_options_are_checked(tmp_path):
    with pytest.raises(UsageError, match="CERTRENEW_HAPROXY_SOCKET: relative.sock"):
        build_settings({}, None, {"CERTRENEW_HAPROXY_SOCKET": "/run/a.sock relative.sock"})
    with pytest.raises(UsageError, match="--verify-endpoint: nohost: expected HOST:PORT"):
        build_settings({"verify_endpoint": ["nohost"]}, None, {})
    with pytest.raises(UsageError, match="haproxy_socket: must be a list"):
        config_file(tmp_path, 'haproxy_socket = 3\n')


def test_a_dual_certificate_is_an_ecdsa_and_an_rsa_certificate(tmp_path):
    config = config_file(tmp_path, """
[[certificate]]
domains = ["shop.example"]
key_type = ["ecdsa-p256", "rsa2048"]
[[certificate]]
domains = ["blog.example"]
""")
    assert config.certificates == [
        CertificateSpec("shop.example.ecdsa-p256", ("shop.example",), "ecdsa-p256"),
        CertificateSpec("shop.example.rsa2048", ("shop.example",), "rsa2048"),
        CertificateSpec("blog.example", ("blog.example",), "ecdsa-p256"),
    ]
    assert build_settings({"key_type": "ecdsa-p384,rsa4096"}, None, {}).certificate.key_type == "ecdsa-p384,rsa4096"
    for pair in ('["ecdsa-p256", "ecdsa-p384"]', '["rsa2048", "rsa2048"]', '["ecdsa-p256", "rsa2048", "rsa4096"]'):
        with pytest.raises(UsageError, match="one ECDSA and one RSA key type"):
            config_file(tmp_path, f'[[certificate]]\ndomains = ["a.example"]\nkey_type = {pair}\n')


WILDCARD = ("invalid domain '*.example.com': wildcard certificates need the DNS-01 challenge; HTTP-01 and TLS-ALPN-01 "
            "cannot validate them")


def test_a_wildcard_over_http01_is_refused_in_the_config_file(tmp_path):
    with pytest.raises(UsageError) as refused:
        config_file(tmp_path, '[[certificate]]\nname = "star"\ndomains = ["*.Example.com"]\n')
    assert str(refused.value).endswith(WILDCARD) and "certificate #1" in str(refused.value)


def test_a_wildcard_on_the_command_line_is_exit_2_before_anything_is_touched(tmp_path, capsys):
    from certrenew.cli.commands import main

    code = main(["*.example.com", "--state-dir", str(tmp_path / "state"), "--ssl-dir", str(tmp_path / "ssl")])
    assert code == 2 and capsys.readouterr().err == f"certrenew: error: {WILDCARD}\n"
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_challenge_type_is_a_usage_error():
    from certrenew.config import certificate_specs

    with pytest.raises(UsageError, match="unknown challenge type 'tls-alpn-02'; choose one of http-01"):
        certificate_specs("a", ("a.example",), "ecdsa-p256", challenge="tls-alpn-02")


def test_tls_alpn_01_is_taken_per_certificate_and_at_the_top_but_not_for_a_wildcard(tmp_path):
    config = config_file(tmp_path, 'challenge = "tls-alpn-01"\n[[certificate]]\ndomains = ["a.example"]\n'
                                   '[[certificate]]\ndomains = ["b.example"]\nchallenge = "http-01"\n')
    assert [spec.challenge for spec in config.certificates] == ["tls-alpn-01", "http-01"]
    config = config_file(tmp_path, '[[certificate]]\ndomains = ["a.example"]\nchallenge = "tls-alpn-01"\n')
    assert config.certificates[0].solver_key == "tls-alpn-01"
    with pytest.raises(UsageError, match="TLS-ALPN-01 cannot validate them"):
        config_file(tmp_path, '[[certificate]]\ndomains = ["*.a.example"]\nchallenge = "tls-alpn-01"\n')


TSIG_KEY = 'key "certrenew" {\n\talgorithm hmac-sha256;\n\tsecret "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0IQ==";\n};\n'


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "tsig.key"
    path.write_text(TSIG_KEY)
    path.chmod(0o600)
    return path


def test_dns01_certificates_take_top_level_dns_settings_and_override_them(tmp_path, key_file):
    config = config_file(tmp_path, f"""
dns_server = "192.0.2.53"
tsig_key = "{key_file}"
dns_propagation_timeout = 30

[[certificate]]
domains = ["*.example.com", "example.com"]
challenge = "dns-01"

[[certificate]]
name = "star-internal"
domains = ["*.internal.example"]
challenge = "dns-01"
dns_server = "[2001:db8::53]:5353"
dns_zone = "Internal.Example."
dns_propagation_timeout = 0

[[certificate]]
domains = ["www.example.com"]

[[certificate]]
domains = ["*.example.org"]
challenge = "dns-01"
""")
    wild, internal, web, org = config.certificates
    assert (wild.name, wild.challenge, internal.name, web.name, web.dns) == (
        "_wildcard.example.com", "dns-01", "star-internal", "www.example.com", None)
    assert wild.dns is not None and internal.dns is not None
    assert (str(wild.dns.server), wild.dns.zone, wild.dns.propagation_timeout) == ("192.0.2.53:53", None, 30)
    assert (str(internal.dns.server), internal.dns.zone, internal.dns.propagation_timeout) == (
        "[2001:db8::53]:5353", "internal.example", 0)
    assert wild.dns.tsig_key is not None and wild.dns.tsig_key.name == "certrenew"
    # Certificates with the same DNS settings share a solver; HTTP-01 ones share the responder.
    assert org.solver_key == wild.solver_key != internal.solver_key
    assert web.solver_key == "http-01"


def test_a_top_level_challenge_is_every_certificates_default(tmp_path):
    config = config_file(tmp_path, 'challenge = "dns-01"\ndns_hook = "/usr/local/bin/dns-hook --zone x"\n'
                                   '[[certificate]]\ndomains = ["*.example.com"]\n'
                                   '[[certificate]]\ndomains = ["a.example.com"]\nchallenge = "http-01"\n')
    dns, http = config.certificates
    assert dns.dns is not None and (dns.dns.hook, dns.dns.server, dns.dns.tsig_key) == (
        "/usr/local/bin/dns-hook --zone x", None, None)
    assert (http.challenge, http.dns) == ("http-01", None)


@pytest.mark.parametrize("keys, complaint", [
    ('challenge = "dns-01"', "DNS-01 needs a DNS server and a TSIG key (--dns-server, --tsig-key) or a hook"),
    ('challenge = "dns-01"\ndns_server = "192.0.2.53"', "DNS-01 needs a DNS server and a TSIG key"),
    ('challenge = "dns-01"\ntsig_key = "{key}"', "a TSIG key (--tsig-key) needs the DNS server"),
    ('challenge = "dns-01"\ndns_server = "192.0.2.53"\ntsig_key = "{key}"\ndns_hook = "hook"', "not both"),
    ('challenge = "dns-01"\ndns_hook = "\'unclosed"', "dns_hook: invalid DNS hook"),
    ('challenge = "dns-01"\ndns_hook = "hook"\ndns_server = "ns1.example.com:0"', "dns_server: invalid DNS server"),
    ('challenge = "dns-01"\ndns_hook = "hook"\ndns_propagation_timeout = nan', "dns_propagation_timeout: must be"),
    ('challenge = "dns-01"\ndns_hook = "hook"\ndns_propagation_timeout = inf', "dns_propagation_timeout: must be"),
    ('challenge = "dns-01"\ndns_hook = "hook"\ndns_propagation_timeout = -1', "dns_propagation_timeout: must be"),
    ('challenge = "dns-01"\ndns_hook = "hook"\ndns_zone = "*.example.com"', "dns_zone: "),
    ('challenge = "dns-02"', "unknown challenge type 'dns-02'; choose one of http-01, dns-01, tls-alpn-01"),
    ('dns_server = "192.0.2.53"', 'dns_server is for a certificate with challenge = "dns-01"'),
    ('challenge = "dns-01"\ndns_server = "192.0.2.53"\ntsig_key = "{key}-missing"', "cannot read it"),
])
def test_bad_dns_settings_of_a_certificate_are_refused_naming_it(tmp_path, key_file, keys, complaint):
    with pytest.raises(UsageError, match="certificate #1: .*" + re.escape(complaint)):
        config_file(tmp_path, f'[[certificate]]\ndomains = ["a.example.com"]\n{keys.format(key=key_file)}\n')


def test_a_key_file_others_can_read_is_refused(tmp_path, key_file):
    key_file.chmod(0o644)
    with pytest.raises(UsageError, match=r"readable by others \(mode 0644\)"):
        config_file(tmp_path, f'challenge = "dns-01"\ndns_server = "192.0.2.53"\ntsig_key = "{key_file}"\n'
                              '[[certificate]]\ndomains = ["a.example.com"]\n')


def test_the_wildcard_name_and_an_explicit_one_pass_the_name_check(tmp_path):
    from certrenew.config import check_certificate_name, default_certificate_name

    assert default_certificate_name("*.example.com") == "_wildcard.example.com"
    assert default_certificate_name("example.com") == "example.com"
    config = config_file(tmp_path, '[[certificate]]\nname = "star"\ndomains = ["*.example.com"]\n'
                                   'challenge = "dns-01"\ndns_hook = "hook"\n')
    assert config.certificates[0].name == "star"
    for bad in ("*.example.com", ".hidden", "-option"):
        with pytest.raises(UsageError, match="invalid certificate name"):
            check_certificate_name(bad)


def test_the_command_line_form_takes_dns_settings_from_options_and_environment(key_file):
    from certrenew.config import dns_settings

    settings = build_settings({"challenge": "dns-01", "tsig_key": str(key_file)}, None,
                              {"CERTRENEW_DNS_SERVER": "127.0.0.1:5353", "CERTRENEW_DNS_PROPAGATION_TIMEOUT": "5"})
    dns = settings.certificate.dns()
    assert dns is not None and (str(dns.server), dns.propagation_timeout, dns.tsig_key.algorithm) == (
        "127.0.0.1:5353", 5.0, "hmac-sha256")
    assert dns_settings("http-01", vars(settings.certificate)) is None
    with pytest.raises(UsageError, match="invalid CERTRENEW_DNS_PROPAGATION_TIMEOUT: must be"):
        build_settings({}, None, {"CERTRENEW_DNS_PROPAGATION_TIMEOUT": "nan"})


@pytest.mark.parametrize("name, value", [
    ("TIMEOUT", "nan"), ("TIMEOUT", "inf"), ("TIMEOUT", "-5"), ("TIMEOUT", "0"), ("TIMEOUT", "86401"),
    ("LOCK_TIMEOUT", "nan"), ("LOCK_TIMEOUT", "-1"), ("LOCK_TIMEOUT", "1e9"),
    ("RENEW_BEFORE", "1000d"), ("RENEW_BEFORE", "99999999999999d"), ("RENEW_BEFORE", "1e400s"),
    ("RELOAD_COMMAND", "sh -c 'unbalanced"), ("RELOAD_COMMAND", "  "),
])
def test_absurd_values_are_usage_errors(name, value):
    with pytest.raises(UsageError, match=f"invalid CERTRENEW_{name}: ") as caught:
        build_settings({}, None, {f"CERTRENEW_{name}": value})
    assert "\n" not in str(caught.value).rstrip("\n'")


def test_sensible_bounds_are_accepted(tmp_path):
    settings = build_settings({}, None, {"CERTRENEW_TIMEOUT": "86400", "CERTRENEW_LOCK_TIMEOUT": "0",
                                         "CERTRENEW_RENEW_BEFORE": "999d", "CERTRENEW_RELOAD_COMMAND": "a 'b c'"})
    assert (settings.acme.timeout, settings.lock_timeout, settings.renew_before.days) == (86400, 0, 999)
    with pytest.raises(UsageError, match="timeout: must be a number of seconds"):
        config_file(tmp_path, "timeout = inf\n")


@pytest.mark.parametrize("table, error", [
    ('name = "nl\\n"\ndomains = ["a.example"]', "invalid certificate name 'nl\\\\n'"),
    ('name = 123\ndomains = ["a.example"]', "invalid certificate name 123"),
    ('name = true\ndomains = ["a.example"]', "invalid certificate name True"),
    ('domains = ["a.example"]\nkey_type = []', "no key type given"),
])
def test_certificate_tables_are_strict(tmp_path, table, error):
    with pytest.raises(UsageError, match=error):
        config_file(tmp_path, f"[[certificate]]\n{table}\n")


@pytest.mark.parametrize("name", ["STATE_DIR", "SSL_DIR", "METRICS_FILE", "TSIG_KEY"])
def test_an_empty_path_is_refused_not_taken_for_the_current_directory(tmp_path, name):
    """Path("") is ".": an empty CERTRENEW_STATE_DIR would put the account key where certrenew was started."""
    with pytest.raises(UsageError, match=f"invalid CERTRENEW_{name}: must not be empty"):
        build_settings({}, None, {f"CERTRENEW_{name}": ""})
    option = name.lower()
    with pytest.raises(UsageError, match=f"invalid --{option.replace('_', '-')}: must not be empty"):
        build_settings({option: " "}, None, {})
    with pytest.raises(UsageError, match=f"{option}: must not be empty"):
        config_file(tmp_path, f'{option} = ""\n')
    with pytest.raises(UsageError, match="invalid --haproxy-config: must not be empty"):
        build_settings({"haproxy_config": ["/etc/haproxy/haproxy.cfg", ""]}, None, {})


@pytest.mark.parametrize("url", ["notaurl", "acme-v02.api.letsencrypt.org/directory", "http://ca.example/dir",
                                 "https:///dir"])
def test_a_directory_that_is_not_an_https_url_is_refused_before_the_ca_is_asked(tmp_path, url):
    """A typo there is our mistake: refused at once (exit 2), not a failed order with a back-off."""
    with pytest.raises(UsageError, match="invalid CERTRENEW_DIRECTORY: .* is not an https:// URL"):
        build_settings({}, None, {"CERTRENEW_DIRECTORY": url})
    with pytest.raises(UsageError, match="directory: .* is not an https:// URL"):
        config_file(tmp_path, f'directory = "{url}"\n')
    assert build_settings({"directory": "https://127.0.0.1:14000/dir"}, None, {}).acme.directory_url == \
        "https://127.0.0.1:14000/dir"


@pytest.mark.parametrize("value", ["0", "-1", "65", "99999999999999999999"])
def test_concurrency_is_bounded_both_ways(tmp_path, value):
    """Each order in flight is a thread with its own connections: 10^20 of them is a typo."""
    with pytest.raises(UsageError, match="invalid --concurrency: must be a whole number from 1 to 64"):
        build_settings({"concurrency": value}, None, {})
    with pytest.raises(UsageError, match="invalid CERTRENEW_CONCURRENCY: must be a whole number from 1 to 64"):
        build_settings({}, None, {"CERTRENEW_CONCURRENCY": value})
    with pytest.raises(UsageError, match="concurrency: must be a whole number from 1 to 64"):
        config_file(tmp_path, f"concurrency = {value}\n")
    assert build_settings({"concurrency": "64"}, None, {}).concurrency == 64


@pytest.mark.parametrize("given", [{"eab_kid": "kid-1"}, {"eab_hmac_key_file": "/etc/certrenew/eab.key"}])
def test_an_external_account_binding_takes_both_the_key_id_and_the_key_file(given):
    with pytest.raises(UsageError, match="takes both the key id .--eab-kid. and the file"):
        build_settings(given, environ={})
    both = build_settings({"eab_kid": "kid-1", "eab_hmac_key_file": "/etc/certrenew/eab.key"}, environ={})
    assert (both.acme.eab_kid, both.acme.eab_hmac_key_file) == ("kid-1", Path("/etc/certrenew/eab.key"))


def test_an_etcd_login_takes_a_user_and_its_password_file_and_a_client_key_its_certificate(tmp_path):
    with pytest.raises(UsageError, match=r"takes both the user \(--store-user\) and the file of its password"):
        build_settings({"store_user": "node"}, environ={})
    with pytest.raises(UsageError, match="takes both the user"):
        build_settings({}, environ={"CERTRENEW_STORE_PASSWORD_FILE": "/etc/certrenew/etcd.password"})
    with pytest.raises(UsageError, match=r"--store-key is the key of a client certificate: give the certificate"):
        build_settings({"store_key": __file__}, environ={})
    with pytest.raises(UsageError, match=r"invalid --store-ca-bundle: .*nowhere.pem does not exist"):
        build_settings({"store_ca_bundle": str(tmp_path / "nowhere.pem")}, environ={})
    fleet = build_settings({"node_name": "web2"}, config_file(tmp_path, 'store_user = "node"\n'
                                                             'store_password_file = "/etc/certrenew/etcd.password"\n'
                                                             'store_key_file = "/etc/certrenew/store.key"\n'),
                           environ={}).fleet
    assert (fleet.node_name, fleet.store_user, fleet.store_password_file, fleet.store_key_file) == \
        ("web2", "node", Path("/etc/certrenew/etcd.password"), Path("/etc/certrenew/store.key"))


def test_an_ip_address_certificate_gets_a_plain_file_name_and_no_dns01():
    from certrenew.config import certificate_specs

    for given, name in (("192.0.2.1", "ip-192.0.2.1"), ("2001:DB8::1", "ip-2001-db8--1"), ("[::1]", "ip---1")):
        [spec] = certificate_specs(None, [given, "www.example.com"], "ecdsa-p256")
        assert spec.name == name and spec.domains[1] == "www.example.com"
    with pytest.raises(UsageError, match="192.0.2.1 is an IP address, which DNS-01 cannot validate .* http-01"):
        certificate_specs(None, ["example.com", "192.0.2.1"], "ecdsa-p256", challenge="dns-01")
    with pytest.raises(UsageError, match="'192.0.2.1' is not a zone name"):
        build_settings({"dns_zone": "192.0.2.1"}, environ={})


def test_crt_list_options_are_per_certificate_with_a_top_level_default(tmp_path):
    config = config_file(tmp_path, 'crt_list = "/etc/haproxy/certs.lst"\ncrt_list_options = "[alpn h2]"\n'
                                   '[[certificate]]\ndomains = ["a.example"]\n'
                                   '[[certificate]]\ndomains = ["b.example"]\ncrt_list_options = "b.example"\n')
    assert [spec.crt_list_options for spec in config.certificates] == ["[alpn h2]", "b.example"]
    assert build_settings({}, config, {}).haproxy.crt_list == Path("/etc/haproxy/certs.lst")


@pytest.mark.parametrize("options", ["[alpn h2] # a comment", "a.example\\n/etc/other.pem"])
def test_crt_list_options_that_would_end_the_line_are_refused(tmp_path, options):
    with pytest.raises(UsageError, match="certificate #1: crt_list_options: .*line break or a '#'"):
        config_file(tmp_path, f'[[certificate]]\ndomains = ["a.example"]\ncrt_list_options = "{options}"\n')


def test_a_crt_store_entry_is_named_per_certificate(tmp_path):
    config = config_file(tmp_path, '[[certificate]]\ndomains = ["a.example"]\ncrt_store = "@web/site"\n')
    assert config.certificates[0].crt_store == "@web/site"


@pytest.mark.parametrize("table, error", [
    ('crt_store = "web/site"', r"crt_store must name a crt-store entry as HAProxy does, '@<store>/<alias>'"),
    ('crt_store = "@web/site"\nkey_type = ["ecdsa-p256", "rsa2048"]', "crt_store names one certificate, not the 2"),
])
def test_a_crt_store_entry_that_cannot_be_one_is_refused(tmp_path, table, error):
    with pytest.raises(UsageError, match=re.escape(error)):
        config_file(tmp_path, f'[[certificate]]\ndomains = ["a.example"]\n{table}\n')


FIRST, SECOND, THIRD = "https://first.example/dir", "https://second.example/dir", "https://third.example/dir"


def test_fallback_cas_come_after_the_directory_in_order_each_with_its_own_bundle_and_binding(tmp_path):
    bundle, key = tmp_path / "second-ca.pem", tmp_path / "eab.key"
    bundle.write_text("")
    config = config_file(tmp_path, f'directory = "{FIRST}"\neab_kid = "kid-1"\neab_hmac_key_file = "/k1"\n'
                                   f'ca_bundle = "{__file__}"\nfallback_directory = ["{SECOND}", "{THIRD}"]\n'
                                   f'[ca."{SECOND}"]\nca_bundle = "{bundle}"\neab_kid = "kid-2"\n'
                                   f'eab_hmac_key_file = "{key}"\n')
    first, second, third = build_settings({}, config, {}).acme.cas
    assert (first.directory, first.eab_kid, first.ca_bundle) == (FIRST, "kid-1", __file__)
    assert (second.directory, second.eab_kid, second.eab_hmac_key_file, second.ca_bundle) == (SECOND, "kid-2", key,
                                                                                               str(bundle))
    assert (third.directory, third.eab_kid, third.ca_bundle) == (THIRD, None, __file__)  # no other CA's binding


def test_fallback_directories_from_the_environment_and_the_command_line():
    settings = build_settings({"directory": FIRST}, None, {"CERTRENEW_FALLBACK_DIRECTORY": f"{SECOND},{THIRD}"})
    assert settings.acme.directory_urls == (FIRST, SECOND, THIRD)
    assert build_settings({"directory": FIRST, "fallback_directory": [THIRD]}, None, {}).acme.directory_urls == (FIRST, THIRD)
    assert build_settings({"directory": FIRST}, None, {}).acme.directory_urls == (FIRST,)
    with pytest.raises(UsageError, match="invalid --fallback-directory: 'http://x.example/dir' is not an https://"):
        build_settings({"fallback_directory": ["http://x.example/dir"]}, None, {})


@pytest.mark.parametrize("text, message", [
    (f'fallback_directory = ["{SECOND}"]\n[ca."{THIRD}"]\neab_kid = "k"\neab_hmac_key_file = "/k"\n',
     f'\\[ca."{THIRD}"\\] describes no fallback CA: add it to fallback_directory'),
    (f'fallback_directory = ["{SECOND}"]\n[ca."{SECOND}"]\neab_kid = "k"\n',
     "takes both eab_kid and eab_hmac_key_file"),
    (f'fallback_directory = ["{SECOND}"]\n[ca."{SECOND}"]\nemail = "a@example.com"\n', "unknown key 'email'"),
    (f'[ca."{SECOND}"]\nca_bundle = "/no/such.pem"\n', "ca_bundle: /no/such.pem does not exist"),
    ('[ca."http://plain.example/dir"]\n', "is not an https:// URL"),
    ('ca = "x"\n', "'ca' must be tables"),
])
def test_a_ca_table_that_cannot_work_is_refused_naming_it(tmp_path, text, message):
    with pytest.raises(UsageError, match=message):
        build_settings({}, config_file(tmp_path, text), {})


def test_every_option_has_one_slice_and_reads_back_by_its_name():
    """The command line, the environment and the file name options flat; each must land in its slice."""
    from certrenew.config import OPTIONS, Settings

    for option in OPTIONS:
        assert Settings.of(**{option.name: Settings().option(option.name)}) == Settings()
    moved = Settings().with_options(listen="127.0.0.1:1", state_dir=Path("/x"), reload_command="true")
    assert (moved.responder.listen, moved.state_dir, moved.haproxy.reload_command) == ("127.0.0.1:1", Path("/x"), "true")
    assert moved.option("listen") == "127.0.0.1:1" and moved.acme == Settings().acme
    with pytest.raises(TypeError):
        Settings.of(no_such_option=1)


def test_the_configuration_loads_nothing_it_configures():
    """config sits at the bottom: reading settings loads no solver, no HAProxy client, no ACME stack."""
    import subprocess
    import sys

    probe = ("import sys, certrenew.config\n"
             "print(sorted(m for m in sys.modules if m.startswith(('certrenew.challenge', 'certrenew.haproxy', "
             "'certrenew.acme', 'certrenew.state', 'certrenew.renewal'))))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
