import pytest

from certrenew.acme.account import new_account_key_pem
from certrenew.challenge.stateless import thumbprint
from certrenew.cli.commands import main
from certrenew.cli.haproxy_config import render
from certrenew.config import Settings
from certrenew.errors import UsageError
from certrenew.state.store import Account, FileStore

CA = "https://ca.example/dir"


def test_no_account_is_one_line_saying_how_to_make_it_and_nothing_is_written(tmp_path):
    with pytest.raises(UsageError, match=r"^no ACME account for https://ca.example/dir .*--create-account"):
        render(Settings.of(directory=CA, state_dir=tmp_path / "state"))
    assert not (tmp_path / "state").exists()


def test_create_account_makes_the_key_once_and_the_lines_carry_its_thumbprint(tmp_path):
    settings = Settings.of(directory=CA, state_dir=tmp_path / "state")
    first = render(settings, create_account=True)
    account = FileStore(settings.state_dir).load_account(CA)
    assert account is not None and account.uri is None  # registered at the first order
    assert f"    setenv ACME_THUMBPRINT {thumbprint(account.key_pem)}\n" in first
    assert render(settings, create_account=True) == render(settings) == first


def test_a_registered_account_is_named_and_the_map_variant_has_no_global_section(tmp_path, capsys):
    store = FileStore(tmp_path)
    with store.lock(1):
        store.save_account(CA, Account(new_account_key_pem(), "https://ca.example/acct/7"))
    assert main(["haproxy-config", "--directory", CA, "--state-dir", str(tmp_path), "--map", "/etc/haproxy/a.map"]) == 0
    out = capsys.readouterr().out
    assert "account https://ca.example/acct/7 of https://ca.example/dir" in out
    assert "\nglobal\n" not in out and "map(/etc/haproxy/a.map)" in out
