import datetime
from pathlib import Path

import pytest

from certrenew.config import LETSENCRYPT_STAGING, CertificateSpec, build_settings, load_config
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
