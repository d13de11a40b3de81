"""The state dir's rule, like OpenSSH's StrictModes: only we may have put there what we read.

A state dir another user can write to lets that user plant a key, a pending certificate
HAProxy would serve, or a symbolic link a root run would write through. So every
directory and file of the state is checked where it is opened: owned by the effective
user, writable by no group and no other user, and never reached through a symbolic link
(files are opened with O_NOFOLLOW and checked on the open descriptor, so nothing can be
swapped between the check and the use). An existing directory is never chmod-ed: it may
be someone else's (`--state-dir /tmp`).
"""

import errno
import grp
import os
import pwd
import stat
from pathlib import Path

from certrenew.errors import CertrenewError, UsageError

UNSAFE = stat.S_IWGRP | stat.S_IWOTH
"""Mode bits that let someone else change what is in a file or directory."""


def open_file(path: str | Path, flags: int, mode: int = 0o600) -> int:
    """os.open for a file of the state: no symbolic link followed, refused unless ours and private."""
    return open_checked(path, flags, mode)[0]


def open_checked(path: str | Path, flags: int, mode: int = 0o600) -> tuple[int, os.stat_result]:
    """`open_file` with the status it checked: a reader needing it (a version) makes no second fstat."""
    try:  # O_NONBLOCK: a FIFO planted in the state dir is refused below, not waited on here
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise CertrenewError(f"refusing {path}: it is a symbolic link, and certrenew follows none in its "
                                 "state dir (remove it)") from error
        raise
    try:
        status = os.fstat(fd)
        check_file(status, path)
    except BaseException:
        os.close(fd)
        raise
    return fd, status


def check_file(status: os.stat_result, path: str | Path) -> None:
    """Refuse a file of the state whose `status` (an fstat's, or an lstat's) is not a regular file of ours
    alone (see `open_checked`)."""
    if stat.S_ISLNK(status.st_mode):
        raise CertrenewError(f"refusing {path}: it is a symbolic link, and certrenew follows none in its state dir "
                             "(remove it)")
    if not stat.S_ISREG(status.st_mode):
        raise CertrenewError(f"refusing {path}: it is not a regular file")
    _check(status, path)


def check_dir(path: str | Path, follow: bool = False, option: str = "--state-dir") -> bool:
    """Refuse a directory that is not ours alone, or a symbolic link (unless `follow`: the state
    dir itself may be one the operator made); False if it does not exist. `option` is the setting
    that names another directory."""
    return dir_status(path, follow, option) is not None


def dir_status(path: str | Path, follow: bool = False, option: str = "--state-dir") -> os.stat_result | None:
    """`check_dir` with the status it checked (None: no such directory)."""
    try:
        status = os.stat(path) if follow else os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISLNK(status.st_mode):
        raise CertrenewError(f"refusing {path}: it is a symbolic link, and certrenew follows none where it "
                             f"keeps its files (remove it, or set {option})")
    if not stat.S_ISDIR(status.st_mode):
        raise CertrenewError(f"refusing {path}: it is not a directory")
    _check(status, path, option)
    return status


def make_dir(path: Path, follow: bool = False) -> None:
    """Create `path` (and missing parents) 0700, or check the one that exists; never chmod it."""
    if check_dir(path, follow):
        return
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise CertrenewError(f"cannot create the state dir {path}: {error.strerror} (create it for the "
                             "user certrenew runs as, or set --state-dir)") from error
    check_dir(path, follow)


def _check(status: os.stat_result, path: str | Path, option: str = "--state-dir") -> None:
    user = os.geteuid()
    if status.st_uid != user:
        raise CertrenewError(f"refusing {path}: it is owned by uid {status.st_uid}, not uid {user} that certrenew "
                             f"runs as; only its own user may write there (chown it, or set {option})")
    if status.st_mode & UNSAFE:
        raise CertrenewError(f"refusing {path}: it is writable by group or others (mode "
                             f"{stat.S_IMODE(status.st_mode):o}); run chmod go-w {path}, or set {option}")


def read_secret(path: str | Path, what: str, limit: int) -> bytes:
    """A secret the operator names by path (an EAB HMAC key): a regular file of this user's, at most
    `limit` bytes, that no one else may read or change; UsageError (one line) naming the fix.

    A symbolic link is followed, unlike in the state dir: a mounted secret (a Kubernetes secret
    volume) is one; what is checked is the file opened, on its descriptor.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as error:
        raise UsageError(f"{what} {path}: cannot read it: {error.strerror}") from error
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise UsageError(f"{what} {path} is not a regular file")
        if status.st_uid != os.geteuid():
            raise UsageError(f"{what} {path} is owned by uid {status.st_uid}, not uid {os.geteuid()} that certrenew "
                             "runs as: chown it, it is a secret")
        if status.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(f"{what} {path} is open to others (mode {stat.S_IMODE(status.st_mode):04o}): chmod 600 "
                             "it, it is a secret")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UsageError(f"{what} {path} is larger than {limit} bytes: is it the right file?")
    return data


def user_name(uid: int) -> str:
    """A user's name, or `uid N` where this system has none (a container's user)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def group_name(gid: int) -> str:
    """A group's name, or `gid N` where this system has none."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def not_writable(directory: Path) -> str:
    """Why this user may not write in `directory`, and the fix: its owner, group and mode named, as
    HAProxy's socket refusal names them (`runtime_api`)."""
    user, info = user_name(os.geteuid()), os.stat(directory)
    owner, group = user_name(info.st_uid), group_name(info.st_gid)
    return (f"not writable by user {user} (it is {owner}:{group}, mode {stat.S_IMODE(info.st_mode):04o}): "
            f"`chown {user} {directory}`, or add {user} to group {group} and `chmod g+w {directory}`")
