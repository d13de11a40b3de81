"""What every state `Backend` keeps: run against each of them (memory, files, etcd).

Each check takes `connect`, which opens another client of one fresh, empty store at each call
(for an in-memory backend, the same object). A lease's `suspend()` stops keeping it alive, as
a holder paused past its TTL (SIGSTOP) does.
"""

import datetime
import threading
import time
from collections.abc import Callable

import pytest

from certrenew.state.backend import ABSENT, Backend, Busy, Conflict, Fenced

Connect = Callable[[], Backend]
TTL = 0.5


def compare_and_put_conflicts(connect: Connect) -> None:
    backend = connect()
    first = backend.write({"certificates/a/meta.json": b"one"})
    second = backend.write({"certificates/a/meta.json": b"two"}, expect={"certificates/a/meta.json": first})
    assert second != first and backend.get("certificates/a/meta.json").version == second
    with pytest.raises(Conflict):
        backend.write({"certificates/a/meta.json": b"late"}, expect={"certificates/a/meta.json": first})
    assert backend.get("certificates/a/meta.json").value == b"two"


def absent_is_create_if_absent(connect: Connect) -> None:
    backend = connect()
    backend.write({"accounts/ca/key.pem": b"mine"}, expect={"accounts/ca/key.pem": ABSENT})
    with pytest.raises(Conflict):
        connect().write({"accounts/ca/key.pem": b"theirs"}, expect={"accounts/ca/key.pem": ABSENT})
    assert backend.get("accounts/ca/key.pem").value == b"mine"


def a_write_of_several_keys_is_all_or_nothing(connect: Connect) -> None:
    backend = connect()
    old = backend.write({"certificates/a/current.pem": b"ONE", "certificates/a/pending.pem": b"TWO"})
    with pytest.raises(Conflict):  # one expectation fails: nothing of it is written
        backend.write({"certificates/a/current.pem": b"TWO", "certificates/a/previous.pem": b"ONE",
                       "certificates/a/pending.pem": None},
                      expect={"certificates/a/pending.pem": old + 1000, "certificates/a/current.pem": old})
    assert backend.list("certificates/a/") == {key: backend.get(key) for key in
                                               ("certificates/a/current.pem", "certificates/a/pending.pem")}
    backend.write({"certificates/a/current.pem": b"TWO", "certificates/a/previous.pem": b"ONE",
                   "certificates/a/pending.pem": None})
    assert {key: entry.value for key, entry in backend.list("certificates/a/").items()} == {
        "certificates/a/current.pem": b"TWO", "certificates/a/previous.pem": b"ONE"}
    assert backend.get("certificates/a/pending.pem") is None


def list_reads_a_prefix_in_one_call(connect: Connect) -> None:
    backend = connect()
    for key in ("certificates/a/meta.json", "certificates/a/order.json", "certificates/ab/meta.json",
                "accounts/ca/key.pem"):
        backend.write({key: key.encode()})
    assert sorted(backend.list("certificates/a/")) == ["certificates/a/meta.json", "certificates/a/order.json"]
    assert sorted(backend.list("certificates/")) == ["certificates/a/meta.json", "certificates/a/order.json",
                                                     "certificates/ab/meta.json"]
    assert backend.list("certificates/a/")["certificates/a/order.json"].value == b"certificates/a/order.json"
    assert backend.list("challenges/") == {}


def a_list_with_a_suffix_reads_those_keys_alone(connect: Connect) -> None:
    backend = connect()
    backend.write({"certificates/a/meta.json": b"A", "certificates/a/current.pem": b"KEY A"})
    backend.write({"certificates/b/meta.json": b"B", "certificates/b/rejected/x-meta.json": b"X",
                   "accounts/ca/meta.json": b"CA"})
    found = connect().list("certificates/", "/meta.json")
    assert {key: entry.value for key, entry in found.items()} == {"certificates/a/meta.json": b"A",
                                                                  "certificates/b/meta.json": b"B"}
    assert all(entry == backend.get(key) for key, entry in found.items())  # their versions too
    assert connect().list("certificates/", "/order.json") == {}


def locks_name_their_holders_without_taking_them(connect: Connect) -> None:
    backend, reader = connect(), connect()
    assert reader.locks("certificates/") == {}
    with backend.lock("certificates/a", ttl=30, wait=0, holder="node-1 pid 11") as lease, \
            backend.lock("accounts/ca", ttl=30, wait=0, holder="node-1 pid 11"):
        found = reader.locks("certificates/")
        assert set(found) == {"certificates/a"}, found
        holder = found["certificates/a"]
        assert (holder.holder, holder.token) == ("node-1 pid 11", lease.token)
        assert holder.since is not None and abs(datetime.datetime.now(datetime.timezone.utc) - holder.since) \
            < datetime.timedelta(minutes=1)
        assert holder.left is not None and 0 < holder.left <= 30
        lease.check()  # still the holder's: reading took nothing
        with pytest.raises(Busy):
            with reader.lock("certificates/a", ttl=TTL, wait=0, holder="node-2 pid 22"):
                pass
        with backend.lock("certificates/b", ttl=TTL, wait=0, holder="paused") as paused:
            paused.suspend()  # its lease runs down, then it holds nothing
            deadline = time.monotonic() + 10
            while "certificates/b" in (held := reader.locks("certificates/")):
                assert held["certificates/b"].left is not None and held["certificates/b"].left <= max(TTL, 1)
                assert time.monotonic() < deadline, held
                time.sleep(0.05)
    assert reader.locks("") == {}


def a_lock_excludes_another_holder_until_released(connect: Connect) -> None:
    backend, other = connect(), connect()
    with backend.lock("certificates/a", ttl=TTL, wait=0, holder="node-1 pid 11"):
        refused: list[BaseException] = []

        def take() -> None:
            try:
                with other.lock("certificates/a", ttl=TTL, wait=0.2, holder="node-2 pid 22"):
                    pass
            except Busy as error:
                refused.append(error)
        thread = threading.Thread(target=take)
        thread.start()
        thread.join()
        assert len(refused) == 1 and "node-1 pid 11" in str(refused[0]), refused  # names who holds it
        with other.lock("certificates/b", ttl=TTL, wait=0, holder="node-2 pid 22"):
            pass  # another key is another lock
    with other.lock("certificates/a", ttl=TTL, wait=0, holder="node-2 pid 22"):
        pass


def tokens_only_grow(connect: Connect) -> None:
    backend = connect()
    tokens = []
    for _ in range(3):
        with backend.lock("certificates/a", ttl=TTL, wait=0, holder="me") as lease:
            tokens.append(lease.token)
    with connect().lock("certificates/a", ttl=TTL, wait=0, holder="another") as lease:
        tokens.append(lease.token)
    assert tokens == sorted(set(tokens)), tokens


def a_fenced_write_after_a_takeover_is_refused(connect: Connect) -> None:
    backend, successor = connect(), connect()
    key = "certificates/a/meta.json"
    with backend.lock("certificates/a", ttl=TTL, wait=0, holder="paused") as late:
        backend.write({key: b"before"}, fence=late)
        late.check()
        late.suspend()  # paused past its TTL
        with successor.lock("certificates/a", ttl=TTL, wait=TTL * 10, holder="successor") as lease:
            assert lease.token > late.token
            successor.write({key: b"successor"}, fence=lease)
            with pytest.raises(Fenced):
                backend.write({key: b"late", "certificates/a/current.pem": b"late"}, fence=late)
            with pytest.raises(Fenced):
                late.check()
    assert backend.get(key).value == b"successor" and backend.get("certificates/a/current.pem") is None


def a_lease_kept_alive_outlasts_its_ttl(connect: Connect) -> None:
    backend = connect()
    with backend.lock("certificates/a", ttl=TTL, wait=0, holder="busy") as lease:
        time.sleep(TTL * 3)  # a long order: the holder keeps its lease alive meanwhile
        lease.check()
        backend.write({"certificates/a/meta.json": b"mine"}, fence=lease)
        with pytest.raises(Busy):
            with connect().lock("certificates/a", ttl=TTL, wait=0, holder="other"):
                pass


def close_releases_the_locks_still_held(connect: Connect) -> None:
    backend = connect()
    held = backend.lock("certificates/a", ttl=30, wait=0, holder="closing")
    held.__enter__()
    backend.close()
    with connect().lock("certificates/a", ttl=TTL, wait=0, holder="next"):
        pass


def a_watch_keeps_a_copy_of_a_prefix_current(connect: Connect) -> None:
    backend, other = connect(), connect()
    backend.write({"challenges/a.json": b"A", "certificates/x/meta.json": b"X"})
    first = backend.watch("challenges/", 0, TTL)  # nothing to watch from: everything, at once
    assert first.complete and {key: entry.value for key, entry in first.entries.items()} == {"challenges/a.json": b"A"}
    copy, revision = dict(first.entries), first.revision
    other.write({"challenges/b.json": b"B"})
    other.write({"challenges/a.json": None, "certificates/x/meta.json": b"Y"})
    deadline = time.monotonic() + 10
    while {key: entry.value for key, entry in copy.items()} != {"challenges/b.json": b"B"}:
        assert time.monotonic() < deadline, copy
        changes = backend.watch("challenges/", revision, TTL)
        if changes.complete:
            copy = {}
        for key, entry in changes.entries.items():
            if entry is None:
                copy.pop(key, None)
            else:
                copy[key] = entry
        assert all(key.startswith("challenges/") for key in changes.entries)
        revision = changes.revision
    quiet = backend.watch("challenges/", revision, TTL)  # nothing changed: nothing new (or the same everything)
    assert quiet.entries == ({} if not quiet.complete else copy)


CONTRACT = [compare_and_put_conflicts, absent_is_create_if_absent, a_write_of_several_keys_is_all_or_nothing,
            list_reads_a_prefix_in_one_call, a_list_with_a_suffix_reads_those_keys_alone,
            locks_name_their_holders_without_taking_them, a_lock_excludes_another_holder_until_released, tokens_only_grow,
            a_fenced_write_after_a_takeover_is_refused, a_lease_kept_alive_outlasts_its_ttl,
            close_releases_the_locks_still_held, a_watch_keeps_a_copy_of_a_prefix_current]
