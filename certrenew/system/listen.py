"""Where the HTTP-01 responder listens: a unix socket (the default) or HOST:PORT.

Whoever holds the responder's address answers the validations HAProxy forwards from the CA,
and so can get certificates for our names. Any local user may bind a TCP port above 1023
while certrenew is not listening (between two timer runs); nobody but its owner can create
a socket in a directory only certrenew's user may write. So the default is a socket there,
and TCP is for a container, where no other user runs.

The directory is inside HAProxy's chroot (`/var/lib/haproxy` in the shipped haproxy.cfg):
HAProxy connects to a `unix@` server after its chroot, so a socket elsewhere is out of its
reach. Connecting gives nothing away (the responder serves the internet the same answers
through HAProxy), so the socket is open to whoever may enter its directory: the directory
decides who that is (e.g. group haproxy, mode 0750).
"""

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from certrenew.errors import CertrenewError
from certrenew.system.hostport import split_host_port
from certrenew.system.owned import check_dir

DEFAULT_LISTEN = "/var/lib/haproxy/certrenew/http-01.sock"
DEFAULT_TLS_ALPN_LISTEN = "/var/lib/haproxy/certrenew/tls-alpn-01.sock"
"""The TLS-ALPN-01 responder's, beside it (see `certrenew.challenge.tlsalpn01`), for the same reasons."""
SOCKET_MODE = 0o666
"""Connectable by anyone who may enter the directory (HAProxy's user need not share a group with us)."""
DIR_MODE = 0o750
"""A directory certrenew makes itself, with its parent's group (HAProxy's, for a chroot made for it):
who may enter may connect, and a flood of connections fills the listen queue, failing the validations."""
PRIVILEGED_PORTS = 1024
"""Ports below this one only root (CAP_NET_BIND_SERVICE) may bind."""
MAX_PATH = 107
"""Bytes of a unix socket path (sun_path, less its NUL)."""
CONNECT_TIMEOUT = 5.0
"""Seconds to tell whether a socket file left behind still has a listener."""


@dataclass(frozen=True)
class Address:
    """A parsed --listen: `path` for a unix socket, else `host` and `port`."""

    path: str | None = None
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return self.path or f"{self.host}:{self.port}"

    @contextlib.contextmanager
    def listening(self) -> Iterator[socket.socket]:
        """A listening socket, closed on exit (a unix socket's file removed with it, unless another
        listener took the path since). OSError EADDRINUSE: another process listens there."""
        if self.path is None:
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0][0]
            with socket.create_server((self.host, self.port), family=family, backlog=128) as listener:
                yield listener
            return
        listener, made = _bind_unix(self.path)
        try:
            with listener:
                yield listener
        finally:
            with contextlib.suppress(OSError):
                if _file_id(os.lstat(self.path)) == made:
                    os.unlink(self.path)


def parse_listen(listen: str) -> Address:
    """An absolute path is a unix socket; anything else must be HOST:PORT."""
    if listen.startswith("/"):
        if len(os.fsencode(listen)) > MAX_PATH:
            raise ValueError(f"{listen}: a unix socket path is at most {MAX_PATH} bytes long")
        return Address(path=listen)
    try:
        host, port = split_host_port(listen)
    except ValueError as cause:
        raise ValueError(f"{listen}: expected a unix socket path (e.g. {DEFAULT_LISTEN}) or HOST:PORT") from cause
    return Address(host=host, port=port)


def check_listen(listen: str) -> str:
    """`listen` itself if it parses: the check of the --listen option."""
    parse_listen(listen)
    return listen


def takeover_risk(listen: str) -> str | None:
    """Why another local user could take `listen` from certrenew, or None when none can."""
    address = parse_listen(listen)
    if address.path is not None or address.port < PRIVILEGED_PORTS:
        return None
    return (f"any local user can bind {address} while certrenew is not listening (between runs) and answer "
            "the CA's validations for your names: use a unix socket, e.g. --listen "
            f"{DEFAULT_LISTEN} and `server letsencrypt unix@/certrenew/http-01.sock` in haproxy.cfg "
            "(TCP is fine in a container where no other user runs)")


def check_socket_dir(path: str) -> bool:
    """Refuse a socket's directory another user could write (and so put their own socket in);
    False if it does not exist."""
    return check_dir(os.path.dirname(path), option="--listen")


def flood_risk(path: str) -> str | None:
    """Why any local user could flood the socket `path` with connections (its directory lets others
    in), or None when none can (or it does not exist yet)."""
    directory = os.path.dirname(path)
    try:
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return None
    except FileNotFoundError:
        return None
    return (f"any local user may enter {directory} and flood the responder's socket with connections, failing the "
            f"CA's validations: let only HAProxy's group in (install -d -o certrenew -g haproxy -m 0750 {directory})")


def create_hint(directory: str) -> str:
    """How to make the socket's directory: HAProxy's group may enter it, only certrenew's user write it."""
    return f"create it for certrenew's user (install -d -o certrenew -g haproxy -m 0750 {directory}), or set --listen"


def _bind_unix(path: str) -> tuple[socket.socket, tuple[int, int]]:
    """A listening socket on `path`, and the file it made (to remove that one only)."""
    directory = os.path.dirname(path)
    if not check_socket_dir(path):
        try:
            os.mkdir(directory, 0o700)
            with contextlib.suppress(PermissionError):  # not ours to give: our group, which `check`'s probe tries
                os.chown(directory, -1, os.stat(os.path.dirname(directory)).st_gid)
            os.chmod(directory, DIR_MODE)  # whatever the umask
        except OSError as error:
            raise CertrenewError(f"cannot create {directory} for the responder's socket: {error.strerror}; "
                                 f"{create_hint(directory)}") from error
        check_socket_dir(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            listener.bind(path)
        except OSError as error:
            if error.errno != errno.EADDRINUSE or not _stale(path):
                raise
            os.unlink(path)
            listener.bind(path)
        made = _file_id(os.lstat(path))
        os.chmod(path, SOCKET_MODE)  # by path: nobody else can swap it in our directory
        listener.listen(128)
    except BaseException:
        listener.close()
        raise
    return listener, made


def _file_id(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


def _stale(path: str) -> bool:
    """Whether `path` is a socket of ours that nothing listens on (a killed run's): safe to replace.
    A live one is busy (EADDRINUSE, which the responder may borrow); anything else is refused."""
    status = os.lstat(path)
    if not stat.S_ISSOCK(status.st_mode) or status.st_uid != os.geteuid():
        raise CertrenewError(f"refusing {path} for the responder's socket: it is not a socket certrenew's user "
                             "made (remove it, or set --listen)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(CONNECT_TIMEOUT)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False
