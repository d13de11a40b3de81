"""The daemon's copy of the published HTTP-01 answers (certrenew.state.board), over a memory backend."""

import time

from certrenew.state.board import Board
from certrenew.state.memory import MemoryBackend
from certrenew.state.store import Store


def test_a_token_in_the_copy_is_answered_without_asking_the_store_and_one_it_lacks_is_looked_up():
    backend = MemoryBackend()
    ordering, node = Store(backend), Store(backend)
    with Board(node) as board:
        ordering.publish_challenge("tok", "a.example", "tok.thumb")
        deadline = time.monotonic() + 10
        while "challenges/tok.json" not in board._entries:  # the watch brings it
            assert time.monotonic() < deadline
            time.sleep(0.01)
        asked = []
        backend.get = lambda key: asked.append(key)  # type: ignore[method-assign]
        assert board.find_challenge("tok") == ("a.example", "tok.thumb") and asked == []
        assert board.find_challenge("other") is None and asked == ["challenges/other.json"]  # not in the copy
        ordering.withdraw_challenge("tok")
        while "challenges/tok.json" in board._entries:
            assert time.monotonic() < deadline
            time.sleep(0.01)
