"""Atomic file writes: readers see the old file or the new one, never half of either."""

import os
import tempfile
from pathlib import Path

TEMP_PREFIX = ".certrenew-"
TEMP_SUFFIX = ".tmp"


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data`: temp file in the same directory, fsync, rename, fsync dir.

    The temp file is hidden and removed on any failure (a full disk included), so a
    directory HAProxy loads wholesale never keeps a partial file and the old `path`
    stays as it was.
    """
    directory = path.parent
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temp files a killed run left behind (HAProxy would try to load them)."""
    removed = []
    for temp in directory.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        temp.unlink(missing_ok=True)
        removed.append(temp)
    return removed
