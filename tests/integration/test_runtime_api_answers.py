"""The Runtime API client against the lab's real HAProxy, where HAProxy lines answer differently
(scripts/test runs these on Debian's 2.6 and on 3.4): each failure is blamed on the right party
and leaves nothing of certrenew's open or half-added."""

import re
import threading

import pytest
import trustme

from certrenew.errors import CertrenewError
from certrenew.haproxy.install import Installer
from certrenew.haproxy.runtime_api import Rejected, RuntimeApi, TransactionOpen, argument, find_crt_list
from certrenew.pki.bundle import build_bundle, leaf_info


def bundle(name: str) -> bytes:
    cert = trustme.CA().issue_cert(name)
    return build_bundle(b"".join(blob.bytes() for blob in cert.cert_chain_pems), cert.private_key_pem.bytes())


def transaction_serial(api: RuntimeApi, path: str) -> str:
    """The serial of the certificate an open transaction holds for `path` (`show ssl cert *PATH`)."""
    found = re.search(r"^Serial: (\S+)", api.command(f"show ssl cert *{argument(path)}"), re.M)
    assert found, f"no transaction open for {path}"
    return found[1].lower().lstrip("0")


def serial(pem: bytes) -> str:
    return leaf_info(pem).serial.lower().lstrip("0")


@pytest.fixture
def api(lab) -> RuntimeApi:
    return RuntimeApi(str(lab.admin_socket))


@pytest.fixture
def crt_list(lab, api) -> str:
    found = find_crt_list(api.crt_lists(), str(lab.ssl_dir))
    assert found is not None
    return found


def test_another_tools_open_transaction_is_named_and_never_takes_certrenews_certificate(lab, api, crt_list):
    """3.4 refuses `set ssl cert` for another file then; 2.6 put the payload into that transaction, so
    certrenew aborts it. Either way the error names the transaction, not the bundle."""
    ours = f"{lab.ssl_dir}/site.example.pem"
    api.add_certificate(crt_list, ours, bundle("site.example"))
    placeholder = f"{lab.ssl_dir}/000-certrenew-placeholder.pem"
    theirs = bundle("other.example")
    assert "Transaction created" in api.command(f"set ssl cert {argument(placeholder)}", theirs)
    assert api.certificates().transaction == placeholder  # the other tool's transaction is really open
    new = bundle("site.example")

    with pytest.raises(TransactionOpen, match=f"transaction for {placeholder} is open") as raised:
        api.replace_certificate(ours, new)

    assert not isinstance(raised.value, Rejected)
    after = api.certificates().transaction
    assert after in (None, placeholder)
    if after is not None:  # left to its owner (3.4), holding what its owner put in
        assert transaction_serial(api, placeholder) == serial(theirs)
        api.command(f"abort ssl cert {argument(placeholder)}")
    assert serial(new) not in api.command(f"show ssl cert {argument(ours)}").lower()


def test_a_bundle_without_a_key_is_rejected_and_leaves_nothing_behind(lab, api, crt_list):
    """2.6 refuses it at `commit ssl cert`; 3.4 commits it and refuses it only at `add ssl crt-list`."""
    path = f"{lab.ssl_dir}/site.example.pem"
    cert_only = trustme.CA().issue_cert("site.example").cert_chain_pems[0].bytes()

    with pytest.raises(Rejected, match="private key"):
        api.add_certificate(crt_list, path, cert_only)

    table = api.certificates()
    assert table.path_of(path) is None and table.transaction is None
    assert path not in api.command(f"show ssl crt-list {argument(crt_list)}")


def test_installs_made_at_once_into_one_ssl_dir_take_turns_and_none_is_refused(lab, api):
    """Two installers at once into one HAProxy, as a daemon's follower and a run by hand would be: each holds the
    ssl dir's flock from its own descriptor, as two processes do. HAProxy has one certificate transaction for all
    its clients; without turns one's `set ssl cert` met the other's transaction or lock ("Operations on
    certificates are currently locked!"), and a good bundle was taken for refused and set aside."""
    results, errors = [], []

    def installs(prefix: str) -> None:
        installer = Installer(lab.ssl_dir, "false", (str(lab.admin_socket),))  # no reload: hot updates or nothing
        for round_ in range(8):
            try:
                results.extend(installer.install({f"{prefix}{index}.r{round_}.turns.example":
                                                  bundle(f"{prefix}{index}.r{round_}.turns.example")
                                                  for index in range(4)}))
            except CertrenewError as error:
                errors.append(error)
    threads = [threading.Thread(target=installs, args=(prefix,)) for prefix in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == [] and len(results) == 64, errors
        assert {result.method for result in results} == {"hot update"}
        table = api.certificates()
        assert all(table.path_of(str(result.path)) for result in results) and table.transaction is None
    finally:
        remover = Installer(lab.ssl_dir, "false", (str(lab.admin_socket),))
        for result in results:
            remover.remove(result.name)
