"""Atomic file writes: readers see the old file or the new one, never half of either.

Temp files are named per run (`.certrenew-<pid>-<random>.tmp`): two runs with their own
state dirs may share one ssl dir, and neither may delete the other's write in flight.
"""

import os
import secrets
import stat
import time
from contextlib import nullcontext
from pathlib import Path

from certrenew.errors import CertrenewError
from certrenew.system.runcontext import RunContext

TEMP_PREFIX = ".certrenew-"
TEMP_SUFFIX = ".tmp"
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
STALE_AFTER = 3600.0
"""Seconds after which a temp is stale even if its pid is alive: that pid was reused."""


def write_atomic(path: Path, data: bytes, mode: int = 0o600, keep_mode: bool = False, sync: bool = True,
                 sync_directory: bool = True, context: RunContext | None = None) -> None:
    """Replace `path` with `data`: temp file in the same directory, fsync, rename, fsync dir.

    The new file gets `mode` less the umask, or with `keep_mode` the mode of the file
    it replaces, so an operator's chmod survives a renewal; less any write bit for group
    and others, which would let someone else swap the key or the chain. The temp file is hidden
    and removed on any failure (a full disk included), so a directory HAProxy loads
    wholesale never keeps a partial file and the old `path` stays as it was. In a `context`, a
    signal arriving meanwhile is held until the write is done (see `RunContext.critical`). Without
    `sync` nothing is fsynced: for what is worth nothing after a crash. Without `sync_directory`
    the rename is not made durable: for a caller that writes many files in one directory and
    fsyncs it once.
    """
    directory = path.parent
    with context.critical() if context is not None else nullcontext():
        try:
            kept = stat.S_IMODE(path.stat().st_mode) & ~_WRITABLE_BY_OTHERS if keep_mode and path.exists() else None
            temp = stage(path, data, mode, sync, exact_mode=kept)
            try:
                os.replace(temp, path)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            if sync and sync_directory:
                fsync_directory(directory)
        except OSError as error:
            raise CertrenewError(f"cannot write {path}: {error.strerror or error}") from error


def stage(path: Path, data: bytes, mode: int = 0o600, sync: bool = True, exact_mode: int | None = None) -> Path:
    """A new temp beside `path` holding `data` (fsynced unless not `sync`), for the caller to rename
    over `path` (the write's commit) or to unlink; removed here if it cannot be written whole.

    Apart from `write_atomic` so that a writer can do the slow part, the data's fsync, before
    it takes a lock for the renames. The mode is `mode` less the umask, or exactly `exact_mode`.
    """
    temp = temp_path(path.parent)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            if exact_mode is not None:  # exactly the old mode: the umask must not narrow it
                os.fchmod(fd, exact_mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def temp_path(directory: Path) -> Path:
    """A new hidden name in `directory` for this run: HAProxy skips it, and `remove_stale_temps`
    deletes it once this run is gone."""
    return directory / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}{TEMP_SUFFIX}"


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temp files a killed run left behind (HAProxy would try to load them).

    Only those of a run that is gone (its pid not alive, or the file older than
    `STALE_AFTER`), and only regular files: a directory named like one is not ours.
    """
    removed = []
    now = time.time()
    for temp in directory.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        try:
            status = temp.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(status.st_mode) or (_writer_alive(temp.name) and now - status.st_mtime < STALE_AFTER):
            continue
        temp.unlink(missing_ok=True)
        removed.append(temp)
    return removed


def _writer_alive(name: str) -> bool:
    """Whether the run that named this temp is still running; a name without a pid (an older
    certrenew's) has no known writer."""
    pid = name[len(TEMP_PREFIX):].split("-", 1)[0]
    if not pid.isdigit() or int(pid) <= 0:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
