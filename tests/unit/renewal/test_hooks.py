"""Running an operator's hook: no shell, stdin closed, bounded in time and output, one line when it fails."""

import datetime
import logging
import os
import time
from pathlib import Path

import pytest

from certrenew.errors import UsageError
from certrenew.renewal import hooks
from certrenew.system.command import OUTPUT_LINES


def script(tmp_path: Path, body: str, name: str = "hook.sh") -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_a_succeeding_hook_gets_its_environment_without_a_shell_and_with_stdin_closed(tmp_path):
    out = tmp_path / "out"
    # The argument's '$HOME; echo' reaches the script untouched: no shell interpreted it.
    program = script(tmp_path, 'echo "$1|$EXTRA" > "$2"; cat >> "$2"')
    command = f"{program} '$HOME; echo' {out}"
    assert hooks.run_hook("pre-hook", command, 10, {"EXTRA": "yes"}) is None
    assert out.read_text() == "$HOME; echo|yes\n"  # and `cat` read an empty stdin at once


def test_a_failing_hook_is_one_line_with_its_status_and_last_words(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    command = script(tmp_path, "echo starting; echo 'disk full' >&2; exit 3")
    failure = hooks.run_hook("deploy hook for alpha", command, 10)
    assert failure == f"deploy hook for alpha {command!r} exited with status 3: disk full"
    assert "deploy hook for alpha: starting" in caplog.text  # its output is logged
    assert failure in caplog.text


def test_a_hanging_hook_and_what_it_started_are_killed_at_the_timeout(tmp_path):
    pid_file = tmp_path / "child.pid"
    command = script(tmp_path, f"sleep 300 & echo $! > {pid_file}; wait")
    started = time.monotonic()
    failure = hooks.run_hook("post-hook", command, 1)
    assert time.monotonic() - started < 10
    assert failure == f"post-hook {command!r} did not finish within 1 s and was killed"
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)  # the background sleep went with the process group


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_a_chatty_hook_keeps_only_the_end_of_its_output(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    command = script(tmp_path, "yes line | head -c 10000000; echo last words; exit 1")
    failure = hooks.run_hook("pre-hook", command, 30)
    assert failure.endswith(": last words")
    assert caplog.text.count("pre-hook: line") == OUTPUT_LINES - 1


def test_a_hook_that_vanished_after_the_check_fails_in_one_line(tmp_path):
    failure = hooks.run_hook("pre-hook", str(tmp_path / "gone.sh"), 10)
    assert failure == f"pre-hook {str(tmp_path / 'gone.sh')!r} could not start: No such file or directory: " \
                      f"{tmp_path / 'gone.sh'}"


def test_a_missing_or_not_executable_program_is_a_usage_error(tmp_path):
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\n")
    with pytest.raises(UsageError, match=r"the deploy hook's program '.*/plain.sh' is not found on PATH or not "
                                         r"executable \(set --deploy-hook\)"):
        hooks.check_executable("deploy hook", f"{plain} --flag")
    with pytest.raises(UsageError, match="the pre-hook's program 'no-such-program-here' is not found"):
        hooks.check_executable("pre-hook", "no-such-program-here")
    hooks.check_executable("post-hook", "true")
    hooks.check_executable("post-hook", None)


def test_a_program_that_is_no_regular_file_is_a_usage_error(tmp_path):
    """which() finds an executable FIFO; running it would fail at every run (or block if read)."""
    fifo = tmp_path / "hook"
    os.mkfifo(fifo, 0o755)
    with pytest.raises(UsageError, match=rf"the deploy hook's program {fifo} is a named pipe \(FIFO\), not a program"):
        hooks.check_executable("deploy hook", str(fifo))


def test_the_deploy_hook_runs_once_per_certificate_with_its_facts(tmp_path):
    log = tmp_path / "log"
    command = script(tmp_path, f'echo "$CERTRENEW_NAME|$CERTRENEW_DOMAINS|$CERTRENEW_BUNDLE|$CERTRENEW_SERIAL|'
                               f'$CERTRENEW_NOT_AFTER|$CERTRENEW_ACTION" >> {log}; [ "$CERTRENEW_NAME" != b ]')
    expiry = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    installed = [hooks.Served("a", "issued", ("a.example", "www.a.example"), tmp_path / "a.pem", "1f", expiry),
                 hooks.Served("b", "renewed", ("b.example",), tmp_path / "b.pem", "2e", expiry)]
    failures = hooks.run_deploy(command, installed, 10)
    assert log.read_text().splitlines() == [
        f"a|a.example www.a.example|{tmp_path / 'a.pem'}|1f|2030-01-02T03:04:05+00:00|issued",
        f"b|b.example|{tmp_path / 'b.pem'}|2e|2030-01-02T03:04:05+00:00|renewed"]
    assert failures == [f"deploy hook for b {command!r} exited with status 1"]
    assert hooks.run_deploy(None, installed, 10) == []
