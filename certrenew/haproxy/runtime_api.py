"""HAProxy's Runtime API: replace or add a certificate in a running process, no reload.

The API is a line protocol on a unix socket or a TCP port (`stats socket ... level
admin`). Each command here uses its own connection: HAProxy answers one command and
closes, so an answer ends at end of stream. A payload follows `<<` and ends at the first
blank line, which is why bundles never contain one.

HAProxy keeps one certificate transaction per process: `set ssl cert` opens it,
`commit ssl cert` applies it to every bind that uses the certificate, and any failure
in between is answered with `abort ssl cert` so nothing half-done stays open. While
another file's transaction is open (another tool's), 3.x refuses `set ssl cert`, but
2.6 puts the payload into that transaction: it is aborted then, since committing it
would serve our certificate under the other file's name.
"""

import functools
import logging
import os
import re
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import PurePosixPath

from certrenew.errors import CertrenewError, Forbidden, Rejected, RuntimeApiError, TransactionOpen, Unsupported
from certrenew.system.hostport import RUNTIME_API_TCP
from certrenew.system.owned import group_name, user_name

log = logging.getLogger(__name__)

TIMEOUT = 10.0
"""Seconds to wait for one answer; a commit re-signs every SNI context, so allow some."""
LOCKED = "Operations on certificates are currently locked!"
"""HAProxy's answer while another client's certificate command holds its lock: nothing was done."""
LOCKED_WAIT = 2.0
"""Seconds a command HAProxy answers LOCKED is sent again for; each such command holds the lock for
milliseconds."""
LOCKED_POLL = 0.02

_SET = re.compile(r"^Transaction (?:created|updated) for certificate (?P<path>.*)!$", re.M)
"""`set ssl cert` took the payload, into the transaction of this file (2.6: whichever is open)."""
_OTHERS = re.compile(r"^The ongoing transaction is about '(?P<path>.*)' but you are trying to set ", re.M)
"""`set ssl cert` refused while another file's transaction is open (3.x)."""
_SPECIAL = re.compile(r"([\\;\s])")
"""What HAProxy's CLI reads as syntax in an argument: the escape, the command separator, blanks."""


def argument(path: str) -> str:
    """`path` as one argument of a command: unescaped, a space would cut it in two and a `;` start
    another command (`set ssl cert /etc/my certs/a.pem` sets `/etc/my`)."""
    if "\n" in path or "\r" in path:
        raise RuntimeApiError(f"{path!r}: a line break cannot be passed to HAProxy's Runtime API")
    return _SPECIAL.sub(r"\\\1", path)


@dataclass(frozen=True)
class CertificateTable:
    """What `show ssl cert` lists: the certificate files in memory and an open transaction, if any."""

    files: frozenset[str]
    transaction: str | None = None

    def path_of(self, file: str) -> str | None:
        """The path under which this HAProxy holds `file`, spelled as it spells it; None if it does not."""
        return self._spelled.get(PurePosixPath(file))

    @functools.cached_property
    def _spelled(self) -> dict[PurePosixPath, str]:
        """Each file by its path: a batch looks up each of its certificates, and HAProxy may hold thousands."""
        return {PurePosixPath(path): path for path in self.files}


def parse_show_ssl_cert(answer: str) -> CertificateTable:
    """Parse `show ssl cert`: `# transaction` then `*<path>` while one is open, `# filename` then paths."""
    files, transaction = set(), None
    for line in answer.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            transaction = line[1:]
        else:
            files.add(line)
    return CertificateTable(frozenset(files), transaction)


def parse_show_crt_lists(answer: str) -> list[str]:
    """Parse `show ssl crt-list`: one crt-list file or crt directory per line, as the config names it."""
    return [line.strip() for line in answer.splitlines() if line.strip() and not line.startswith("#")]


def find_crt_list(crt_lists: list[str], directory: str) -> str | None:
    """The crt directory among `crt_lists` that is `directory`, spelled as HAProxy spells it."""
    wanted = PurePosixPath(directory)
    for crt_list in crt_lists:
        if PurePosixPath(crt_list) == wanted:
            return crt_list
    return None


def answer_error(answer: str) -> str:
    """HAProxy's complaint in one line (its answers run over several)."""
    lines = [line.strip() for line in answer.splitlines() if line.strip()]
    return "; ".join(lines) if lines else "no answer (connection closed)"


@dataclass
class RuntimeApi:
    """One HAProxy process's Runtime API at `address` (`ipv4@HOST:PORT` or a unix socket path)."""

    address: str
    timeout: float = TIMEOUT

    def __str__(self) -> str:
        return self.address

    def command(self, line: str, payload: bytes | None = None) -> str:
        """Send one command (with an optional payload) and return HAProxy's whole answer; one HAProxy answers
        LOCKED (another client's certificate command is under way, nothing was done) is sent again, for up to
        LOCKED_WAIT seconds, then fails as no fault of the payload's."""
        deadline = time.monotonic() + LOCKED_WAIT
        while LOCKED in (answer := self._send(line, payload)):
            if time.monotonic() >= deadline:  # not the bundle's fault (not Rejected): a later attempt may pass
                raise RuntimeApiError(f"{self}: {' '.join(line.split()[:3])}: HAProxy's certificate operations "
                                      f"stayed locked for {LOCKED_WAIT:g} s (another client's command under way)")
            time.sleep(LOCKED_POLL)
        return answer

    def _send(self, line: str, payload: bytes | None) -> str:
        request = line.encode()
        if payload is not None:
            if b"\n\n" in payload:
                raise RuntimeApiError(f"{self}: a payload must not contain a blank line")
            request += b" <<\n" + payload.rstrip(b"\n") + b"\n"
        request += b"\n"
        try:
            with self._connect() as sock:
                sock.sendall(request)
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except PermissionError as cause:
            raise Forbidden(f"HAProxy Runtime API {self}: {self._denied()}") from cause
        except OSError as error:
            raise RuntimeApiError(f"HAProxy Runtime API {self}: {error.strerror or error}") from error
        answer = b"".join(chunks).decode(errors="replace")
        if answer.startswith("Unknown command"):
            raise Unsupported(f"it does not know '{' '.join(line.split()[:3])}' (HAProxy older than 2.2?)")
        if "Permission denied" in answer:
            raise RuntimeApiError(f"{self}: permission denied; the stats socket needs 'level admin'")
        return answer

    def _connect(self) -> socket.socket:
        match = RUNTIME_API_TCP.match(self.address)
        if match:
            return socket.create_connection((match["host"], int(match["port"])), timeout=self.timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.address.removeprefix("unix@"))
        except OSError:
            sock.close()
            raise
        return sock

    def _denied(self) -> str:
        """Why this user may not connect to the unix socket, and the fix: HAProxy makes the socket its own
        user's, mode 0600 or its `mode`, and gives it a group only where `stats socket` names one."""
        path = self.address.removeprefix("unix@")
        user = user_name(os.geteuid())
        try:
            info = os.stat(path)
        except OSError:
            return f"permission denied for user {user}: a directory on the socket's path is closed to it"
        owner, group = user_name(info.st_uid), group_name(info.st_gid)
        mode = stat.S_IMODE(info.st_mode)
        if info.st_gid == 0:  # root's group: give the socket one of this user's instead
            fix = (f"have HAProxy give the socket a group {user} is in: "
                   f"'stats socket {path} mode 660 level admin {_group_option(os.getegid())}' in haproxy.cfg")
        else:
            fix = f"add {user} to group {group}" + ("" if mode & 0o020 else (
                f", and give that group the socket: 'stats socket {path} mode 660 level admin "
                f"{_group_option(info.st_gid)}' in haproxy.cfg"))
        return f"permission denied for user {user} (the socket is {owner}:{group}, mode {mode:04o}): {fix}"

    def certificates(self) -> CertificateTable:
        return parse_show_ssl_cert(self.command("show ssl cert"))

    def crt_lists(self) -> list[str]:
        return parse_show_crt_lists(self.command("show ssl crt-list"))

    def crt_list_entries(self, crt_list: str) -> frozenset[str]:
        """The certificate files `crt_list` serves (`show ssl crt-list FILE`: one entry per line, path first)."""
        answer = self.command(f"show ssl crt-list {argument(crt_list)}")
        return frozenset(line.split()[0] for line in answer.splitlines() if line.strip() and not line.startswith("#"))

    def loaded_file(self, path: str) -> str | None:
        """The file HAProxy loaded certificate `path` from, as its config names it (relative to a `crt-base`
        where it is): a crt-store entry's `load crt`. None where HAProxy does not say (before 3.0)."""
        for line in self.command(f"show ssl cert {argument(path)}").splitlines():
            if line.startswith("Crt filename: "):
                return line.removeprefix("Crt filename: ").strip()
        return None

    def replace_certificate(self, path: str, bundle: bytes) -> None:
        """Swap the certificate HAProxy loaded from `path` for `bundle`, in memory."""
        self._set_and_commit(path, bundle)

    def add_certificate(self, crt_list: str, path: str, bundle: bytes, line: str | None = None) -> None:
        """Load `bundle` as a new certificate `path` and serve it from `crt_list` (a crt directory, or a
        crt-list file with `line`: the path, its bind options and SNI filters)."""
        self._expect(f"new ssl cert {argument(path)}", "New empty certificate store")
        try:
            self._set_and_commit(path, bundle)
            self.list_certificate(crt_list, path, line)
        except CertrenewError:
            self._delete(crt_list, path)
            raise

    def remove_certificate(self, crt_list: str, path: str) -> None:
        """Undo add_certificate: stop serving `path` and free it."""
        self.unlist_certificate(crt_list, path)
        self._expect(f"del ssl cert {argument(path)}", "deleted!")

    def unlist_certificate(self, crt_list: str, path: str) -> None:
        """Undo list_certificate: `crt_list` no longer serves `path`."""
        self._expect(f"del ssl crt-list {argument(crt_list)} {argument(path)}", "deleted in crtlist")

    def _set_and_commit(self, path: str, bundle: bytes) -> None:
        line = f"set ssl cert {argument(path)}"
        log.debug("%s: %s", self, line)
        answer = self.command(line, bundle)
        others, taken = _OTHERS.search(answer), _SET.search(answer)
        if others:  # refused, nothing changed
            raise TransactionOpen(self, others["path"])
        if taken and taken["path"] != path:  # HAProxy has one transaction per process, and this is not ours
            self._abort(taken["path"])
            raise TransactionOpen(self, taken["path"], aborted=True)
        try:
            if not taken:
                raise Rejected(f"{self}: {line}: {answer_error(answer)}")
            self._expect(f"commit ssl cert {argument(path)}", "Success!", error=Rejected)
        except CertrenewError:
            self._abort(path)
            raise

    def list_certificate(self, crt_list: str, path: str, line: str | None = None) -> None:
        """Serve `path` from `crt_list` (a crt-list file with `line`: its options and SNI filters, as in the
        file): only now does HAProxy load a new certificate into its binds' SSL
        contexts (`commit ssl cert` of one no bind uses yet builds none), so a failure once it is
        "Inserting certificate" is the bundle's, e.g. a chain OpenSSL's security level will not load."""
        command = f"add ssl crt-list {argument(crt_list)}"
        log.debug("%s: %s %s", self, command, line or path)
        answer = self.command(command, line.encode()) if line else self.command(f"{command} {argument(path)}")
        if "Success!" not in answer:
            error = Rejected if answer.startswith("Inserting certificate") else RuntimeApiError
            raise error(f"{self}: {command} {line or path}: {answer_error(answer)}")

    def _expect(self, line: str, success: str, payload: bytes | None = None,
                error: type[RuntimeApiError] = RuntimeApiError) -> str:
        """Run a command and fail (with `error`) with HAProxy's words unless its answer contains `success`."""
        log.debug("%s: %s", self, line)
        answer = self.command(line, payload)
        if success not in answer:
            raise error(f"{self}: {line}: {answer_error(answer)}")
        return answer

    def _abort(self, path: str) -> None:
        try:
            self.command(f"abort ssl cert {argument(path)}")
        except CertrenewError as error:
            log.warning("%s: could not abort the transaction for %s: %s", self, path, error)

    def _delete(self, crt_list: str, path: str) -> None:
        """Best-effort cleanup of a half-added certificate, so a retry can add it again."""
        for line in (f"del ssl crt-list {argument(crt_list)} {argument(path)}", f"del ssl cert {argument(path)}"):
            try:
                self.command(line)
            except CertrenewError as error:
                log.warning("%s: %s failed: %s", self, line, error)


def _group_option(gid: int) -> str:
    """How `stats socket` names group `gid`: by name (`group`), or by number (`gid`) where it has none."""
    name = group_name(gid)
    return f"group {name}" if not name.startswith("gid ") else name
