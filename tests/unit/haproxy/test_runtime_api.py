"""The Runtime API client against a fake HAProxy socket that answers like HAProxy 2.6 does (or 3.4, where
their answers differ)."""

import re

import pytest

from certrenew.haproxy import runtime_api
from certrenew.haproxy.runtime_api import (
    LOCKED,
    Rejected,
    RuntimeApi,
    RuntimeApiError,
    TransactionOpen,
    Unsupported,
    find_crt_list,
    parse_show_crt_lists,
    parse_show_ssl_cert,
)
from certrenew.system.hostport import check_address
from tests.harness.fake_haproxy import FakeHAProxy

PATH = "/etc/haproxy/ssl/site.pem"
BUNDLE = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"


@pytest.fixture
def fake(tmp_path):
    servers = []

    def start(answers):
        server = FakeHAProxy(tmp_path / f"admin{len(servers)}.sock", answers)
        servers.append(server)
        return server, RuntimeApi(str(tmp_path / f"admin{len(servers) - 1}.sock"), timeout=2)

    yield start
    for server in servers:
        server.close()


def test_show_ssl_cert_lists_files_and_an_open_transaction():
    table = parse_show_ssl_cert(f"# transaction\n*{PATH}\n# filename\n/a.pem\n{PATH}\n\n")
    assert table.files == {"/a.pem", PATH} and table.transaction == PATH
    assert parse_show_ssl_cert("# filename\n/a.pem\n\n").transaction is None


def test_crt_directory_is_found_however_it_is_spelled():
    lists = parse_show_crt_lists("/etc/haproxy/crt.lst\n/etc/haproxy/ssl\n\n")
    assert lists == ["/etc/haproxy/crt.lst", "/etc/haproxy/ssl"]
    assert find_crt_list(lists, "/etc/haproxy/ssl/") == "/etc/haproxy/ssl"
    assert find_crt_list(lists, "/srv/ssl") is None


@pytest.mark.parametrize("address", ["/run/haproxy/admin.sock", "unix@/run/a.sock", "ipv4@10.0.0.2:9999"])
def test_addresses_accepted(address):
    assert check_address(address) == address


@pytest.mark.parametrize("address", ["admin.sock", "ipv4@host", "ipv4@host:0", "ipv4@host:70000", "tcp://h:1"])
def test_addresses_refused(address):
    with pytest.raises(ValueError):
        check_address(address)


def test_replace_sends_the_payload_then_commits(fake):
    server, api = fake({
        "set ssl cert": f"Transaction created for certificate {PATH}!\n",
        "commit ssl cert": f"Committing {PATH}.\nSuccess!\n",
    })
    api.replace_certificate(PATH, BUNDLE)
    assert server.commands() == ["set ssl cert", "commit ssl cert"]
    assert server.requests[0] == f"set ssl cert {PATH} <<\n".encode() + BUNDLE + b"\n"


def test_a_failed_commit_is_aborted_with_haproxys_words(fake):
    server, api = fake({
        "set ssl cert": f"Transaction created for certificate {PATH}!\n",
        "commit ssl cert": "inconsistencies between private key and certificate loaded.\nCan't commit!\n",
        "abort ssl cert": f"Transaction aborted for certificate '{PATH}'!\n",
    })
    with pytest.raises(RuntimeApiError, match="inconsistencies between private key and certificate"):
        api.replace_certificate(PATH, BUNDLE)
    assert server.commands() == ["set ssl cert", "commit ssl cert", "abort ssl cert"]


OTHER = "/etc/haproxy/ssl/other.pem"


def test_another_files_transaction_that_took_the_payload_is_aborted_not_committed(fake):
    """HAProxy 2.6 puts the payload into whichever transaction is open: committed, it would serve
    this certificate under the other file's name."""
    server, api = fake({
        "set ssl cert": f"Transaction updated for certificate {OTHER}!\n",
        "abort ssl cert": f"Transaction aborted for certificate '{OTHER}'!\n",
    })
    with pytest.raises(TransactionOpen, match=f"transaction for {OTHER} is open .* so it was aborted"):
        api.replace_certificate(PATH, BUNDLE)
    assert server.commands() == ["set ssl cert", "abort ssl cert"]
    assert server.requests[-1] == f"abort ssl cert {OTHER}\n".encode()


def test_another_files_open_transaction_is_named_and_left_to_its_owner(fake):
    """HAProxy 3.4 refuses `set ssl cert` then, changing nothing: not the bundle's fault (not Rejected)."""
    server, api = fake({
        "set ssl cert": f"The ongoing transaction is about '{OTHER}' but you are trying to set '{PATH}'\n"
                        f"Can't update {PATH}!\n",
    })
    with pytest.raises(TransactionOpen, match=f"transaction for {OTHER} is open .*'abort ssl cert {OTHER}'") as raised:
        api.replace_certificate(PATH, BUNDLE)
    assert not isinstance(raised.value, Rejected)
    assert server.commands() == ["set ssl cert"]  # neither committed nor aborted: the transaction is not ours


def test_adding_a_certificate_cleans_up_when_a_step_fails(fake):
    server, api = fake({
        "new ssl cert": f"New empty certificate store '{PATH}'!\n",
        "set ssl cert": f"Transaction created for certificate {PATH}!\n",
        "commit ssl cert": f"Committing {PATH}\nSuccess!\n",
        "add ssl crt-list": "Can't edit the crt-list: crt-list '/etc/haproxy/ssl' does not exist!\n",
        "del ssl crt-list": "Can't delete the entry\n",
        "del ssl cert": f"Certificate '{PATH}' deleted!\n",
    })
    with pytest.raises(RuntimeApiError, match="add ssl crt-list .* does not exist") as raised:
        api.add_certificate("/etc/haproxy/ssl", PATH, BUNDLE)
    assert not isinstance(raised.value, Rejected)  # the crt-list is at fault, not the bundle
    assert server.commands()[-2:] == ["del ssl crt-list", "del ssl cert"]


@pytest.mark.parametrize("refusal", [
    f"unable to load chain certificate into SSL Context '{PATH}'. Make sure you are linking against Openssl "
    ">= 1.0.2.",  # HAProxy 2.6, a chain OpenSSL's security level will not load
    f"unable to load SSL private key into SSL Context '{PATH}': passed a null parameter.",  # 3.4: no key
], ids=["2.6 chain", "3.4 no key"])
def test_a_bundle_the_binds_cannot_load_is_rejected_when_added_to_the_crt_list(fake, refusal):
    """A new certificate meets its binds' SSL contexts only at `add ssl crt-list`; HAProxy 3.4 commits even one
    without a key (2.6 refuses that at commit)."""
    server, api = fake({
        "new ssl cert": f"New empty certificate store '{PATH}'!\n",
        "set ssl cert": f"Transaction created for certificate {PATH}!\n",
        "commit ssl cert": f"Committing {PATH}\nSuccess!\n",
        "add ssl crt-list": f"Inserting certificate '{PATH}' in crt-list '/etc/haproxy/ssl'.\n{refusal}\nFailed!\n",
        "del ssl crt-list": "Can't delete the entry\n",
        "del ssl cert": f"Certificate '{PATH}' deleted!\n",
    })
    with pytest.raises(Rejected, match=re.escape(refusal)):
        api.add_certificate("/etc/haproxy/ssl", PATH, BUNDLE)
    assert server.commands()[-2:] == ["del ssl crt-list", "del ssl cert"]


def test_an_unknown_command_means_unsupported(fake):
    _, api = fake({})
    with pytest.raises(Unsupported, match="older than 2.2"):
        api.crt_lists()


def test_a_blank_line_in_a_payload_is_refused_before_sending(fake):
    server, api = fake({})
    with pytest.raises(RuntimeApiError, match="blank line"):
        api.command("set ssl cert /x.pem", b"a\n\nb\n")
    assert server.requests == []


def test_a_missing_socket_is_one_clear_error(tmp_path):
    with pytest.raises(RuntimeApiError, match="no-such.sock: No such file"):
        RuntimeApi(str(tmp_path / "no-such.sock")).crt_lists()


def test_a_command_met_by_another_clients_lock_is_sent_again_until_it_is_done(fake):
    """HAProxy answers LOCKED while another client's certificate command runs, having done nothing: the bundle
    is not at fault, and a moment later the same command goes through."""
    answers = iter([f"Can't update {PATH}!\n{LOCKED}\n", f"Can't update {PATH}!\n{LOCKED}\n",
                    f"Transaction created for certificate {PATH}!\n"])
    server, api = fake({"set ssl cert": lambda: next(answers), "commit ssl cert": f"Committing {PATH}.\nSuccess!\n"})
    api.replace_certificate(PATH, BUNDLE)
    assert server.commands() == ["set ssl cert", "set ssl cert", "set ssl cert", "commit ssl cert"]


def test_a_lock_held_past_the_wait_is_an_error_that_names_it(fake, monkeypatch):
    monkeypatch.setattr(runtime_api, "LOCKED_WAIT", 0.1)
    server, api = fake({"set ssl cert": f"Can't update {PATH}!\n{LOCKED}\n"})
    with pytest.raises(RuntimeApiError, match="stayed locked for 0.1 s") as raised:
        api.replace_certificate(PATH, BUNDLE)
    assert not isinstance(raised.value, Rejected)  # the install would set a good bundle aside
    assert 1 < len(server.commands()) < 20 and "commit ssl cert" not in server.commands()
