"""The no-op runs' schedule: taken only for a certificate whose directory and record have not changed since, and settled."""

import json
import os
import time

import pytest

from certrenew.state import schedule as schedule_module
from certrenew.state.files import FileBackend
from certrenew.state.schedule import SCHEDULE, SETTLE_NS, Schedule
from certrenew.state.store import FileStore

SETTINGS = [None, ["https://ca.example/directory"]]
LATER = time.time() + 3600
SAID = "not due until 2027-01-01 00:00 UTC (expires 2027-03-01)"
INPUTS = "ecdsa-p256 a.example"


def settle(store: FileStore, name: str) -> None:
    """Make certificate `name`'s directory and record look unchanged for a minute, as between two timer runs."""
    directory = store.root / "certificates" / name
    old = time.time_ns() - 60 * 10**9
    os.utime(directory / "meta.json", ns=(old, old))
    os.utime(directory, ns=(old, old))


@pytest.fixture
def store(tmp_path):
    store = FileStore(tmp_path / "state")
    with store.run_lock(0):  # makes the layout
        pass
    store.backend.write({"certificates/a/meta.json": b"{}"})
    settle(store, "a")
    return store


def kept(store: FileStore, settings=SETTINGS) -> Schedule:
    """A schedule that keeps certificate a, saved, and read back as the next run reads it."""
    schedule = store.schedule(settings)
    token = schedule.token("a")
    assert token is not None
    schedule.keep("a", token, INPUTS, LATER, SAID)
    schedule.save(time.time())
    return store.schedule(settings)


def test_what_was_kept_holds_for_the_next_run(store):
    schedule = kept(store)
    assert schedule.unchanged("a", schedule.token("a"), INPUTS, time.time()) == SAID
    assert schedule.token("never-issued") is None


@pytest.mark.parametrize("change", ["record", "new file", "removed file", "record edited in place"])
def test_any_change_of_the_certificate_s_state_takes_its_token_away_until_it_settles(store, change, monkeypatch):
    store.backend.write({"certificates/a/current.pem": b"bundle"})
    settle(store, "a")
    before = store.schedule(SETTINGS).token("a")
    assert before is not None
    if change == "record":
        store.backend.write({"certificates/a/meta.json": b'{"other": 1}'})
    elif change == "new file":
        store.backend.write({"certificates/a/order.json": b"{}"})
    elif change == "removed file":
        store.backend.write({"certificates/a/current.pem": None})
    else:  # by hand, as `echo ... > meta.json` does: the directory is left as it was
        with open(store.root / "certificates" / "a" / "meta.json", "r+b") as record:
            record.write(b"[]")
        assert os.stat(store.root / "certificates" / "a").st_mtime_ns < time.time_ns() - SETTLE_NS
    assert store.schedule(SETTINGS).token("a") is None
    monkeypatch.setattr(schedule_module, "SETTLE_NS", 0)  # once settled, the change itself has made its version another
    assert store.schedule(SETTINGS).token("a") not in (None, before)


@pytest.mark.parametrize("what", ["token", "inputs", "time", "settings"])
def test_nothing_is_taken_that_was_made_of_something_else(store, what):
    schedule = kept(store, SETTINGS)
    token, inputs, now = schedule.token("a"), INPUTS, time.time()
    if what == "token":
        token = [*token[:-1], token[-1] + 1]  # the record's size
    elif what == "inputs":
        inputs = "ecdsa-p256 a.example www.a.example"
    elif what == "time":
        now = LATER
    else:
        schedule = store.schedule([3600.0, SETTINGS[1]])
    assert schedule.unchanged("a", token, inputs, now) is None


@pytest.mark.parametrize("content", [b"{not json", b'{"format": 1, "settings": [], "certificates": []}',
                                     b'{"format": 1, "settings": %s, "certificates": {"a": [1, 2]}}'
                                     % json.dumps(SETTINGS).encode(), b"[]"])
def test_a_corrupt_schedule_is_ignored_and_replaced(store, content):
    path = store.root / SCHEDULE
    path.write_bytes(content)
    path.chmod(0o600)
    schedule = store.schedule(SETTINGS)
    token = schedule.token("a")
    assert schedule.unchanged("a", token, INPUTS, time.time()) is None
    schedule.keep("a", token, INPUTS, LATER, SAID)
    schedule.save(time.time())
    assert store.schedule(SETTINGS).unchanged("a", token, INPUTS, time.time()) == SAID


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_a_schedule_another_user_wrote_is_not_trusted(store):
    kept(store)
    path = store.root / SCHEDULE
    os.chown(path, 65534, 65534)
    schedule = store.schedule(SETTINGS)
    assert schedule.unchanged("a", schedule.token("a"), INPUTS, time.time()) is None


def test_an_unchanged_schedule_is_not_rewritten_and_entries_whose_time_has_come_go_at_the_next_change(store):
    kept(store)
    path = store.root / SCHEDULE
    written = path.stat().st_ino
    store.schedule(SETTINGS).save(LATER)
    assert path.stat().st_ino == written  # nothing changed: not written again
    schedule = store.schedule(SETTINGS)
    schedule.keep("b", [1, 2, 3, 4, 5], INPUTS, LATER + 3600, SAID)
    schedule.save(LATER)
    assert list(json.loads(path.read_bytes())["certificates"]) == ["b"]


def test_the_schedule_is_no_state_key(store):
    kept(store)
    assert (store.root / SCHEDULE).exists()
    assert SCHEDULE not in store.backend.list("")  # `migrate-state` copies no cache to another store
    with pytest.raises(ValueError, match="reserved"):
        FileBackend(store.root).get(SCHEDULE)
