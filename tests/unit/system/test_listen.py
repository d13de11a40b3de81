"""The responder's address: a unix socket in a directory only certrenew's user can write, so no
other local user can take it and answer the CA's validations for our names; HOST:PORT for a container."""

import errno
import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from certrenew.challenge.responder import PortBusy, Responder, ask
from certrenew.config import Settings
from certrenew.errors import CertrenewError
from certrenew.state.store import FileStore
from certrenew.system.listen import DEFAULT_LISTEN, flood_risk, parse_listen, takeover_risk

SHIPPED_HAPROXY_CFG = Path(__file__).resolve().parents[3] / "haproxy" / "haproxy.cfg"
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
TAKE = """
import os, socket, sys
kind, where = sys.argv[1], sys.argv[2]
try:
    if kind == "connect":
        socket.socket(socket.AF_UNIX).connect(where)
    elif kind == "unix":
        if os.path.lexists(where):
            os.unlink(where)
        socket.socket(socket.AF_UNIX).bind(where)
    else:
        host, _, port = where.rpartition(":")
        socket.socket().bind((host, int(port)))
    print("connected" if kind == "connect" else "taken")
except OSError as error:
    print(os.strerror(error.errno))
"""


def take_as_nobody(listen: str) -> str:
    """What another local user (uid 65534) gets when it tries to bind `listen` (replacing a socket there):
    'taken', or the error."""
    address = parse_listen(listen)
    kind, where = ("unix", address.path) if address.path else ("tcp", str(address))
    return subprocess.run([*NOBODY, "/usr/bin/python3", "-c", TAKE, kind, where], capture_output=True, text=True,
                          timeout=30, check=True).stdout.strip()


def connect_as_nobody(path: str) -> str:
    """What another local user (uid 65534) gets when it connects to the socket `path`: 'connected', or the error."""
    return subprocess.run([*NOBODY, "/usr/bin/python3", "-c", TAKE, "connect", path], capture_output=True, text=True,
                          timeout=30, check=True).stdout.strip()


@pytest.fixture
def shared():
    """A directory every user may enter (pytest's tmp_path is not): what keeps another user out
    must be the socket's own directory."""
    path = Path(tempfile.mkdtemp(prefix="certrenew-listen-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def get(path: str, token: str, name: str = "a.example"):
    return ask("", 0, name, token, 5, unix=path)


def test_a_path_is_a_unix_socket_and_anything_else_host_port():
    assert parse_listen("/run/x/h.sock").path == "/run/x/h.sock"
    assert (parse_listen("[::1]:80").host, parse_listen("[::1]:80").port) == ("::1", 80)
    with pytest.raises(ValueError, match="a unix socket path .* or HOST:PORT"):
        parse_listen("run/x.sock")
    with pytest.raises(ValueError, match="at most 107 bytes"):
        parse_listen("/" + "x" * 107)


def test_the_shipped_haproxy_cfg_reaches_the_default_socket_through_its_chroot():
    """HAProxy connects to a unix@ server after its chroot: the path it names is inside it."""
    cfg = SHIPPED_HAPROXY_CFG.read_text()
    chroot = re.search(r"^\s*chroot (\S+)$", cfg, re.M)[1]
    server = re.search(r"^\s*server letsencrypt unix@(\S+)$", cfg, re.M)[1]
    assert chroot + server == DEFAULT_LISTEN == Settings().responder.listen


def test_check_names_a_port_another_user_could_take():
    assert takeover_risk(DEFAULT_LISTEN) is None
    assert takeover_risk("127.0.0.1:80") is None  # only root binds it
    for listen in ("127.0.0.1:49494", "0.0.0.0:49494", "[::1]:8080"):
        risk = takeover_risk(listen)
        assert risk and "any local user can bind" in risk and DEFAULT_LISTEN in risk


def test_another_user_cannot_take_the_default_address(shared):
    """The old default, 127.0.0.1:49494, any user could bind between two runs."""
    listen = Settings().responder.listen
    address = parse_listen(listen)
    if address.path:  # where certrenew makes the socket's directory itself, under a directory all may enter
        listen = str(shared / address.path.lstrip("/"))
        Path(listen).parent.parent.mkdir(parents=True)
        with Responder(listen) as responder:
            responder.start()
            assert take_as_nobody(listen) == os.strerror(errno.EACCES)  # neither the live socket
        assert take_as_nobody(listen) == os.strerror(errno.EACCES)  # nor, between runs, the free path
    else:
        assert take_as_nobody(listen) == os.strerror(errno.EACCES)
    (shared / "open").mkdir(mode=0o777)
    (shared / "open").chmod(0o777)
    assert take_as_nobody(str(shared / "open" / "h.sock")) == "taken"  # the test's other user can bind


def test_serves_on_a_unix_socket_connectable_by_haproxys_group_alone_and_leaves_nothing(shared):
    """The directory it makes takes its parent's group (HAProxy's, for a chroot made for it): another
    local user may not connect, and so cannot fill the listen queue and fail the validations."""
    os.chown(shared, -1, 65533)
    path = shared / "certrenew" / "http-01.sock"
    with Responder(str(path)) as responder:
        responder.present("a.example", "tok", "tok.thumb")
        assert get(str(path), "tok").body == b"tok.thumb"
        assert (path.parent.stat().st_mode & 0o777, path.stat().st_mode & 0o777) == (0o750, 0o666)
        assert path.parent.stat().st_gid == 65533
        assert connect_as_nobody(str(path)) == os.strerror(errno.EACCES)
        assert flood_risk(str(path)) is None
    assert not path.exists() and path.parent.is_dir()


def test_a_directory_any_user_may_enter_is_named_as_a_flood_risk(shared):
    path = shared / "certrenew" / "http-01.sock"
    assert flood_risk(str(path)) is None  # not there yet: certrenew makes it 0750
    path.parent.mkdir()
    path.parent.chmod(0o711)
    with Responder(str(path)) as responder:
        responder.start()
        assert connect_as_nobody(str(path)) == "connected"
    assert flood_risk(str(path)) == (
        f"any local user may enter {path.parent} and flood the responder's socket with connections, failing the CA's "
        f"validations: let only HAProxy's group in (install -d -o certrenew -g haproxy -m 0750 {path.parent})")


def test_a_directory_another_user_can_write_is_refused(shared):
    path = shared / "open" / "http-01.sock"
    path.parent.mkdir()
    path.parent.chmod(0o777)
    with Responder(str(path)) as responder, pytest.raises(CertrenewError, match=f"refusing {path.parent}: .*writable "
                                                          "by group or others.*chmod go-w.*--listen"):
        responder.present("a.example", "tok", "tok.thumb")
    assert not path.exists()


def test_a_socket_left_by_a_killed_run_is_replaced(shared):
    path = shared / "h.sock"
    socket.socket(socket.AF_UNIX).bind(str(path))  # bound, never listening, as a killed run's
    with Responder(str(path)) as responder:
        responder.present("a.example", "tok", "tok.thumb")
        assert get(str(path), "tok").body == b"tok.thumb"


def test_a_file_that_is_no_socket_of_ours_is_refused(shared):
    path = shared / "h.sock"
    path.write_text("mine\n")
    with Responder(str(path)) as responder, pytest.raises(CertrenewError, match="not a socket certrenew's user made"):
        responder.present("a.example", "tok", "tok.thumb")
    assert path.read_text() == "mine\n"


def test_a_live_socket_of_another_process_is_busy(shared):
    path = shared / "h.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        other.listen()
        with Responder(str(path)) as responder, pytest.raises(PortBusy, match=f"cannot listen on {path}"):
            responder.present("a.example", "tok", "tok.thumb")
    assert path.exists()  # still the other process's


def test_a_run_borrows_the_daemons_unix_socket(shared):
    path, state = str(shared / "h.sock"), shared / "state"
    with Responder(path, FileStore(state)) as daemon, Responder(path, FileStore(state)) as run:
        daemon.start()
        run.present("a.example", "tok", "tok.thumb")  # cannot bind: borrows the daemon's socket
        assert (state / "challenges" / "tok.json").exists()
        assert get(path, "tok").body == b"tok.thumb"
    assert not Path(path).exists()
