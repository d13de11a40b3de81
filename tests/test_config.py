import datetime
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
    assert (settings.email, settings.listen, settings.timeout) == ("cli@example.com", "127.0.0.1:2", 10)
    assert build_settings({}, None, {}).state_dir == Path("/var/lib/certrenew")


def test_environment_values_are_parsed_and_checked():
    settings = build_settings({}, None, {"CERTRENEW_AGREE_TOS": "yes", "CERTRENEW_RENEW_BEFORE": "12h",
                                         "CERTRENEW_CONCURRENCY": "8", "CERTRENEW_STAGING": "1"})
    assert settings.agree_tos and settings.concurrency == 8
    assert settings.renew_before == datetime.timedelta(hours=12)
    assert settings.directory_url == LETSENCRYPT_STAGING
    for name, value in (("AGREE_TOS", "maybe"), ("TIMEOUT", "-1"), ("KEY_TYPE", "dsa"), ("RENEW_BEFORE", "soon")):
        with pytest.raises(UsageError, match=f"CERTRENEW_{name}"):
            build_settings({}, None, {f"CERTRENEW_{name}": value})


@pytest.mark.parametrize("raw, value", [("1", True), ("TRUE", True), ("Yes", True), ("on", True),
                                        ("0", False), ("false", False), ("NO", False), ("Off", False)])
def test_boolean_variables_are_parsed_one_way_everywhere(raw, value):
    assert env_flag("CERTRENEW_VERBOSE", {"CERTRENEW_VERBOSE": raw}) is value
    assert build_settings({}, None, {"CERTRENEW_STAGING": raw}).staging is value


def test_a_bad_boolean_variable_is_a_usage_error_naming_it():
    assert env_flag("CERTRENEW_QUIET", {}) is None
    with pytest.raises(UsageError, match="invalid CERTRENEW_QUIET: expected 1/true/yes/on"):
        env_flag("CERTRENEW_QUIET", {"CERTRENEW_QUIET": "maybe"})


def test_a_no_flag_overrides_true_from_the_environment_and_the_file(tmp_path):
    config = config_file(tmp_path, "agree_tos = true\nstaging = true\n")
    environ = {"CERTRENEW_STAGING": "yes"}
    settings = build_settings({"agree_tos": False, "staging": False}, config, environ)
    assert (settings.agree_tos, settings.staging) == (False, False)
    settings = build_settings({"agree_tos": None, "staging": None}, config, environ)  # flag not given
    assert (settings.agree_tos, settings.staging) == (True, True)
    assert build_settings({}, config, {"CERTRENEW_STAGING": "off"}).staging is False


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


@pytest.mark.parametrize("text, says", [
    ("timeout = true\n", "timeout: must be a number"),
    ("force = true\n", "unknown key 'force'"),
    ("certificate = 1\n", "array of tables"),
    ("[[certificate]]\nname = 'x'\n", "domains must be a list"),
    ("[[certificate]]\nname = '../x'\ndomains = ['a.example']\n", "invalid certificate name"),
    ("[[certificate]]\ndomains = ['a.example']\nprofile = 3\n", "profile must be a string"),
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
    assert settings.haproxy_socket == ("/run/a.sock", "ipv4@10.0.0.2:9999")
    assert settings.verify_endpoint == ("10.0.0.2:443",)
    settings = build_settings({"haproxy_config": ["/etc/haproxy/a.cfg", "/etc/haproxy/b.cfg"]}, config,
                              {"CERTRENEW_HAPROXY_SOCKET": "/run/b.sock, /run/c.sock"})
    assert settings.haproxy_socket == ("/run/b.sock", "/run/c.sock")
    assert settings.haproxy_config == (Path("/etc/haproxy/a.cfg"), Path("/etc/haproxy/b.cfg"))
    assert build_settings({}, None, {}).haproxy_socket == ()


def test_list_options_are_checked(tmp_path):
    with pytest.raises(UsageError, match="CERTRENEW_HAPROXY_SOCKET: relative.sock"):
        build_settings({}, None, {"CERTRENEW_HAPROXY_SOCKET": "/run/a.sock relative.sock"})
    with pytest.raises(UsageError, match="--verify-endpoint: nohost: expected HOST:PORT"):
        build_settings({"verify_endpoint": ["nohost"]}, None, {})
    with pytest.raises(UsageError, match="haproxy_socket: must be a list"):
        config_file(tmp_path, 'haproxy_socket = "/run/a.sock"\n')


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
    assert build_settings({"key_type": "ecdsa-p384,rsa4096"}, None, {}).key_type == "ecdsa-p384,rsa4096"
    for pair in ('["ecdsa-p256", "ecdsa-p384"]', '["rsa2048", "rsa2048"]', '["ecdsa-p256", "rsa2048", "rsa4096"]'):
        with pytest.raises(UsageError, match="one ECDSA and one RSA key type"):
            config_file(tmp_path, f'[[certificate]]\ndomains = ["a.example"]\nkey_type = {pair}\n')


WILDCARD = "invalid domain '*.example.com': wildcard certificates need the DNS-01 challenge; HTTP-01 cannot validate them"


def test_a_wildcard_over_http01_is_refused_in_the_config_file(tmp_path):
    with pytest.raises(UsageError) as refused:
        config_file(tmp_path, '[[certificate]]\nname = "star"\ndomains = ["*.Example.com"]\n')
    assert str(refused.value).endswith(WILDCARD) and "certificate #1" in str(refused.value)


def test_a_wildcard_on_the_command_line_is_exit_2_before_anything_is_touched(tmp_path, capsys):
    from certrenew.cli import main

    code = main(["*.example.com", "--state-dir", str(tmp_path / "state"), "--ssl-dir", str(tmp_path / "ssl")])
    assert code == 2 and capsys.readouterr().err == f"certrenew: error: {WILDCARD}\n"
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_challenge_type_is_a_usage_error():
    from certrenew.config import certificate_specs

    with pytest.raises(UsageError, match="unknown challenge type 'tls-alpn-01'; choose one of http-01"):
        certificate_specs("a", ("a.example",), "ecdsa-p256", challenge="tls-alpn-01")


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
    assert (settings.timeout, settings.lock_timeout, settings.renew_before.days) == (86400, 0, 999)
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
