"""The backend contract (tests/harness/backend_contract.py) on each local backend, and what only the
file backend must keep: today's layout, a crash between the files of one write, a killed holder."""

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from certrenew.state.backend import Busy
from certrenew.state.files import JOURNAL, FileBackend
from certrenew.state.memory import MemoryBackend
from tests.harness.backend_contract import CONTRACT


@pytest.fixture(params=["memory", "files"])
def connect(request, tmp_path):
    if request.param == "memory":
        shared = MemoryBackend()
        return lambda: shared
    return lambda: FileBackend(tmp_path / "state")


@pytest.mark.parametrize("check", CONTRACT, ids=[check.__name__ for check in CONTRACT])
def test_backend_contract(connect, check):
    check(connect)


def test_keys_are_the_paths_of_today_s_state_dir(tmp_path):
    """A state dir written before the backends existed reads as it is, and writes keep it private."""
    (tmp_path / "state" / "certificates" / "a").mkdir(parents=True, mode=0o700)
    (tmp_path / "state").chmod(0o700)
    (tmp_path / "state" / "certificates").chmod(0o700)
    (tmp_path / "state" / "certificates" / "a" / "meta.json").write_bytes(b"{}")
    (tmp_path / "state" / "certificates" / "a" / "meta.json").chmod(0o600)
    backend = FileBackend(tmp_path / "state")
    assert backend.get("certificates/a/meta.json").value == b"{}"
    backend.write({"accounts/ca-1/key.pem": b"KEY"})
    assert oct(os.stat(tmp_path / "state" / "accounts").st_mode & 0o777) == "0o700"
    assert oct(os.stat(tmp_path / "state" / "accounts" / "ca-1" / "key.pem").st_mode & 0o777) == "0o600"
    (tmp_path / "state" / "certificates" / "a" / "link.pem").symlink_to(tmp_path / "state" / "accounts" / "ca-1"
                                                                        / "key.pem")
    with pytest.raises(Exception, match="symbolic link"):
        backend.get("certificates/a/link.pem")
    with pytest.raises(ValueError, match="not a state key"):
        backend.get("certificates/../lock")
    with pytest.raises(ValueError, match="reserved"):
        backend.write({"locks/x": b"mine"})


def test_a_write_of_several_files_cut_short_by_a_crash_is_completed_by_the_next_write(tmp_path, monkeypatch):
    from certrenew.state import files

    backend = FileBackend(tmp_path / "state")
    backend.write({"certificates/a/current.pem": b"ONE", "certificates/a/pending.pem": b"TWO"})
    real, written = files._commit, []

    def crash_at_the_second_file(temp, path):
        written.append(path.name)
        if path.name == "previous.pem":
            raise SystemExit("killed")
        return real(temp, path)
    monkeypatch.setattr(files, "_commit", crash_at_the_second_file)
    with pytest.raises(SystemExit):
        backend.write({"certificates/a/current.pem": b"TWO", "certificates/a/previous.pem": b"ONE",
                       "certificates/a/pending.pem": None})
    monkeypatch.undo()
    assert written == [JOURNAL, "current.pem", "previous.pem"]  # the crash really came part-way
    assert (tmp_path / "state" / JOURNAL).exists()
    FileBackend(tmp_path / "state").write({"certificates/b/meta.json": b"{}"})  # another process's next write
    assert {key: entry.value for key, entry in backend.list("certificates/a/").items()} == {
        "certificates/a/current.pem": b"TWO", "certificates/a/previous.pem": b"ONE"}
    assert not (tmp_path / "state" / JOURNAL).exists()


HOLDER = textwrap.dedent("""
    import sys, time
    from certrenew.state.files import FileBackend
    from certrenew.state.backend import Fenced
    backend = FileBackend(sys.argv[1])
    with backend.lock("certificates/a", ttl=0.5, wait=0, holder="held by the child") as lease:
        print("held", flush=True)
        sys.stdin.readline()
        try:
            backend.write({"certificates/a/meta.json": b"late"}, fence=lease)
            print("written", flush=True)
        except Fenced as error:
            print("fenced:", error, flush=True)
""")


def holder(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "state")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "held\n"
    return child


def test_a_holder_that_died_lets_go_at_once(tmp_path):
    child = holder(tmp_path)
    backend = FileBackend(tmp_path / "state")
    with pytest.raises(Busy, match="held by the child holds the lock on certificates/a"):
        with backend.lock("certificates/a", ttl=30, wait=0, holder="me"):
            pass
    child.kill()
    child.wait()
    with backend.lock("certificates/a", ttl=30, wait=0, holder="me") as lease:  # not a TTL later: at once
        assert lease.token == 2


def test_a_holder_paused_past_its_ttl_loses_the_lock_and_its_late_write(tmp_path):
    child = holder(tmp_path)
    backend = FileBackend(tmp_path / "state")
    os.kill(child.pid, signal.SIGSTOP)
    try:
        with backend.lock("certificates/a", ttl=30, wait=10, holder="successor") as lease:
            backend.write({"certificates/a/meta.json": b"successor"}, fence=lease)
            os.kill(child.pid, signal.SIGCONT)
            out, _ = child.communicate("go\n", timeout=10)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
    assert out.startswith("fenced: the lock on certificates/a (token 1) is no longer ours"), out
    assert backend.get("certificates/a/meta.json").value == b"successor"


def test_a_write_refused_before_it_began_leaves_no_journal_to_block_the_next_ones(tmp_path):
    backend = FileBackend(tmp_path / "state")
    backend.write({"certificates/a/pending.pem": b"ONE", "certificates/a/rejected": b"a file where a dir goes"})
    with pytest.raises(Exception, match="rejected: it is not a directory"):
        backend.write({"certificates/a/rejected/1-pending.pem": b"ONE", "certificates/a/pending.pem": None})
    assert not (tmp_path / "state" / JOURNAL).exists()
    backend.write({"certificates/b/meta.json": b"{}"})  # the state dir still takes writes
    assert backend.get("certificates/a/pending.pem").value == b"ONE"


def test_a_failure_nobody_foresaw_while_renewing_leases_does_not_stop_their_renewal(tmp_path, monkeypatch):
    """The keeper thread outlives any failure: dead, it would renew no lease of the backend again (a daemon's
    every later lock would lapse a TTL in, and be taken over while still worked on)."""
    backend = FileBackend(tmp_path / "state")
    real, failed = backend._renew, []

    def fail_once(leases, now):
        if not failed:
            failed.append(now)
            raise OSError(errno.EIO, "Input/output error")  # fsync_directory's, say: not a CertrenewError
        return real(leases, now)
    monkeypatch.setattr(backend, "_renew", fail_once)
    with backend.lock("certificates/a", ttl=0.3, wait=0, holder="me") as lease:
        time.sleep(1.2)  # four TTLs: renewed three times or more, once the first renewal failed
        assert failed  # the fault happened
        lease.check()
        backend.write({"certificates/a/meta.json": b"{}"}, fence=lease)


KILLED_MID_WRITE = textwrap.dedent("""
    import os, signal, sys
    from certrenew.state import files
    backend = files.FileBackend(sys.argv[1])
    real = files._commit

    def killed_at_the_second_file(temp, path):
        if path.name == "previous.pem":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(temp, path)
    files._commit = killed_at_the_second_file
    backend.write({"certificates/a/current.pem": b"TWO", "certificates/a/previous.pem": b"ONE",
                   "certificates/a/pending.pem": None})
""")


def test_a_write_a_killed_process_left_half_done_is_completed_before_anyone_reads(tmp_path):
    """Not only by the next write: `status`, /metrics or `migrate-state` may be the next to look, and must
    not show (or copy) a certificate's new bundle with its old record, or a pending one already installed."""
    FileBackend(tmp_path / "state").write({"certificates/a/current.pem": b"ONE",
                                           "certificates/a/pending.pem": b"TWO"})
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(tmp_path / "state")])
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "state" / JOURNAL).exists()  # the write really was cut short
    assert (tmp_path / "state" / "certificates" / "a" / "current.pem").read_bytes() == b"TWO"
    reader = FileBackend(tmp_path / "state")  # another process, that only reads
    assert reader.get("certificates/a/pending.pem") is None
    assert {key: entry.value for key, entry in reader.list("certificates/").items()} == {
        "certificates/a/current.pem": b"TWO", "certificates/a/previous.pem": b"ONE"}
    assert not (tmp_path / "state" / JOURNAL).exists()


def test_a_certificate_named_like_another_s_lock_token_takes_no_lock_from_it(tmp_path):
    """Certificate names may end in a dot and digits: the lock of "srv.1" is not the file whose flock says that
    the holder of "srv" (token 1) is alive, so neither lock can be taken while the other is held."""
    holder, other, taker = (FileBackend(tmp_path / "state") for _ in range(3))
    with holder.lock("certificates/srv", ttl=30, wait=0, holder="the holder of srv") as held:
        with other.lock("certificates/srv.1", ttl=30, wait=0, holder="the holder of srv.1"):
            with pytest.raises(Busy, match="the holder of srv holds the lock on certificates/srv;"):
                with taker.lock("certificates/srv", ttl=30, wait=0, holder="a second holder"):
                    pass
            held.check()


def test_a_lock_an_older_certrenew_holds_through_an_upgrade_stays_its_own(tmp_path):
    """It kept its flock on `locks/K.<token>`: a run of this one does not take its lock away."""
    backend = FileBackend(tmp_path / "state")
    with backend.lock("certificates/a", ttl=30, wait=0, holder="me"):  # makes locks/, with the layout's modes
        pass
    lease = tmp_path / "state" / "locks" / "certificates~a"
    lease.write_text(json.dumps({"token": 2, "holder": "an older certrenew", "expires": time.time() + 30}))
    old = os.open(f"{lease}.2", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(old, fcntl.LOCK_EX)
        with pytest.raises(Busy, match="an older certrenew holds the lock on certificates/a"):
            with backend.lock("certificates/a", ttl=30, wait=0, holder="me"):
                pass
    finally:
        os.close(old)
    with backend.lock("certificates/a", ttl=30, wait=0, holder="me") as taken:  # gone with its flock
        assert taken.token == 3
