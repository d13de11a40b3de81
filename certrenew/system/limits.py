"""Limits: the process limits a run needs raised before it starts, and the sizes it refuses beyond."""

import errno
import os
import resource
import stat
from pathlib import Path
from types import MappingProxyType

MAX_BUNDLE = 2 * 1024 * 1024
"""The largest bundle certrenew reads from the ssl dir, in bytes. The chain a CA sends is at
most 1 MiB (`acme_transport.MAX_RESPONSE`) and a key a few KiB; twice that leaves room for
what an operator adds (DH parameters, a longer chain), while a link to /dev/zero or a
runaway file is refused instead of read until memory runs out."""
MAX_CONFIG = 8 * 1024 * 1024
"""The largest config file read, in bytes: 10,000 certificates of a few names each take 1 MiB."""
MAX_KEY_FILE = 64 * 1024
"""The largest key file read (a TSIG key file is a few lines)."""

_KINDS = MappingProxyType({stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFCHR: "a character device",
                           stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory", stat.S_IFSOCK: "a socket"})
"""What a path holds that is not a regular file, as a refusal names it."""


class Unfit(ValueError):
    """A file not read: `kind` names what it is instead of a regular file, or is None when it is
    larger than the bound it was read with."""

    def __init__(self, kind: str | None, limit: int) -> None:
        super().__init__(f"it is {kind}, not a regular file" if kind else f"it is larger than {_size(limit)}")
        self.kind = kind


def kind_of(mode: int) -> str | None:
    """What a file of `mode` (st_mode) is, as a refusal names it; None for a regular file."""
    return None if stat.S_ISREG(mode) else _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def read_regular(path: str | Path, limit: int, commands: bool = False) -> bytes:
    """The bytes of the regular file at `path` (through a symbolic link), if there are no more than `limit`.
    `commands`: it names commands certrenew runs (a config's hooks), so one any user may write is refused
    (PermissionError): whoever writes it runs what they like as certrenew's user, with its keys.

    Opened without blocking and checked on the open descriptor: a FIFO is refused, never
    waited on (it would block for ever); a device or a directory is refused, never read
    (/dev/zero would be read until memory runs out); so is a file over `limit`, before
    reading it, or once it has grown past it while read. `Unfit` says which; OSError
    (FileNotFoundError if there is none) if it cannot be opened or read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        kind = kind_of(info.st_mode)
        if kind or info.st_size > limit:
            raise Unfit(kind, limit)
        if commands and info.st_mode & stat.S_IWOTH:
            raise PermissionError(errno.EPERM, "any user may write it, and it names the commands certrenew "
                                  f"runs (its hooks): chmod o-w {path}")
        with open(fd, "rb", closefd=False) as file:
            # As large as the file: a buffer of `limit` for each read cost more than parsing a bundle.
            content = file.read(info.st_size + 1)
            if len(content) > info.st_size:  # grown since the fstat: the rest, as bounded
                content += file.read(limit + 1 - len(content))
    finally:
        os.close(fd)
    if len(content) > limit:
        raise Unfit(None, limit)
    return content


def _size(size: int) -> str:
    return f"{size // 1024 ** 2} MiB" if size >= 1024 ** 2 else f"{size // 1024} KiB"


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard one (often 1024 and far more).

    A run holds the responder's connections, its CA connections, the state and HAProxy's
    sockets at once; the soft limit is a default, not a choice, and a flood must not be
    what makes a write fail with "Too many open files".
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # a hard limit the kernel will not grant (above nr_open)
            pass  # the run goes on with the soft limit
