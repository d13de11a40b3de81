"""What a write to the state dir costs, counted: the fsyncs of a certificate's writes, which of them
hold the state dir's mutex, and the mutex taken by the threads of one process without polling. Each
of a batch's certificates is written four times under that one mutex, so all three set how fast a
batch can go when the disk is slow; a count, unlike a time, holds on any machine."""

import fcntl
import os
import stat
import threading
from pathlib import Path

import pytest

from certrenew.state.backend import Conflict, Fenced, Unavailable
from certrenew.state.files import FileBackend
from certrenew.state.store import CertificateRecord, FileStore, PendingOrder

ORDER = PendingOrder("https://ca.example/order/1", ["a.example"], "ecdsa-p256", b"-----KEY-----\n")


@pytest.fixture
def fsynced(monkeypatch):
    """The path of every file or directory fsynced, in order."""
    paths: list[Path] = []
    real = os.fsync

    def fsync(fd):
        paths.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return paths


def test_a_certificate_issued_and_installed_fsyncs_its_directory_once_a_write(tmp_path, fsynced):
    store = FileStore(tmp_path / "state")
    directory = tmp_path / "state" / "certificates" / "a"
    with store.lock(timeout=0):
        store.save_order("a", ORDER)
        store.save_record(CertificateRecord("a", ["a.example"], "ecdsa-p256"))  # the budget's count
        fsynced.clear()
        store.save_pending("a", b"bundle\n", "https://ca.example/dir")
        # pending.json, pending.pem and the journal, each staged in a temp, before the mutex; under it,
        # the state dir for the journal's rename, the certificate's directory once for both renames
        # and order.json's removal, then the state dir for the journal's removal.
        assert fsynced.count(directory) == 1 and len(fsynced) == 6, fsynced
        fsynced.clear()
        store.promote_pending(CertificateRecord("a", ["a.example"], "ecdsa-p256", serial="01"))
        # current.pem, meta.json and the journal, then the state dir, the directory once (two renames,
        # two removals), and the state dir for the journal's removal.
        assert fsynced.count(directory) == 1 and len(fsynced) == 6, fsynced
    assert sorted(path.name for path in directory.iterdir()) == ["current.pem", "meta.json"]


def test_a_write_s_data_is_fsynced_before_it_takes_the_mutex(tmp_path, monkeypatch):
    """Only the renames and the directories' fsyncs hold it: a file's fsync waits for the disk, and a
    batch's threads each waited for all the others' in turn (70 % of a 1,000-certificate run)."""
    backend = FileBackend(tmp_path / "state")
    backend.write({"certificates/a/meta.json": b"{}"})  # the state dir and locks/mutex exist
    under_mutex, real = [], os.fsync

    def fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            probe = os.open(tmp_path / "state" / "locks" / "mutex", os.O_RDWR)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: not this write's to hold yet
            except BlockingIOError:
                under_mutex.append(os.readlink(f"/proc/self/fd/{fd}"))
            finally:
                os.close(probe)
        real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    backend.write({"certificates/a/current.pem": b"pem", "certificates/a/meta.json": b"{}"})
    backend.write({"certificates/a/order.json": b"{}"})
    assert under_mutex == []
    assert backend.get("certificates/a/current.pem").value == b"pem"


def test_a_write_waiting_for_the_disk_holds_up_no_other_write(tmp_path, monkeypatch):
    backend = FileBackend(tmp_path / "state")
    slow, real = tmp_path / "state" / "certificates" / "slow", os.fsync
    waiting, released = threading.Event(), threading.Event()

    def fsync(fd):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).parent == slow:
            waiting.set()
            if not released.wait(5):
                raise AssertionError("never released")
        real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    stuck = threading.Thread(target=backend.write, args=({"certificates/slow/current.pem": b"pem",
                                                          "certificates/slow/meta.json": b"{}"},))
    stuck.start()
    try:
        assert waiting.wait(5)  # its first file's fsync waits for the disk
        backend.write({"certificates/fast/meta.json": b"{}"})  # done while the other waits for its fsync
        assert stuck.is_alive() and backend.get("certificates/slow/meta.json") is None
    finally:
        released.set()
        stuck.join()
    assert backend.get("certificates/slow/meta.json").value == b"{}"


@pytest.mark.parametrize("refusal", ["conflict", "fenced"])
def test_a_refused_write_leaves_no_temp_and_no_directory_behind(tmp_path, refusal):
    backend = FileBackend(tmp_path / "state")
    backend.write({"certificates/a/meta.json": b"{}"})
    with backend.lock("certificates/new", ttl=30, wait=0, holder="me") as lease:
        if refusal == "fenced":
            lease.suspend()
            (tmp_path / "state" / "locks" / "certificates~new").write_text('{"token": 99, "holder": "another"}')
        with pytest.raises(Conflict if refusal == "conflict" else Fenced):
            backend.write({"certificates/new/meta.json": b"{}", "certificates/new/current.pem": b"pem"},
                          expect={"certificates/new/meta.json": 1} if refusal == "conflict" else None,
                          fence=lease if refusal == "fenced" else None)
    assert sorted(os.listdir(tmp_path / "state" / "certificates")) == ["a"]
    assert not [name for name in os.listdir(tmp_path / "state") if name.startswith(".")]


def test_the_threads_of_one_process_take_turns_at_the_mutex_without_polling_it(tmp_path, monkeypatch):
    backend = FileBackend(tmp_path / "state")
    polls = []
    monkeypatch.setattr(backend.context, "sleep", lambda seconds: polls.append(seconds))

    def write(thread: int) -> None:
        for index in range(20):
            backend.write({f"certificates/c{thread}/meta.json": b"{}", f"certificates/c{thread}/x{index}": b"x"})
    threads = [threading.Thread(target=write, args=(thread,)) for thread in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert polls == []  # each waited on the lock the one before it let go, not by sleeping on its flock
    assert len(os.listdir(tmp_path / "state" / "certificates" / "c7")) == 21


def test_a_record_read_makes_one_fstat_its_ownership_check_and_version_share(tmp_path, monkeypatch):
    store = FileStore(tmp_path / "state")
    with store.lock(timeout=0):
        for name in ("a", "b"):
            store.save_record(CertificateRecord(name, [f"{name}.example"], "ecdsa-p256"))
    fstats = []
    real = os.fstat

    def fstat(fd):
        fstats.append(fd)
        return real(fd)
    monkeypatch.setattr(os, "fstat", fstat)
    for _ in range(3):  # a no-op pass reads every record: at 10,000 certificates each fstat is 10,000
        for name in ("a", "b"):
            assert not store.unfinished(name) and store.load_record(name) is not None
    assert len(fstats) == 6


@pytest.mark.parametrize("cut_short", [False, True], ids=["written", "replayed after a crash"])
def test_a_journal_is_removed_durably_before_any_later_write(tmp_path, monkeypatch, cut_short):
    """A journal whose removal a crash undid would be replayed over every write made after it."""
    backend = FileBackend(tmp_path / "state")
    changes = {"certificates/a/meta.json": b"{}", "certificates/a/current.pem": b"pem"}
    journal = tmp_path / "state" / "journal.json"
    if cut_short:
        backend.write({"certificates/a/meta.json": b"old"})
        journal.write_text('{"certificates/a/meta.json": "e30=", "certificates/a/current.pem": "cGVt"}')
        journal.chmod(0o600)
    events = []
    real_unlink, real_fsync, real_replace = os.unlink, os.fsync, os.replace
    monkeypatch.setattr(os, "unlink", lambda path, **kwargs: (events.append(("unlink", Path(path))),
                                                              real_unlink(path, **kwargs)))
    monkeypatch.setattr(os, "replace", lambda source, target: (events.append(("replace", Path(target))),
                                                               real_replace(source, target)))
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")))),
                                                 real_fsync(fd)))
    if cut_short:
        backend.write({"certificates/b/meta.json": b"{}"})  # the next write completes the one cut short first
    else:
        backend.write(changes)
    removed = events.index(("unlink", journal))
    assert ("fsync", tmp_path / "state") in events[removed:], events
    if cut_short:  # and before the write that found it replaces anything (its data is staged in temps before)
        assert events.index(("fsync", tmp_path / "state"), removed) < events.index(
            ("replace", tmp_path / "state" / "certificates" / "b" / "meta.json")), events
    assert not journal.exists() and backend.get("certificates/a/meta.json").value == b"{}"


def test_a_write_waits_for_another_process_s_mutex_and_gives_up_after_mutex_wait(tmp_path, monkeypatch):
    from certrenew.state import files

    backend = FileBackend(tmp_path / "state")
    backend.write({"certificates/a/meta.json": b"{}"})  # locks/mutex exists
    other = os.open(tmp_path / "state" / "locks" / "mutex", os.O_RDWR)  # another open file: as another process's
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        monkeypatch.setattr(files, "MUTEX_WAIT", 0.3)
        with pytest.raises(Unavailable, match=r"locks/mutex stays locked for more than 0.3 s"):
            backend.write({"certificates/a/meta.json": b"new"})
        assert backend.get("certificates/a/meta.json").value == b"{}"
        monkeypatch.setattr(files, "MUTEX_WAIT", 5.0)
        polls = []
        monkeypatch.setattr(backend.context, "sleep", lambda seconds: (polls.append(seconds),
                                                                       fcntl.flock(other, fcntl.LOCK_UN)))
        backend.write({"certificates/a/meta.json": b"new"})  # goes through once the other lets go
        assert polls == [files.MUTEX_POLL]  # it waited, by polling the flock
        assert backend.get("certificates/a/meta.json").value == b"new"
    finally:
        os.close(other)
