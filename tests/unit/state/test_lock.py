import fcntl
import os
import threading
import time

import pytest

from certrenew.errors import CertrenewError
from certrenew.state.lock import StateLock
from certrenew.system.runcontext import RunContext


def test_the_holder_writes_its_pid_and_releases_on_exit(tmp_path):
    with StateLock(tmp_path / "state", timeout=0) as lock:
        assert lock.path.read_text() == f"{os.getpid()}\n"
        assert oct(lock.path.stat().st_mode & 0o777) == oct(0o600)
    with lock.path.open("rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_second_run_gives_up_naming_the_holder(tmp_path):
    with StateLock(tmp_path, timeout=0):
        started = time.monotonic()
        with pytest.raises(CertrenewError, match=rf"pid {os.getpid()}\) holds the lock .*\(--lock-timeout\)"):
            with StateLock(tmp_path, timeout=0.3):
                pass
        assert 0.3 <= time.monotonic() - started < 2


def test_a_second_run_waits_for_the_first(tmp_path, monkeypatch):
    polls = threading.Semaphore(0)
    context = RunContext()
    sleep = context.sleep
    monkeypatch.setattr(context, "sleep", lambda seconds: (polls.release(), sleep(seconds)))
    order = []
    first = StateLock(tmp_path, timeout=0).__enter__()

    def second():
        with StateLock(tmp_path, timeout=10, context=context):
            order.append("second acquired")

    waiter = threading.Thread(target=second)
    waiter.start()
    try:
        # The second found the lock held and is polling for it (without a lock, it never polls).
        assert polls.acquire(timeout=10), "the second run never waited"
        assert order == []
    finally:
        order.append("first released")
        first.__exit__(None, None, None)
        waiter.join(timeout=10)
    assert order == ["first released", "second acquired"]


def test_a_shorter_pid_replaces_a_longer_one_whole(tmp_path):
    (tmp_path / "lock").write_text("4194304999\n")  # a previous holder's, longer than any real pid
    (tmp_path / "lock").chmod(0o600)
    with StateLock(tmp_path, timeout=0) as lock:
        assert lock.path.read_text() == f"{os.getpid()}\n"


def test_a_run_that_gives_up_waiting_keeps_no_descriptor_open(tmp_path):
    """A daemon gives up on the lock at every pass while another run holds it: no descriptor may leak."""
    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    with StateLock(tmp_path, timeout=0):
        before = open_descriptors()
        for _ in range(3):
            with pytest.raises(CertrenewError, match="holds the lock"):
                with StateLock(tmp_path, timeout=0):
                    pass
        assert open_descriptors() == before
