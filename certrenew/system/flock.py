"""Waiting for an flock another process holds: tried at once, then every `poll` seconds until a deadline."""

import fcntl
import time
from collections.abc import Callable


def wait_for(fd: int, mode: int, timeout: float, poll: float, sleep: Callable[[float], None],
             waiting: Callable[[], None] = lambda: None) -> bool:
    """Take the flock `mode` (LOCK_EX, LOCK_SH) on `fd` within `timeout` seconds; False if it stays held.
    `waiting` is called once, when the first try finds it held; `sleep` waits between tries (a run's, so that
    its cancellation ends the wait). Other errors (a file system without flock) are raised."""
    end = time.monotonic() + timeout
    said = False
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        if not said:
            waiting()
            said = True
        if time.monotonic() >= end:
            return False
        sleep(poll)
