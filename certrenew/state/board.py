"""The HTTP-01 answers a fleet's responders share, kept in memory beside a daemon's responder.

On a fleet the CA validates at whichever node a name resolves to, so every node's responder answers
every token another node published in the store. A look-up in etcd from the responder's event loop
would make every connection wait on the network (and, while etcd is away, on its timeouts): the
daemon answers from a copy that one thread keeps current by watching the challenges (`Backend.watch`),
and looks a token up in the store only when the copy lacks it (the CA may ask within a millisecond of
the publication, before the watch brought it), for at most LOOKUP_BOUND.
"""

import concurrent.futures
import logging
import threading

from certrenew.errors import Interrupted
from certrenew.state.backend import Entry
from certrenew.state.store import CHALLENGES, Store

log = logging.getLogger(__name__)

WATCH = 5.0
"""Seconds one watch request waits for a change before it is made again (and sees whether to stop)."""
LOOKUP_BOUND = 0.5
"""Seconds a token the copy lacks may hold up the responder's event loop while the store is asked."""
RETRY_PAUSE = 1.0
"""Seconds between watches that fail (etcd away): the copy keeps what it has meanwhile."""


class Board:
    """A `responder.Board` over `store` answering from memory; a context manager for its watching thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._entries: dict[str, Entry] = {}
        self._revision = 0
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._lookups = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="certrenew-board-lookup")
        self._follower = threading.Thread(target=self._follow, name="certrenew-board", daemon=True)

    def __enter__(self) -> "Board":
        self._follower.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Not waiting for the watching thread: it ends when its watch returns, having only a copy to update."""
        self._stop.set()
        self._lookups.shutdown(wait=False, cancel_futures=True)

    def _follow(self) -> None:
        prefix, failing = f"{CHALLENGES}/", False
        while not self._stop.is_set():
            try:
                changes = self.store.backend.watch(prefix, self._revision, WATCH)
            except Interrupted:  # the daemon is stopping
                return
            except Exception as error:  # the thread must outlive any failure: say it once, go on
                if not failing:
                    log.warning("responder: cannot watch the published challenges (%s); looking them up one by "
                                "one until it works again", error)
                failing = True
                self._stop.wait(RETRY_PAUSE)
                continue
            if failing:
                log.info("responder: watching the published challenges again")
                failing = False
            with self._mutex:
                if changes.complete:
                    self._entries = {}
                for key, entry in changes.entries.items():
                    if entry is None:
                        self._entries.pop(key, None)
                    else:
                        self._entries[key] = entry
                self._revision = changes.revision

    @property
    def shared(self) -> bool:
        return self.store.shared

    def publish_challenge(self, token: str, domain: str, validation: str) -> None:
        self.store.publish_challenge(token, domain, validation)

    def withdraw_challenge(self, token: str) -> None:
        self.store.withdraw_challenge(token)

    def challenges_published(self) -> bool:
        return self.store.challenges_published()

    def find_challenge(self, token: str) -> tuple[str, str] | None:
        """From the copy; from the store, for at most LOOKUP_BOUND, if the copy lacks `token`."""
        with self._mutex:
            entry = self._entries.get(f"{CHALLENGES}/{token}.json")
        if entry is not None:
            return self.store.read_challenge(token, entry)
        try:
            return self._lookups.submit(self.store.find_challenge, token).result(LOOKUP_BOUND)
        except concurrent.futures.TimeoutError:
            log.warning("responder: the store did not say within %g s whether token %s was published; not found",
                        LOOKUP_BOUND, token)
        except (concurrent.futures.CancelledError, RuntimeError):  # shutting down
            pass
        return None
