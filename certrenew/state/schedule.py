"""What a run found not due, so that the next one over 10,000 certificates does not read 10,000 records.

Finding nothing due took a no-op run most of its time at that size: each record opened, read,
parsed and checked, to say "not due until". A run over a state dir keeps what it said of each
certificate not due, and until when that holds, in the state dir's `schedule.json`. The next run
takes it for a certificate only while

- the certificate's directory and its record are the ones it was said of: the same inodes and
  modification times (and the record's size). Every write of a certificate's state (its record,
  a pending certificate, an order), by any process, renames or unlinks a file in that directory,
  which changes the directory's time; a record edited in place by hand changes its own;
- those times were older than SETTLE when they were read: a write in the same clock tick as the
  one before leaves the time as it was (what git's index calls "racy"), so a certificate changed
  that recently is read in full until it has settled. The times are the host's: a state dir on a
  network file system whose server's clock runs behind by more than SETTLE may miss such a write;
- what the decision was made of besides the record is the same (the certificate's names and key
  type, the run's settings), and its time has not come.

Anything else is read as before. The file is a cache, never the only copy of anything: missing,
unreadable or not ours alone, it is ignored and replaced; it is not fsynced.
"""

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from certrenew.errors import CertrenewError
from certrenew.system import owned
from certrenew.system.atomicfile import write_atomic

log = logging.getLogger(__name__)

SCHEDULE = "schedule.json"
SETTLE_NS = 2_000_000_000
"""How long a certificate's directory and record must have stood unchanged for their version to be trusted: a
clock tick of any file system's modification times (ext4's is a few milliseconds, FAT's two seconds)."""
FORMAT = 1
MAX_SCHEDULE = 64 << 20
"""Bytes: about 200 a certificate, so room for 300,000; a larger one is ignored (every record read)."""

Token = list[int]
"""A certificate directory's inode and modification time (ns), and its record's inode, modification time and
size, as JSON keeps them."""


class Schedule:
    """The certificates a run found not due, by name: what it said, until when, and of what."""

    def __init__(self, path: Path, statuses: Callable[[str], tuple[os.stat_result, os.stat_result] | None],
                 settings: list) -> None:
        """`statuses(name)`: certificate `name`'s directory, checked as ours, and its record (None: either is
        missing). `settings`: what else every decision was made of (the run's renewal settings): other settings
        trust nothing kept."""
        self._path, self._statuses, self._settings = path, statuses, settings
        self._entries = self._load()
        self._changed = False
        self._settled = time.time_ns() - SETTLE_NS
        """What changed after this (ns) has not settled."""

    def token(self, name: str) -> Token | None:
        """The version of certificate `name`'s state, to take `unchanged` by and `keep` with; None when it
        has no record, or changed within SETTLE: its record is read then, and nothing kept."""
        statuses = self._statuses(name)
        if statuses is None:
            return None
        directory, record = statuses
        if max(directory.st_mtime_ns, record.st_mtime_ns) > self._settled:
            return None
        return [directory.st_ino, directory.st_mtime_ns, record.st_ino, record.st_mtime_ns, record.st_size]

    def unchanged(self, name: str, token: Token, inputs: str, now: float) -> str | None:
        """What the last run said of certificate `name` (its reason for not being due), if it still holds: made
        of the same `token` and `inputs`, and before its time (`now` a POSIX timestamp). None: decide again."""
        entry: Any = self._entries.get(name)
        return entry[2] if _holds(entry, now) and entry[0] == token and entry[3] == inputs else None

    def keep(self, name: str, token: Token, inputs: str, until: float, said: str) -> None:
        """Remember that certificate `name`, at `token`, decided from `inputs`, is not due before `until`
        (a POSIX timestamp) for the reason `said`."""
        entry = [token, float(until), said, inputs]
        if self._entries.get(name) != entry:
            self._entries[name] = entry
            self._changed = True

    def forget(self, name: str) -> None:
        if self._entries.pop(name, None) is not None:
            self._changed = True

    def save(self, now: float) -> None:
        """Write what changed, without entries whose time has come (a certificate gone from the config
        leaves one, dropped at the next change). A failure costs the next run its shortcut, never this run."""
        if not self._changed:
            return
        for name in [name for name, entry in self._entries.items() if not _holds(entry, now)]:
            del self._entries[name]
        document = {"format": FORMAT, "settings": self._settings, "certificates": self._entries}
        try:
            write_atomic(self._path, json.dumps(document, separators=(",", ":")).encode(), sync=False)
        except (OSError, CertrenewError) as error:
            log.debug("cannot write %s: %s", self._path, error)
        self._changed = False

    def _load(self) -> dict[str, Any]:
        try:
            fd, status = owned.open_checked(self._path, os.O_RDONLY)  # another user's is no schedule of ours
        except FileNotFoundError:
            return {}
        except (OSError, CertrenewError) as error:
            log.debug("ignoring %s: %s", self._path, error)
            return {}
        try:
            # One read: the file is replaced whole, never changed in place.
            data = json.loads(os.read(fd, status.st_size)) if status.st_size <= MAX_SCHEDULE else None
        except (OSError, ValueError) as error:
            log.debug("ignoring %s: %s", self._path, error)
            return {}
        finally:
            os.close(fd)
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("settings") != self._settings:
            return {}
        entries = data.get("certificates")
        return entries if isinstance(entries, dict) else {}


def _holds(entry: Any, now: float) -> bool:
    """Whether `entry` is one `keep` made, and its time has not come."""
    return type(entry) is list and len(entry) == 4 and type(entry[1]) is float and now < entry[1] \
        and type(entry[2]) is str
