"""A `Backend` in a local directory: key `certificates/a/meta.json` is the file of that path.

So a state dir written before the backends existed is read as it is, with no migration. Every
directory is created 0700 and every file 0600, read and written only if ours alone and never
through a symbolic link (see `owned`); each file is replaced atomically (see `atomicfile`).

Writes and lock changes of every process are serialized by a short flock on `locks/mutex`,
held for the few file operations of one write, never for a run. A write first stages each new
file as a hidden temp beside it, its data fsynced, without the mutex; under it, it renames them
into place. A write of several keys first records them all in `journal.json` (staged the same
way), then applies them, then removes the journal: a crash part-way leaves the journal, which the
next write, lock or read by any process replays before anything else, so each write ends up
applied whole (an intent journal; readers racing the few milliseconds of an apply may see part
of it, as they would any two separate writes). A write refused (a version changed, a lock lost)
or cut short before the journal's rename changes nothing.

A lock on key K is `locks/K` (slashes as `~`), a JSON lease: token, holder, expiry. The holder
also keeps a flock on `locks/K#<token>`, and one thread of the backend renews the expiry of every
lease it holds each third of their TTL.
A taker finds the lock free when the lease was released, when its expiry passed (the holder
was paused past its TTL: SIGSTOP, a frozen VM) or when nobody holds that flock any more (the
holder died, however: the kernel releases a flock at exit, so a killed run never blocks the
next). The token only grows: a released lease keeps its token for the next taker to count on.
A process stopped while it holds the mutex itself (a window of milliseconds) stops every write
of the state dir until it goes on or dies: after MUTEX_WAIT they fail in one line naming it.
"""

import base64
import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from certrenew.errors import CertrenewError
from certrenew.state.backend import (
    ABSENT,
    Busy,
    Changes,
    Conflict,
    Entry,
    Fenced,
    Holder,
    Lease,
    Unavailable,
    check_key,
)
from certrenew.state.schedule import SCHEDULE
from certrenew.system import flock, owned
from certrenew.system.atomicfile import fsync_directory, remove_stale_temps, stage, write_atomic
from certrenew.system.runcontext import RunContext

log = logging.getLogger(__name__)

LOCKS = "locks"
JOURNAL = "journal.json"
RESERVED = frozenset({LOCKS, JOURNAL, "lock", SCHEDULE})
"""Names at the top of the state dir that are the backend's (`lock` the state dir's own, `schedule.json` the
runs' cache), no key's."""
POLL = 0.1
RECHECK_AFTER = 1.0
"""Seconds a check of the state dir and its top directories holds for reads (see `check_layout`)."""
TOPS = ("accounts", "certificates")
MUTEX_WAIT = 30.0
"""Seconds a write waits for the mutex, held for milliseconds unless its holder is stopped mid-write."""
MUTEX_POLL = 0.005
READ_SIZE = 16384


class FileLease:
    """A held lock of a `FileBackend`, kept alive by the backend's keeper thread until it is released."""

    def __init__(self, backend: "FileBackend", key: str, token: int, holder: str, ttl: float, fd: int) -> None:
        self.key, self.token, self.holder, self.ttl = key, token, holder, ttl
        self.since = datetime.datetime.now(datetime.timezone.utc).isoformat()
        self._backend, self._fd = backend, fd
        self.renewed_at = time.monotonic()
        self.suspended = False

    def check(self) -> None:
        if not self._backend._holds(self):
            raise Fenced(f"the lock on {self.key} (token {self.token}) is no longer ours: its lease expired or "
                         "another holder took it over")

    def suspend(self) -> None:
        """Stop keeping the lease alive, as a holder paused past its TTL does (for tests)."""
        self.suspended = True

    def release(self) -> None:
        if self._fd >= 0:
            self._backend._release(self)
            os.close(self._fd)
            self._fd = -1


class FileBackend:
    """Keys as files under `root` (a state dir)."""

    shared = False
    outage = None

    def __init__(self, root: Path, context: RunContext | None = None) -> None:
        """`context`: the run whose cancellation ends a wait for a lock, and whose writes no signal cuts."""
        self.root = Path(root)
        self.context = context or RunContext()
        self._root = str(self.root)
        self._locks = self.root / LOCKS
        self._held: set[FileLease] = set()
        self._guard = threading.Lock()
        self._writer = threading.Lock()
        """This process's threads queue here for the mutex, each woken as the last lets go, instead of
        polling its flock every MUTEX_POLL: a batch's workers write four times a certificate each."""
        self._keeper: threading.Thread | None = None
        """One thread renews every lease held, while any is: a run holding a thousand has one, not a thousand."""
        self._checked_at = -RECHECK_AFTER
        """When (time.monotonic) the state dir and its top directories were last checked."""
        self._checked: set[str] = set()
        """The directories checked since, the top ones with it: the unfinished order, pending certificate and
        record of a certificate are three reads in one directory, checked once."""

    # Reading.

    def path(self, key: str) -> Path:
        return self.root / _unreserved(key)

    def get(self, key: str) -> Entry | None:
        # Strings, not Paths: a run over ten thousand certificates makes three reads of each.
        _unreserved(key)
        return _read(f"{self._root}/{key}") if self._dirs_ours(key.split("/")[:-1]) else None

    def exists(self, directory: str, *names: str) -> bool:
        """Whether any of `names` in `directory` (a key's prefix) has a value, by access(2): a third of a
        stat, a fraction of `get`'s open and read (not in the protocol: `FileStore.unfinished` asks it
        of every certificate of a pass)."""
        _unreserved(directory)
        if not self._dirs_ours(directory.split("/")):
            return False
        for name in names:
            if os.access(f"{self._root}/{directory}/{name}", os.F_OK):
                return True
        return False

    def statuses(self, key: str) -> tuple[os.stat_result, os.stat_result] | None:
        """The status of `key`'s directory and of its file, by lstat, each checked as ours; None if either
        does not exist. Read afresh each time: every write of a key renames or unlinks a file in
        its directory, which changes the directory's modification time; a file changed in place (by
        hand) changes its own (see `schedule`)."""
        _unreserved(key)
        directory = key.rpartition("/")[0]
        parent = directory.rpartition("/")[0]
        if not directory or not self._dirs_ours(parent.split("/") if parent else []):
            return None
        status = owned.dir_status(f"{self._root}/{directory}")
        if status is None:
            return None
        path = f"{self._root}/{key}"
        try:
            file = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        owned.check_file(file, path)  # refused as a read would refuse it, though it is not read
        return status, file

    def list(self, prefix: str, suffix: str = "") -> dict[str, Entry]:
        directory, _, start = prefix.rpartition("/")
        top = self.path(directory) if directory else self.root
        if not self._dirs_ours(directory.split("/") if directory else []):
            return {}
        found = {}
        for base, dirs, files in os.walk(top):
            dirs[:] = [name for name in dirs if not name.startswith(".")]
            relative = os.path.relpath(base, self.root)
            for name in files:
                key = name if relative == "." else f"{relative}/{name}"
                if name.startswith(".") or not key.startswith(prefix) or not key.endswith(suffix) \
                        or key.split("/", 1)[0] in RESERVED:
                    continue
                if not owned.check_dir(base, follow=base == str(self.root)):
                    continue
                entry = _read(Path(base) / name)
                if entry is not None:
                    found[key] = entry
            if relative == "." and start:
                dirs[:] = [name for name in dirs if name.startswith(start) or start.startswith(name)]
        return found

    def check_layout(self) -> bool:
        """Whether the state dir exists, refused unless it and its top directories are ours alone; a write a
        crash left half done is completed first.

        Checked at most every RECHECK_AFTER seconds (and each directory below them once in that
        time): `status` over ten thousand certificates checks once, and a daemon's /metrics and
        /healthz, in a process that lives for months, at each request.
        """
        now = time.monotonic()
        if now - self._checked_at < RECHECK_AFTER:
            return True
        if not owned.check_dir(self.root, follow=True):
            return False
        for top in TOPS:
            owned.check_dir(self.root / top)
        if os.access(f"{self._root}/{JOURNAL}", os.F_OK):  # a write in flight, or one a killed process cut short:
            with self._mutex():  # completed (see `_replay`) before anything is read, not only before the next write
                pass
        self._checked_at, self._checked = now, {f"{self._root}/{top}" for top in TOPS}
        return True

    def _dirs_ours(self, parts: Iterable[str]) -> bool:
        """Whether the directory of `parts` exists, it and each one above it up to the root ours alone
        (see `owned`; the top ones as `check_layout` checks them)."""
        if not self.check_layout():
            return False
        parts = list(parts)
        if f"{self._root}/{'/'.join(parts)}" in self._checked:  # and so each one above it (added first)
            return True
        path = self._root
        for depth, part in enumerate(parts):
            path = f"{path}/{part}"
            if (depth or part not in TOPS) and path not in self._checked:
                if not owned.check_dir(path):
                    return False
                self._checked.add(path)
        return True

    # Writing.

    def watch(self, prefix: str, after: int, timeout: float) -> Changes:
        """Every entry under `prefix`, after `timeout` seconds unless `after` is 0: a directory keeps no history
        to wait on, and a look-up in it costs microseconds (see `Backend.watch`)."""
        if after:
            self.context.sleep(timeout)
        return Changes(1, dict(self.list(prefix)), complete=True)

    def write(self, changes: Mapping[str, bytes | None], *, expect: Mapping[str, int] | None = None,
              fence: Lease | None = None) -> int:
        """Stage each new file (and the journal of a write of several keys) with its data fsynced, then,
        under the mutex, check `expect` and `fence` and rename them into place: the mutex is held for
        the renames and the directories' fsyncs, not for every file's, so the threads of a batch
        write at once (it was held for 70 % of a 1,000-certificate run when it covered them all)."""
        paths = {key: self.path(key) for key in changes}
        puts = {paths[key]: value for key, value in changes.items() if value is not None}
        journal = None
        if len(changes) > 1:
            journal = json.dumps({key: None if value is None else base64.b64encode(value).decode()
                                  for key, value in changes.items()}).encode()
        staged: dict[Path, Path] = {}
        done = False
        try:
            staged = self._stage({**puts, **({self.root / JOURNAL: journal} if journal else {})})
            with self._mutex():
                if fence is not None:
                    fence.check()
                for key, version in (expect or {}).items():
                    entry = self.get(key)
                    if (entry.version if entry else ABSENT) != version:
                        raise Conflict(f"{self.path(key)} changed meanwhile (someone else wrote it)")
                if journal:
                    _commit(staged[self.root / JOURNAL], self.root / JOURNAL)
                    del staged[self.root / JOURNAL]
                    fsync_directory(self.root)
                try:
                    version = self._apply({path: staged.get(path) for path in paths.values()})
                    staged.clear()
                except BaseException:
                    self._checked_at = -RECHECK_AFTER  # this process's next read completes it too (see `check_layout`)
                    raise
                if journal:
                    self._end_journal()
                done = True
                return version
        finally:
            for temp in staged.values():  # those not renamed (refused, or cut short): no temp left behind,
                _unlink(temp)
            if not done:  # nor a directory made for it
                for directory in dict.fromkeys(path.parent for path in puts):
                    self._remove_empty(directory)

    def _stage(self, files: Mapping[Path, bytes]) -> dict[Path, Path]:
        """A temp beside each file holding its data, fsynced, in directories made 0700 and cleared of the
        temps a killed run left there; {file: temp}."""
        owned.make_dir(self.root, follow=True)
        staged: dict[Path, Path] = {}
        try:
            for directory in dict.fromkeys(path.parent for path in files):
                self._make_dirs(directory)
                remove_stale_temps(directory)
            for path, value in files.items():
                try:
                    staged[path] = stage(path, value)
                except FileNotFoundError:  # its directory, empty, was just removed by another write: again
                    self._make_dirs(path.parent)
                    staged[path] = stage(path, value)
        except BaseException as error:
            for temp in staged.values():
                _unlink(temp)
            if isinstance(error, OSError):
                unwritten = next((path for path in files if path not in staged), self.root)
                raise CertrenewError(f"cannot write {unwritten}: {error.strerror or error}") from error
            raise
        return staged

    def _apply(self, changes: Mapping[Path, Path | None]) -> int:
        """Rename each staged temp over its file and delete each file mapped to None; the version of the
        last one put (ABSENT if none). Each directory is fsynced once, after all its renames and unlinks:
        a certificate's promotion is four files in one. A directory a delete empties is removed (an
        archived certificate leaves no name behind)."""
        changed: dict[Path, bool] = {}  # each directory changed: whether a delete there may have emptied it
        last = None
        for path, temp in changes.items():
            if temp is None:
                if _unlink(path):
                    changed[path.parent] = True
                continue
            _commit(temp, path)
            changed.setdefault(path.parent, False)
            last = path
        for directory in changed:
            fsync_directory(directory)
        for directory in (directory for directory, deleted in changed.items() if deleted):
            self._remove_empty(directory)
        entry = _read(last) if last is not None else None
        return entry.version if entry else ABSENT

    def _remove_empty(self, directory: Path) -> None:
        """Remove `directory` and those above it that are left empty, up to a top directory."""
        while len(directory.relative_to(self.root).parts) > 1:
            try:
                directory.rmdir()
            except OSError:  # not empty (most often), or not ours to remove
                return
            directory = directory.parent

    def _make_dirs(self, directory: Path) -> None:
        """Create `directory` and each one missing above it 0700 (mkdir's parents get the umask's mode)."""
        parts = directory.relative_to(self.root).parts
        for depth in range(1, len(parts) + 1):
            owned.make_dir(self.root.joinpath(*parts[:depth]))

    @contextlib.contextmanager
    def _mutex(self) -> Iterator[None]:
        """Hold the state dir's write mutex for a few file operations; first replay a journal a crash left."""
        owned.make_dir(self.root, follow=True)
        owned.make_dir(self._locks)
        end = time.monotonic() + MUTEX_WAIT
        if not self._writer.acquire(timeout=MUTEX_WAIT):
            raise self._stuck()
        try:
            fd = _open(self._locks / "mutex")
            try:
                if not flock.wait_for(fd, fcntl.LOCK_EX, max(0.0, end - time.monotonic()), MUTEX_POLL,
                                      self.context.sleep):
                    raise self._stuck()
                with self.context.critical():
                    self._replay()
                    yield
            finally:
                os.close(fd)
        finally:
            self._writer.release()

    def _stuck(self) -> Unavailable:
        return Unavailable(f"{self._locks / 'mutex'} stays locked for more than {MUTEX_WAIT:g} s: "
                           "is a certrenew process stopped (kill -CONT it) or hung?")

    def _replay(self) -> None:
        entry = _read(self.root / JOURNAL)
        if entry is None:
            return
        try:
            journal = json.loads(entry.value)
            changes = {self.path(key): None if value is None else base64.b64decode(value)
                       for key, value in journal.items()}
        except (ValueError, AttributeError) as error:
            raise Unavailable(f"cannot replay {self.root / JOURNAL}: {error}; a write was cut short there, "
                              "move it away once you have looked at it") from error
        log.warning("completing a write a crash cut short (%s)", self.root / JOURNAL)
        staged: dict[Path, Path] = {}
        try:
            staged = self._stage({path: value for path, value in changes.items() if value is not None})
            self._apply({path: staged.get(path) for path in changes})
        except CertrenewError as error:
            for temp in staged.values():  # those not renamed
                _unlink(temp)
            raise Unavailable(f"cannot complete the write a crash cut short ({self.root / JOURNAL}): {error}; "
                              "no write is made until it is (fix the cause, or move the journal away)") from error
        self._end_journal()

    def _end_journal(self) -> None:
        """Remove the journal of a write now durable, and make its removal durable too: a journal a crash
        brought back after later writes were made would be replayed over them, rolling those keys back."""
        _unlink(self.root / JOURNAL)
        fsync_directory(self.root)

    # Locks.

    def lock(self, key: str, *, ttl: float, wait: float, holder: str) -> contextlib.AbstractContextManager[FileLease]:
        return self._locked(check_key(key), ttl, wait, holder)

    @contextlib.contextmanager
    def _locked(self, key: str, ttl: float, wait: float, holder: str) -> Iterator[FileLease]:
        lease = self._wait(key, ttl, wait, holder)
        with self._guard:
            self._held.add(lease)
            if self._keeper is None:
                self._keeper = threading.Thread(target=self._keep_alive, name=f"leases of {self.root}", daemon=True)
                self._keeper.start()
        try:
            yield lease
        finally:
            with self._guard:
                self._held.discard(lease)
            lease.release()

    def _wait(self, key: str, ttl: float, wait: float, holder: str) -> FileLease:
        end, said = time.monotonic() + wait, False
        while True:
            taken = self._take(key, ttl, holder)
            if isinstance(taken, FileLease):
                return taken
            if not said and wait > 0:  # at once: a silent wait of minutes looks like a hang
                log.warning("%s holds the lock on %s; waiting up to %g s for it", taken, key, wait)
                said = True
            if time.monotonic() >= end:
                raise Busy(f"{taken} holds the lock on {key}; gave up after {wait:g} s")
            self.context.sleep(POLL)

    def _lease_path(self, key: str) -> Path:
        return self._locks / key.replace("/", "~")

    def _take(self, key: str, ttl: float, holder: str) -> FileLease | str:
        """A new lease on `key`, or the holder of the one that stands."""
        path = self._lease_path(key)
        with self._mutex():
            lease = _lease(path)
            token = lease.get("token", 0)
            if lease.get("holder") is not None and lease["expires"] > time.time() and _alive(path, token):
                return str(lease["holder"])
            _unlink(_flock_path(path, token))
            fd = _open(_flock_path(path, token + 1))
            fcntl.flock(fd, fcntl.LOCK_EX)
            taken = FileLease(self, key, token + 1, holder, ttl, fd)
            self._record(taken)
            return taken

    def _record(self, lease: FileLease) -> None:
        """Write `lease` as the one that stands, its expiry a TTL from now."""
        write_atomic(self._lease_path(lease.key), json.dumps(
            {"token": lease.token, "holder": lease.holder, "expires": time.time() + lease.ttl, "ttl": lease.ttl,
             "since": lease.since}).encode(), sync=False)

    def _holds(self, lease: FileLease) -> bool:
        stands = _lease(self._lease_path(lease.key))
        return stands.get("token") == lease.token and stands.get("holder") is not None \
            and stands["expires"] > time.time()

    def _keep_alive(self) -> None:
        """Renew each lease held a third of its TTL after it was last; end once none is held."""
        while True:
            with self._guard:
                held = [lease for lease in self._held if not lease.suspended]
                if not self._held:
                    self._keeper = None
                    return
            now = time.monotonic()
            due = [lease for lease in held if now - lease.renewed_at >= lease.ttl / 3]
            if due:
                try:
                    self._renew(due, now)
                except Exception as error:  # any: a dead keeper would renew no lease of this backend again
                    log.warning("cannot renew the leases of %s: %s", self.root, error)  # their next check says so
            time.sleep(min((lease.ttl for lease in held), default=POLL * 6) / 6)

    def _renew(self, leases: Iterable[FileLease], now: float) -> None:
        with self._mutex():
            for lease in leases:
                if self._holds(lease):  # else taken over: nothing to keep, its next write is refused
                    self._record(lease)
                lease.renewed_at = now

    def _release(self, lease: FileLease) -> None:
        path = self._lease_path(lease.key)
        with self._mutex():
            if _lease(path).get("token") == lease.token:  # the token stays, for the next taker to count on
                write_atomic(path, json.dumps({"token": lease.token, "holder": None, "expires": 0}).encode(),
                             sync=False)
            _unlink(_flock_path(path, lease.token))

    def locks(self, prefix: str) -> dict[str, Holder]:
        """The leases in `locks/` that stand: a holder that died let go of its flock, however it died."""
        try:
            names = os.listdir(self._locks)
        except FileNotFoundError:
            return {}
        held, now = {}, time.time()
        for name in names:
            key = name.replace("~", "/")
            if not key.startswith(prefix) or name.startswith(".") or name == "mutex":
                continue
            lease = _lease(self._locks / name)  # a holder's flock file holds no lease: {}
            token = lease.get("token", 0)
            if lease.get("holder") is not None and lease["expires"] > now and _alive(self._locks / name, token):
                since = lease.get("since")
                held[key] = Holder(str(lease["holder"]), token,
                                   datetime.datetime.fromisoformat(since) if isinstance(since, str) else None,
                                   lease["expires"] - now)
        return held

    def where(self, key: str) -> str:
        return f"{self._root}/{check_key(key)}"

    def close(self) -> None:
        with self._guard:
            held, self._held = list(self._held), set()
        for lease in held:
            lease.release()


def _lease(path: Path) -> dict:
    """The lease recorded at `path`; an empty one if none (or a torn one: the flock still tells)."""
    entry = _read(path)
    try:
        lease = json.loads(entry.value) if entry else {}
        return lease if isinstance(lease, dict) and isinstance(lease.get("token", 0), int) else {}
    except ValueError:
        return {}


def _flock_path(path: Path, token: int) -> Path:
    """The file whose flock the holder of `token` keeps: `#` is in no key, so it is no other key's lease
    (`.1` was: the holder of "srv" token 1 kept its flock on the lease of certificate "srv.1")."""
    return Path(f"{path}#{token}")


def _alive(path: Path, token: int) -> bool:
    """Whether the holder of `token` still holds its flock: not if it exited, however it did. (Also looked
    for as `.<token>`, the name an older certrenew used: one still running through an upgrade holds its locks.)"""
    for name in (_flock_path(path, token), f"{path}.{token}"):
        try:
            fd = owned.open_file(name, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            if not _flock(fd):
                return True
        finally:
            os.close(fd)
    return False


def _flock(fd: int) -> bool:
    """Take the flock on `fd` if nobody holds it; whether it was taken."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unreserved(key: str) -> str:
    """`key` if it is a state key (see `check_key`) and none of the backend's own names; ValueError otherwise."""
    if check_key(key).split("/", 1)[0] in RESERVED:
        raise ValueError(f"not a state key: {key!r} (reserved)")
    return key


def _open(path: Path) -> int:
    try:
        return owned.open_file(path, os.O_RDWR | os.O_CREAT)
    except OSError as error:
        raise Unavailable(f"cannot open {path}: {error.strerror} (the state dir must be writable by the user "
                          "certrenew runs as)") from error


def _read(path: str | Path) -> Entry | None:
    """The file's bytes and version, or None if it does not exist; refused unless ours alone.

    The version is the inode and the time of the last change: a new file replaces the old on
    every write (atomically), so both change, and no version is kept beside the data.
    """
    try:
        fd, status = owned.open_checked(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise Unavailable(f"cannot read {path}: {error.strerror}") from error
    try:
        chunks = []
        while chunk := os.read(fd, READ_SIZE):
            chunks.append(chunk)
        return Entry(b"".join(chunks), (status.st_ino << 64) | status.st_mtime_ns)
    finally:
        os.close(fd)


def _commit(temp: Path, path: Path) -> None:
    """Rename staged `temp` over `path`."""
    try:
        os.replace(temp, path)
    except OSError as error:
        raise CertrenewError(f"cannot write {path}: {error.strerror or error}") from error


def _unlink(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as error:
        if error.errno == errno.EISDIR:
            raise CertrenewError(f"cannot remove {path}: it is a directory") from error
        raise
