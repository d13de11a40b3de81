"""The Installer against a fake Runtime API: hot update, fallback to a reload, rollback on every path."""

import fcntl
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from certrenew.config import CertificateSpec
from certrenew.errors import CertrenewError, Interrupted, Refused
from certrenew.haproxy import install, service
from certrenew.haproxy.install import Blocked, Installer, Serving
from certrenew.haproxy.runtime_api import RuntimeApiError
from certrenew.pki.bundle import build_bundle, pem_blocks
from certrenew.system import limits, signals
from certrenew.system.runcontext import RunContext
from tests.harness.fake_haproxy import FakeHAProxy

NAME = "site.example"


def bundle_of(ca: trustme.CA) -> bytes:
    cert = ca.issue_cert(NAME)
    return build_bundle(b"".join(blob.bytes() for blob in cert.cert_chain_pems), cert.private_key_pem.bytes())


@pytest.fixture
def ssl_dir(tmp_path) -> Path:
    directory = tmp_path / "ssl"
    directory.mkdir()
    return directory


def haproxy_knowing(tmp_path: Path, path: Path, **answers: str) -> FakeHAProxy:
    """A fake HAProxy that loads the crt directory of `path` and has `path` in memory."""
    return FakeHAProxy(tmp_path / "admin.sock", {
        "show ssl crt-list": f"{path.parent}\n\n",
        "show ssl cert": f"# filename\n{path}\n\n",
        "set ssl cert": f"Transaction created for certificate {path}!\n",
        "commit ssl cert": f"Committing {path}.\nSuccess!\n",
        **worker(tmp_path),
        **{verb.replace("_", " "): answer for verb, answer in answers.items()},
    })


def reload_marker(tmp_path: Path) -> tuple[str, Path]:
    marker = tmp_path / "reloaded"
    return f"touch {marker}", marker


def install_via(fake: FakeHAProxy, tmp_path: Path, ssl_dir: Path, bundles: dict[str, bytes]):
    """`Installer.install` through `fake` (the Runtime API at tmp_path/admin.sock), reloading with
    `reload_marker`'s command; `fake` is closed after, however the install ends."""
    try:
        return Installer(ssl_dir, reload_marker(tmp_path)[0], [str(tmp_path / "admin.sock")]).install(bundles)
    finally:
        fake.close()


def test_a_certificate_haproxy_has_is_replaced_in_memory_without_a_reload(tmp_path, ssl_dir):
    path = ssl_dir / f"{NAME}.pem"
    old, new = bundle_of(trustme.CA()), bundle_of(trustme.CA())
    path.write_bytes(old)
    fake = haproxy_knowing(tmp_path, path)
    marker = reload_marker(tmp_path)[1]
    [result] = install_via(fake, tmp_path, ssl_dir, {NAME: new})
    assert (result.name, result.path, result.method) == (NAME, path, "hot update")
    assert path.read_bytes() == new and not marker.exists()
    assert fake.commands() == ["show ssl crt-list", "show ssl cert", "set ssl cert", "commit ssl cert"]
    assert fake.requests[2].endswith(new + b"\n")


def worker(tmp_path: Path) -> dict[str, Callable[[], str]]:
    """`show info` as HAProxy's worker answers it: another pid once `reload_marker`'s command ran."""
    marker = reload_marker(tmp_path)[1]
    return {"show info": lambda: f"Name: HAProxy\nPid: {2 if marker.exists() else 1}\nUptime_sec: 1\n"}


def test_an_haproxy_without_the_commands_gets_the_reload(tmp_path, ssl_dir):
    fake = FakeHAProxy(tmp_path / "admin.sock", worker(tmp_path))  # answers every other command "Unknown command"
    marker = reload_marker(tmp_path)[1]
    [result] = install_via(fake, tmp_path, ssl_dir, {NAME: bundle_of(trustme.CA())})
    assert result.method == "reload" and "older than 2.2" in result.detail and result.confirmed
    assert marker.exists() and fake.commands().count("show info") >= 2  # its worker, before and after


def test_a_reload_that_leaves_the_old_worker_running_fails_and_puts_everything_back(tmp_path, ssl_dir, monkeypatch):
    monkeypatch.setattr(install, "RELOAD_GRACE", 0.5)
    path = ssl_dir / f"{NAME}.pem"
    old = bundle_of(trustme.CA())
    path.write_bytes(old)
    fake = FakeHAProxy(tmp_path / "admin.sock", {"show info": "Pid: 7\n"})  # a master that could not load its config
    with pytest.raises(CertrenewError, match=r"exited 0, but HAProxy .* still runs the worker it ran before "
                                             r"\(pid 7\).*did not take.*previous certificate was put back"):
        install_via(fake, tmp_path, ssl_dir, {NAME: bundle_of(trustme.CA())})
    assert path.read_bytes() == old and reload_marker(tmp_path)[1].exists()


def test_a_reload_nothing_can_ask_about_is_not_confirmed(tmp_path, ssl_dir):
    reload_command, marker = reload_marker(tmp_path)
    [result] = Installer(ssl_dir, reload_command).install({NAME: bundle_of(trustme.CA())})
    assert (result.method, result.confirmed) == ("reload", False) and marker.exists()


def closed_endpoint() -> str:
    """A verify endpoint where nothing listens: every certificate fails the check."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{closed.getsockname()[1]}"


def test_a_certificate_not_served_afterwards_is_put_back_on_disk_and_in_memory(tmp_path, ssl_dir, monkeypatch):
    monkeypatch.setattr(install, "HOT_UPDATE_GRACE", 0.2)
    path = ssl_dir / f"{NAME}.pem"
    old, new = bundle_of(trustme.CA()), bundle_of(trustme.CA())
    path.write_bytes(old)
    fake = haproxy_knowing(tmp_path, path)
    reload_command, marker = reload_marker(tmp_path)
    installer = Installer(ssl_dir, reload_command, [str(tmp_path / "admin.sock")], verify_endpoints=[closed_endpoint()])
    try:
        with pytest.raises(CertrenewError, match="gives no TLS handshake.*previous certificate was put back"):
            installer.install({NAME: new})
    finally:
        fake.close()
    assert path.read_bytes() == old and not marker.exists()
    assert fake.commands()[2:] == ["set ssl cert", "commit ssl cert", "set ssl cert", "commit ssl cert"]
    assert fake.requests[2].endswith(new + b"\n") and fake.requests[4].endswith(old + b"\n")


def test_a_verify_endpoint_serving_another_certificate_for_one_name_blames_that_certificate_alone(
        tmp_path, ssl_dir, serving, monkeypatch):
    monkeypatch.setattr(install, "RELOAD_GRACE", 0.5)
    ca = trustme.CA()
    served, shadowed = ca.issue_cert("a.example"), ca.issue_cert("b.example")
    bundles = {name: build_bundle(b"".join(blob.bytes() for blob in leaf.cert_chain_pems), leaf.private_key_pem.bytes())
               for name, leaf in (("a", served), ("b", shadowed))}
    installer = Installer(ssl_dir, "true", verify_endpoints=[serving(served)])  # serves a's for every name
    with pytest.raises(install.NotServed) as failure:
        installer.install(bundles)
    assert failure.value.which == ["b"] and list(failure.value.each) == ["b"]
    assert failure.value.reason("b").startswith(f"served-certificate check: {installer.verify_endpoints[0]} serves "
                                                "another certificate for b.example")
    assert list(ssl_dir.iterdir()) == []  # the batch put back; the run installs a again without b


def test_a_certificate_added_at_runtime_and_not_served_is_removed_again(tmp_path, ssl_dir, monkeypatch):
    monkeypatch.setattr(install, "HOT_UPDATE_GRACE", 0.2)
    path = ssl_dir / f"{NAME}.pem"
    fake = FakeHAProxy(tmp_path / "admin.sock", {
        "show ssl crt-list": f"{ssl_dir}\n\n",
        "show ssl cert": "# filename\n\n",
        "new ssl cert": f"New empty certificate store '{path}'!\n",
        "set ssl cert": f"Transaction created for certificate {path}!\n",
        "commit ssl cert": f"Committing {path}.\nSuccess!\n",
        "add ssl crt-list": f"Inserting certificate '{path}' in crt-list '{ssl_dir}'.\nSuccess!\n",
        "del ssl crt-list": f"Entry '{path}' deleted in crtlist '{ssl_dir}'!\n",
        "del ssl cert": f"Certificate '{path}' deleted!\n",
    })
    installer = Installer(ssl_dir, "false", [str(tmp_path / "admin.sock")], verify_endpoints=[closed_endpoint()])
    try:
        with pytest.raises(CertrenewError, match="gives no TLS handshake.*new certificate was removed again"):
            installer.install({NAME: bundle_of(trustme.CA())})
    finally:
        fake.close()
    assert "add ssl crt-list" in fake.commands()  # it was served, then taken out again
    assert fake.commands()[-2:] == ["del ssl crt-list", "del ssl cert"]
    assert not path.exists()


def test_a_certificate_installed_by_reload_and_not_served_is_reloaded_away(tmp_path, ssl_dir, monkeypatch):
    monkeypatch.setattr(install, "RELOAD_GRACE", 0.2)
    path = ssl_dir / f"{NAME}.pem"
    old = bundle_of(trustme.CA())
    path.write_bytes(old)
    reloads = tmp_path / "reloads"
    installer = Installer(ssl_dir, f"sh -c 'cat {path} >> {reloads}'", verify_endpoints=[closed_endpoint()])
    with pytest.raises(CertrenewError, match="gives no TLS handshake.*previous certificate was put back"):
        installer.install({NAME: bundle_of(trustme.CA())})
    new_reloaded, old_reloaded = pem_blocks(reloads.read_bytes())[::2]  # what each reload had HAProxy load
    assert new_reloaded != old_reloaded and old_reloaded == pem_blocks(old)[0]
    assert path.read_bytes() == old


def test_a_reload_is_given_the_reload_grace_and_a_hot_update_the_shorter_one(tmp_path, ssl_dir, monkeypatch):
    graces = []
    monkeypatch.setattr(install.verify, "wait_served", lambda endpoints, bundle, grace: graces.append(grace))
    Installer(ssl_dir, "true").install({NAME: bundle_of(trustme.CA())})
    path = ssl_dir / f"{NAME}.pem"
    fake = haproxy_knowing(tmp_path, path)
    try:
        Installer(ssl_dir, "false", [str(tmp_path / "admin.sock")]).install({NAME: bundle_of(trustme.CA())})
    finally:
        fake.close()
    assert [round(grace) for grace in graces] == [round(install.RELOAD_GRACE), round(install.HOT_UPDATE_GRACE)]


def test_a_signal_during_the_install_puts_the_previous_certificate_back(tmp_path, ssl_dir):
    path = ssl_dir / f"{NAME}.pem"
    old = bundle_of(trustme.CA())
    path.write_bytes(old)
    context = RunContext()
    with signals.handled(context), pytest.raises(Interrupted, match="SIGTERM"):
        Installer(ssl_dir, "sh -c 'kill -TERM $PPID; sleep 5'", context=context).install({NAME: bundle_of(trustme.CA())})
    assert path.read_bytes() == old


def test_haproxy_c_naming_a_new_bundle_refuses_that_certificate(tmp_path, ssl_dir, monkeypatch):
    path = ssl_dir / f"{NAME}.pem"
    checked = []

    def check_config(configs):
        checked.append(path.read_bytes())
        raise service.CheckFailed("does not pass haproxy -c", f"unable to load SSL certificate from '{path}'")
    monkeypatch.setattr(service, "check_config", check_config)
    new = bundle_of(trustme.CA())
    reload_command, marker = reload_marker(tmp_path)
    with pytest.raises(Refused, match="does not pass haproxy -c") as refused:
        Installer(ssl_dir, reload_command, configs=[tmp_path / "haproxy.cfg"]).install({NAME: new})
    assert checked == [new]  # the check really ran on the new bundle
    assert refused.value.which == [NAME] and not path.exists() and not marker.exists()


def test_a_certificate_in_memory_whose_file_is_gone_is_left_to_the_reload(tmp_path, ssl_dir):
    path = ssl_dir / f"{NAME}.pem"
    fake = haproxy_knowing(tmp_path, path)
    marker = reload_marker(tmp_path)[1]
    [result] = install_via(fake, tmp_path, ssl_dir, {NAME: bundle_of(trustme.CA())})
    assert result.method == "reload" and "the file is gone" in result.detail and marker.exists()
    assert "set ssl cert" not in fake.commands()


def test_an_open_transaction_stops_the_install_before_anything_changes(tmp_path, ssl_dir):
    path = ssl_dir / f"{NAME}.pem"
    old = bundle_of(trustme.CA())
    path.write_bytes(old)
    fake = haproxy_knowing(tmp_path, path, show_ssl_cert=f"# transaction\n*{path}\n# filename\n{path}\n\n")
    marker = reload_marker(tmp_path)[1]
    with pytest.raises(RuntimeApiError, match=f"transaction for {path} is open.*'abort ssl cert {path}'"):
        install_via(fake, tmp_path, ssl_dir, {NAME: bundle_of(trustme.CA())})
    assert path.read_bytes() == old and not marker.exists()
    assert fake.commands() == ["show ssl crt-list", "show ssl cert"]


def test_a_transaction_opened_by_another_tool_during_the_install_is_not_blamed_on_the_bundle(tmp_path, ssl_dir):
    """HAProxy 3.4 refuses `set ssl cert` while another file's transaction is open (one opened after the
    install looked): the certificate is not refused, and the error names the transaction to end."""
    path, other = ssl_dir / f"{NAME}.pem", ssl_dir / "other.pem"
    old = bundle_of(trustme.CA())
    path.write_bytes(old)
    fake = haproxy_knowing(tmp_path, path, set_ssl_cert=f"The ongoing transaction is about '{other}' but you are "
                                                        f"trying to set '{path}'\nCan't update {path}!\n")
    with pytest.raises(CertrenewError, match=f"transaction for {other} is open .*'abort ssl cert {other}'") as raised:
        install_via(fake, tmp_path, ssl_dir, {NAME: bundle_of(trustme.CA())})
    assert not isinstance(raised.value, Refused)
    assert path.read_bytes() == old and "commit ssl cert" not in fake.commands()


def test_a_refused_commit_leaves_the_old_file_and_aborts(tmp_path, ssl_dir):
    path = ssl_dir / f"{NAME}.pem"
    old = bundle_of(trustme.CA())
    path.write_bytes(old)
    fake = haproxy_knowing(tmp_path, path, commit_ssl_cert="unable to load the certificate.\nCan't commit!\n",
                           abort_ssl_cert=f"Transaction aborted for certificate '{path}'!\n")
    marker = reload_marker(tmp_path)[1]
    with pytest.raises(CertrenewError, match="Can't commit|unable to load"):
        install_via(fake, tmp_path, ssl_dir, {NAME: bundle_of(trustme.CA())})
    assert path.read_bytes() == old and not marker.exists()
    assert fake.commands()[-1] == "abort ssl cert"
    assert not [p for p in ssl_dir.iterdir() if p.name != path.name]  # no temp file left


def test_a_rollback_says_put_back_only_where_there_was_a_previous_certificate():
    a, b = Path("/ssl/a.pem"), Path("/ssl/b.pem")
    assert install._undone({a: b"old"}) == "the previous certificate was put back"
    assert install._undone({a: None}) == "the new certificate was removed again (there was none before)"
    assert install._undone({a: b"old", b: None}) == (
        "the previous certificates were put back and the new b.pem removed again")


def test_a_bundle_haproxy_refuses_at_commit_is_named_and_everything_put_back(tmp_path, ssl_dir):
    path = ssl_dir / f"{NAME}.pem"
    old, new = bundle_of(trustme.CA()), bundle_of(trustme.CA())
    path.write_bytes(old)
    fake = haproxy_knowing(tmp_path, path, commit_ssl_cert=f"Committing {path}\nunable to load the key\n")
    try:
        with pytest.raises(Refused, match="HAProxy refused site.example.pem: .*unable to load the key") as refused:
            Installer(ssl_dir, "false", [str(tmp_path / "admin.sock")]).install({NAME: new})
    finally:
        fake.close()
    assert refused.value.which == [NAME]
    assert path.read_bytes() == old and "abort ssl cert" in fake.commands()


def test_a_symlinked_bundle_is_replaced_after_a_warning_and_the_rollback_restores_what_it_led_to(
        tmp_path, ssl_dir, caplog):
    elsewhere = tmp_path / "managed-elsewhere.pem"
    old, new = bundle_of(trustme.CA()), bundle_of(trustme.CA())
    elsewhere.write_bytes(old)
    path = ssl_dir / f"{NAME}.pem"
    path.symlink_to(elsewhere)
    with pytest.raises(CertrenewError, match="reload command 'false' failed.*previous certificate was put back"):
        Installer(ssl_dir, "false").install({NAME: new})
    assert f"{path} is a symbolic link to {elsewhere}" in caplog.text
    assert not path.is_symlink() and path.read_bytes() == old and elsewhere.read_bytes() == old
    Installer(ssl_dir, "true").install({NAME: new})
    assert path.read_bytes() == new and elsewhere.read_bytes() == old


def mismatched_bundle() -> bytes:
    """A certificate with another certificate's key: what a resumed pending or a library caller could bring."""
    one, other = trustme.CA().issue_cert(NAME), trustme.CA().issue_cert(NAME)
    return build_bundle(one.cert_chain_pems[0].bytes(), other.private_key_pem.bytes())


@pytest.mark.parametrize("bad", [mismatched_bundle(), b"not a bundle\n", trustme.CA().cert_pem.bytes()],
                         ids=["key of another certificate", "no PEM", "no key"])
def test_a_bundle_haproxy_could_not_load_is_refused_before_anything_is_written(tmp_path, ssl_dir, bad):
    reload_command, marker = reload_marker(tmp_path)
    good = bundle_of(trustme.CA())
    with pytest.raises(CertrenewError, match=f"^{NAME}: refusing to install its bundle: "):
        Installer(ssl_dir, reload_command).install({"first.example": good, NAME: bad})
    assert list(ssl_dir.iterdir()) == [] and not marker.exists()


def within(seconds: float, call):
    """What `call()` returns or raises, failing the test if it has not done so within `seconds` (a read that hangs)."""
    outcome: list = []

    def target():
        try:
            outcome.append(("returned", call()))
        except BaseException as error:  # handed to the test
            outcome.append(("raised", error))
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still running after {seconds} s"
    kind, value = outcome[0]
    if kind == "raised":
        raise value
    return value


PLACES = {
    "FIFO": (lambda path: os.mkfifo(path), r" is a named pipe \(FIFO\), not a bundle"),
    "link to /dev/zero": (lambda path: path.symlink_to("/dev/zero"),
                          r" \(a symbolic link to /dev/zero\) is a character device, not a bundle"),
    "directory": (lambda path: path.mkdir(), " is a directory, not a bundle"),
    "file larger than any bundle": (lambda path: path.write_bytes(b"#" * (limits.MAX_BUNDLE + 1)),
                                    r" is larger than any bundle \(over 2 MiB\)"),
}


@pytest.mark.parametrize("place", PLACES)
def test_what_is_not_a_bundle_in_its_place_is_refused_unread_and_left_alone(tmp_path, ssl_dir, place):
    plant, message = PLACES[place]
    path = ssl_dir / f"{NAME}.pem"
    plant(path)
    before = os.lstat(path)
    reload_command, marker = reload_marker(tmp_path)
    installer = Installer(ssl_dir, reload_command)
    with pytest.raises(Blocked, match=f"^{re.escape(str(path))}{message}: left alone; move it out of the ssl dir$") as seen:
        installer.check_place(NAME)  # before ordering
    assert seen.value.which == [NAME] and not seen.value.backoff
    with pytest.raises(Blocked, match=f"^{re.escape(str(path))}{message}") as blocked:  # at the install (planted meanwhile)
        within(10, lambda: installer.install({"first.example": bundle_of(trustme.CA()), NAME: bundle_of(trustme.CA())}))
    assert blocked.value.which == [NAME]
    assert os.lstat(path) == before and sorted(ssl_dir.iterdir()) == [path] and not marker.exists()
    installer.check_place("first.example")  # nothing there: nothing to refuse


def test_a_reload_command_that_writes_bytes_that_are_not_utf8_fails_in_its_own_words():
    with pytest.raises(CertrenewError) as failure:
        service.reload("""sh -c 'printf "\\377 no pid file\\n" >&2; exit 1' reload""")
    assert str(failure.value).endswith("failed with exit status 1: \ufffd no pid file")


def test_a_reload_command_is_done_when_it_exits_though_what_it_started_holds_its_output():
    # e.g. a reload over ssh with ControlPersist: the master connection lives on, output open.
    assert within(20, lambda: service.reload("""sh -c 'setsid sleep 60 & echo reloaded'""")) is False  # unconfirmed


def leaf_bundle(*names: str, key_type: trustme.KeyType = trustme.KeyType.ECDSA) -> bytes:
    leaf = trustme.CA().issue_cert(*names, key_type=key_type)
    return build_bundle(b"".join(blob.bytes() for blob in leaf.cert_chain_pems), leaf.private_key_pem.bytes())


def test_another_bundle_claiming_a_name_with_the_same_kind_of_key_refuses_the_certificate_before_ordering(ssl_dir):
    (ssl_dir / "example.com.pem").write_bytes(leaf_bundle("example.com", "www.example.com"))  # a single-domain run's
    (ssl_dir / "main.pem").write_bytes(leaf_bundle("example.com"))  # its own: replaced, so no shadow
    (ssl_dir / "rsa.pem").write_bytes(leaf_bundle("www.example.com", key_type=trustme.KeyType.RSA))  # served beside it
    (ssl_dir / ".hidden.pem").write_bytes(leaf_bundle("www.example.com"))  # HAProxy passes over a dot file
    installer = Installer(ssl_dir, "true")
    with pytest.raises(Blocked) as refused:
        installer.check_place("main", ("example.com", "www.example.com", "api.example.com"), "ecdsa-p256")
    assert str(refused.value) == (
        f"{ssl_dir}/example.com.pem claims example.com, www.example.com too, with an ECDSA key: HAProxy loads every "
        "bundle of the ssl dir and may go on serving that one instead of main.pem, and nothing renews it; move it "
        "out of the ssl dir (or name this certificate 'example.com' in the config)")
    installer.check_place("other", ("api.example.com",), "ecdsa-p256")  # no name of its claimed elsewhere
    with pytest.raises(Blocked, match="rsa.pem claims www.example.com too, with an RSA key"):
        Installer(ssl_dir, "true").check_place("main-rsa", ("www.example.com",), "rsa2048")
    with pytest.raises(Blocked, match=r"move it out of the ssl dir$"):  # a dual certificate's half: no rename
        Installer(ssl_dir, "true").check_place("rsa.rsa2048", ("www.example.com",), "rsa2048")
    # Another certificate of the config sharing a name is renewed too: each is the only one for its other names.
    Installer(ssl_dir, "true", managed=["main", "example.com"]).check_place("main", ("example.com", "api.example.com"),
                                                                            "ecdsa-p256")


def test_the_config_s_own_bundles_are_not_read_to_find_what_shadows_them(ssl_dir, monkeypatch):
    """They shadow nothing (they are renewed), and a config of 10,000 would parse 10,000 for every status."""
    for name in ("a", "b", "other"):
        (ssl_dir / f"{name}.pem").write_bytes(leaf_bundle(f"{name}.example"))
    read, read_bundle_file = [], install.read_bundle_file
    monkeypatch.setattr(install, "read_bundle_file", lambda path: read.append(path.name) or read_bundle_file(path))
    found = install.claims(ssl_dir, [ssl_dir / "a.pem", ssl_dir / "b.pem"])
    assert read == ["other.pem"] and list(found) == ["other.example"]
    specs = [CertificateSpec("a", ("a.example", "other.example")), CertificateSpec("b", ("b.example",))]
    assert list(install.shadowed(ssl_dir, specs)) == ["a"]


def test_a_reload_after_which_the_runtime_api_no_longer_answers_fails(tmp_path):
    """A socket that no new worker opens (HAProxy gone, or its config lost the stats socket) proves nothing."""
    fake = FakeHAProxy(tmp_path / "admin.sock", {"show info": "Pid: 7\n"})
    node = service.RuntimeApi(str(tmp_path / "admin.sock"))
    with pytest.raises(CertrenewError, match=r"but HAProxy .*admin.sock does not answer 0.5 s later: the reload did not take"):
        service.reload(f"sh -c 'rm {tmp_path / 'admin.sock'}'", [node], 0.5)
    fake.close()




def crt_list_haproxy(tmp_path: Path, crt_list: Path, add_answer: str) -> FakeHAProxy:
    """A fake HAProxy serving `crt_list` (a crt-list file) and no certificate of ours yet."""
    return FakeHAProxy(tmp_path / "admin.sock", {
        "show ssl crt-list": f"{crt_list}\n\n",
        "show ssl cert": "# filename\n/etc/haproxy/main.pem\n\n",
        "new ssl cert": "New empty certificate store!\n",
        "set ssl cert": f"Transaction created for certificate {tmp_path / 'ssl' / NAME}.pem!\n",
        "commit ssl cert": "Success!\n",
        "add ssl crt-list": add_answer,
        "del ssl crt-list": "Entry deleted in crtlist!\n",
        "del ssl cert": "deleted!\n",
    })


@pytest.mark.parametrize("refused", [False, True], ids=["added", "refused and rolled back"])
def test_a_new_certificate_gets_its_crt_list_line_in_the_file_and_in_memory_or_neither(tmp_path, ssl_dir, refused):
    crt_list = tmp_path / "certs.lst"
    operator = "# mine\n/etc/haproxy/main.pem [alpn h2] example.com\n"
    crt_list.write_text(operator)
    add_answer = "Inserting certificate.\nunable to load the chain\nFailed!\n" if refused else "Inserting.\nSuccess!\n"
    fake = crt_list_haproxy(tmp_path, crt_list, add_answer)
    line = f"{ssl_dir / NAME}.pem [alpn h2] {NAME}"
    try:
        installer = Installer(ssl_dir, "false", [str(tmp_path / "admin.sock")], crt_list=crt_list)
        if refused:
            with pytest.raises(Refused, match="unable to load the chain"):
                installer.install({NAME: bundle_of(trustme.CA())}, {NAME: Serving(f"[alpn h2] {NAME}")})
        else:
            [result] = installer.install({NAME: bundle_of(trustme.CA())}, {NAME: Serving(f"[alpn h2] {NAME}")})
            assert result.method == "hot update"
    finally:
        fake.close()
    add = next(request for request in fake.requests if request.startswith(b"add ssl crt-list"))
    assert add == f"add ssl crt-list {crt_list} <<\n{line}\n\n".encode()
    assert crt_list.read_text() == (operator if refused else operator + line + "\n")
    assert ("del ssl crt-list" in fake.commands()) == refused


def test_an_haproxy_not_loading_the_crt_list_gets_the_reload_with_the_line_in_the_file(tmp_path, ssl_dir):
    crt_list = tmp_path / "certs.lst"
    crt_list.write_text("")
    fake = crt_list_haproxy(tmp_path, tmp_path / "other.lst", "")
    fake.answers.update(worker(tmp_path))
    marker = reload_marker(tmp_path)[1]
    try:
        [result] = Installer(ssl_dir, reload_marker(tmp_path)[0], [str(tmp_path / "admin.sock")],
                             crt_list=crt_list).install({NAME: bundle_of(trustme.CA())})
    finally:
        fake.close()
    assert result.method == "reload" and f"it loads no crt-list {crt_list}" in result.detail and marker.exists()
    assert crt_list.read_text() == f"{ssl_dir / NAME}.pem\n"


def test_a_certificate_haproxy_has_but_not_in_the_crt_list_is_replaced_and_listed(tmp_path, ssl_dir):
    """Its line goes into the file, so its entry goes into the running crt-list: they never disagree."""
    path, crt_list = ssl_dir / f"{NAME}.pem", tmp_path / "certs.lst"
    path.write_bytes(bundle_of(trustme.CA()))
    crt_list.write_text("")
    fake = haproxy_knowing(tmp_path, path)
    fake.answers.update({"show ssl crt-list": f"{crt_list}\n/etc/haproxy/main.pem\n\n",  # a crt-list, an entry
                         "add ssl crt-list": "Inserting.\nSuccess!\n"})
    try:
        [result] = Installer(ssl_dir, "false", [str(tmp_path / "admin.sock")], crt_list=crt_list).install(
            {NAME: bundle_of(trustme.CA())})
    finally:
        fake.close()
    assert result.method == "hot update"
    assert fake.commands()[-3:] == ["set ssl cert", "commit ssl cert", "add ssl crt-list"]
    assert fake.requests[-1] == f"add ssl crt-list {crt_list} <<\n{path}\n\n".encode()
    assert crt_list.read_text() == f"{path}\n"


def test_a_crt_store_entry_whose_file_is_gone_is_left_to_the_reload(tmp_path, ssl_dir):
    fake = FakeHAProxy(tmp_path / "admin.sock", {"show ssl crt-list": "\n", "show ssl cert": "# filename\n@web/site\n\n",
                                                 **worker(tmp_path)})
    marker = reload_marker(tmp_path)[1]
    try:
        [result] = Installer(ssl_dir, reload_marker(tmp_path)[0], [str(tmp_path / "admin.sock")]).install(
            {NAME: bundle_of(trustme.CA())}, {NAME: Serving(crt_store="@web/site")})
    finally:
        fake.close()
    assert result.method == "reload" and "it has @web/site in memory but" in result.detail and marker.exists()
    assert "set ssl cert" not in fake.commands()


def test_an_install_waits_for_another_process_s_into_the_same_ssl_dir_and_gives_up_after_a_while(
        ssl_dir, monkeypatch):
    """Another process's install holds the ssl dir's flock (here: another descriptor of this one's): this one
    waits for it to end, and past INSTALL_WAIT fails without touching anything or blaming a bundle."""
    monkeypatch.setattr(install, "INSTALL_WAIT", 0.3)
    installer = Installer(ssl_dir, "true")
    other = os.open(ssl_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(CertrenewError, match="another process has been installing into .* for 0.3 s") as raised:
            installer.install({NAME: bundle_of(trustme.CA())})
        assert time.monotonic() - started >= 0.3 and not isinstance(raised.value, Refused)
        assert not (ssl_dir / f"{NAME}.pem").exists()
        threading.Timer(0.1, fcntl.flock, (other, fcntl.LOCK_UN)).start()  # the other install ends
        [result] = installer.install({NAME: bundle_of(trustme.CA())})
        assert result.method == "reload" and (ssl_dir / f"{NAME}.pem").exists()
    finally:
        os.close(other)
