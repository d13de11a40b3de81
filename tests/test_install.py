from pathlib import Path

from certrenew.install import _undone


def test_a_rollback_says_put_back_only_where_there_was_a_previous_certificate():
    a, b = Path("/ssl/a.pem"), Path("/ssl/b.pem")
    assert _undone({a: b"old"}) == "the previous certificate was put back"
    assert _undone({a: None}) == "the new certificate was removed again (there was none before)"
    assert _undone({a: b"old", b: None}) == "the previous certificates were put back and the new b.pem removed again"
