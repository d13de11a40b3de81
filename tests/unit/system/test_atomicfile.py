import errno
import os
import stat
import subprocess
import time

import pytest

from certrenew.errors import CertrenewError
from certrenew.system.atomicfile import remove_stale_temps, write_atomic


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_new_file_gets_the_mode_less_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "a.pem", b"one", 0o640)
    finally:
        os.umask(old)
    assert (tmp_path / "a.pem").read_bytes() == b"one" and mode(tmp_path / "a.pem") == 0o600


def test_replacing_keeps_the_operators_mode_when_asked(tmp_path):
    path = tmp_path / "a.pem"
    write_atomic(path, b"one")
    path.chmod(0o640)
    write_atomic(path, b"two", 0o600, keep_mode=True)
    assert path.read_bytes() == b"two" and mode(path) == 0o640
    write_atomic(path, b"three", 0o600)
    assert mode(path) == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "a.pem"
    write_atomic(path, b"old")
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # the write itself fails, after the temp file exists
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pem"]

    with pytest.raises(CertrenewError, match="cannot write .*missing"):
        write_atomic(tmp_path / "missing" / "b.pem", b"new")


@pytest.mark.parametrize("call", ["write", "fsync", "close"])
def test_a_disk_error_at_any_step_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch, call):
    """EIO from a write, an fsync, or a close (NFS reports a failed write back at close)."""
    path = tmp_path / "a.pem"
    write_atomic(path, b"old")
    real, failed = getattr(os, call), []

    def failing(fd, *args):
        temp = ".certrenew-" in os.readlink(f"/proc/self/fd/{fd}")
        result = real(fd, *args)
        if temp:
            failed.append(call)
            raise OSError(errno.EIO, "Input/output error")
        return result
    monkeypatch.setattr(os, call, failing)
    with pytest.raises(CertrenewError, match=f"cannot write {path}: Input/output error"):
        write_atomic(path, b"new")
    monkeypatch.undo()
    assert failed == [call]  # the fault really happened
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pem"]


def test_stale_temps_are_removed(tmp_path):
    (tmp_path / ".certrenew-dead.tmp").write_bytes(b"half")
    (tmp_path / "site.pem").write_bytes(b"keep")
    assert [p.name for p in remove_stale_temps(tmp_path)] == [".certrenew-dead.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["site.pem"]


def test_temps_are_named_per_run_and_only_a_gone_runs_are_removed(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (seen.append(src.name), real_replace(src, dst)))
    write_atomic(tmp_path / "a.pem", b"one")
    assert seen[0].startswith(f".certrenew-{os.getpid()}-") and seen[0].endswith(".tmp")

    live = tmp_path / f".certrenew-{os.getpid()}-0123.tmp"  # another thread's write, in flight
    live.write_bytes(b"half")
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = tmp_path / f".certrenew-{dead.pid}-4567.tmp"
    gone.write_bytes(b"half")
    old = tmp_path / f".certrenew-{os.getpid()}-89ab.tmp"
    old.write_bytes(b"half")
    os.utime(old, (time.time() - 2 * 3600,) * 2)  # its pid reused since
    (tmp_path / ".certrenew-dir.tmp").mkdir()  # not a temp of ours
    assert sorted(p.name for p in remove_stale_temps(tmp_path)) == sorted([gone.name, old.name])
    assert live.exists() and (tmp_path / ".certrenew-dir.tmp").is_dir()


def test_a_kept_mode_never_lets_others_write(tmp_path):
    path = tmp_path / "a.pem"
    write_atomic(path, b"one")
    path.chmod(0o666)
    write_atomic(path, b"two", 0o600, keep_mode=True)
    assert mode(path) == 0o644  # the operator's read bits stay; no one else may write the key
