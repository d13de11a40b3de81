"""What a write to the state dir costs, counted: the fsyncs of a certificate's writes, and the
state dir's mutex taken by the threads of one process without polling. Each of a batch's
certificates is written four times under that one mutex, so both set how fast a batch can go
when the disk is slow; a count, unlike a time, holds on any machine."""

import os
import threading
from pathlib import Path

import pytest

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
        # The journal (file, then the state dir for its rename), pending.json and pending.pem,
        # then the certificate's directory once for both renames and order.json's removal, then
        # the state dir for the journal's removal.
        assert fsynced.count(directory) == 1 and len(fsynced) == 6, fsynced
        fsynced.clear()
        store.promote_pending(CertificateRecord("a", ["a.example"], "ecdsa-p256", serial="01"))
        # The journal, current.pem and meta.json, then the directory once (two renames, two
        # removals), then the journal's removal.
        assert fsynced.count(directory) == 1 and len(fsynced) == 6, fsynced
    assert sorted(path.name for path in directory.iterdir()) == ["current.pem", "meta.json"]


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
    real_unlink, real_fsync = os.unlink, os.fsync
    monkeypatch.setattr(os, "unlink", lambda path, **kwargs: (events.append(("unlink", Path(path))),
                                                              real_unlink(path, **kwargs)))
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")))),
                                                 real_fsync(fd)))
    if cut_short:
        backend.write({"certificates/b/meta.json": b"{}"})  # the next write completes the one cut short first
    else:
        backend.write(changes)
    removed = events.index(("unlink", journal))
    assert ("fsync", tmp_path / "state") in events[removed:], events
    if cut_short:  # and before the write that found it
        later = tmp_path / "state" / "certificates" / "b"
        assert events.index(("fsync", tmp_path / "state"), removed) < min(
            index for index, (call, path) in enumerate(events) if call == "fsync" and later in (path, *path.parents)), events
    assert not journal.exists() and backend.get("certificates/a/meta.json").value == b"{}"
