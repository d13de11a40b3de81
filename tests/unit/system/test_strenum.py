"""Enum members print as the words they replaced: --json, log lines and hook variables stay byte for byte."""

import json
import logging

from certrenew.cli.status import State
from certrenew.renewal.policy import Action
from certrenew.renewal.preflight import Verdict


def test_a_member_is_its_word_wherever_it_is_printed(caplog):
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("%s: %s", Action.RENEWED, Verdict.FAIL)
    assert caplog.messages == ["renewed: FAIL"]
    assert json.dumps({"state": State.SHADOWED}) == '{"state": "shadowed"}'
    assert f"{State.OK} {Action.FAILED!s}" == str(State.OK) + " failed" == "ok failed"
    assert Action.DEFERRED == "deferred" and Action("issued") is Action.ISSUED
