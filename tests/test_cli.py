"""The command line as an operator meets it: the real CLI in a subprocess, no CA needed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from unfit import COMPLAINTS, UNFIT, place

from certrenew.cli import (
    build_bootstrap_parser,
    build_daemon_parser,
    build_parser,
    build_run_parser,
    build_status_parser,
)
from certrenew.config import DEFAULT_CONFIG
from certrenew.errors import UsageError
from certrenew.limits import MAX_CONFIG

REPO = Path(__file__).resolve().parents[1]


def certrenew(*args, **env):
    environ = {key: value for key, value in os.environ.items() if not key.startswith("CERTRENEW_")}
    result = subprocess.run([sys.executable, "-m", "certrenew", *map(str, args)], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env={**environ, **env})
    return result


def one_line(result, code):
    assert result.returncode == code, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


@pytest.mark.parametrize("build", [build_parser, build_run_parser, build_status_parser, build_bootstrap_parser,
                                   build_daemon_parser])
def test_no_parser_takes_an_abbreviated_option(build):
    with pytest.raises(UsageError, match="unrecognized arguments: --conf"):
        build().parse_args(["--conf", "x.toml", *(["a.example"] if build is build_parser else [])])


def test_an_abbreviated_option_is_refused_on_the_command_line(tmp_path):
    stderr = one_line(certrenew("--agree-to", "--state-dir", tmp_path, "a.example"), 2)
    assert "unrecognized arguments: --agree-to" in stderr


def test_every_flag_has_a_no_form():
    args = build_parser().parse_args(["--no-agree-tos", "--staging", "--no-force", "--no-verbose", "-q", "a.example"])
    assert (args.agree_tos, args.staging, args.force, args.verbose, args.quiet) == (False, True, False, False, True)
    assert build_parser().parse_args(["a.example"]).staging is None  # not given: the environment or file decide


@pytest.mark.parametrize("typo, meant", [("stauts", "status"), ("rnu", "run"), ("bootstrap-ssl", "bootstrap-ssl-dir")])
def test_a_lone_name_close_to_a_command_is_taken_for_a_typo(tmp_path, typo, meant):
    stderr = one_line(certrenew(typo, "--state-dir", tmp_path / "state"), 2)
    assert f"did you mean `certrenew {meant}`?" in stderr
    assert not (tmp_path / "state").exists()  # refused before anything was touched


def test_a_single_label_name_is_refused(tmp_path):
    stderr = one_line(certrenew("localhost", "--state-dir", tmp_path / "state"), 2)
    assert "invalid domain 'localhost': a single-label name" in stderr
    assert not (tmp_path / "state").exists()


def test_a_missing_ssl_dir_is_bad_input_naming_bootstrap(tmp_path):
    stderr = one_line(certrenew("a.example", "--state-dir", tmp_path / "state", "--ssl-dir", tmp_path / "ssl"), 2)
    assert f"the ssl dir {tmp_path / 'ssl'} does not exist: create it with `certrenew bootstrap-ssl-dir" in stderr
    assert not (tmp_path / "state").exists()  # refused before the lock, which would create it


@pytest.mark.parametrize("ssl_dir, said", [("/proc/certrenew-nope", "cannot create the ssl dir /proc/certrenew-nope: "
                                                                   "No such file or directory (--ssl-dir)"),
                                           ("file", "is not a directory (--ssl-dir)")])
def test_bootstrap_into_a_dir_that_cannot_be_is_bad_input(tmp_path, ssl_dir, said):
    (tmp_path / "file").write_text("")
    stderr = one_line(certrenew("bootstrap-ssl-dir", "--ssl-dir", tmp_path / ssl_dir), 2)
    assert said in stderr


@pytest.mark.parametrize("option, said", [("--profile", "invalid --profile: '' is not a profile name"),
                                          ("--haproxy-socket", "invalid --haproxy-socket: : give an absolute unix")])
def test_an_empty_value_is_refused(tmp_path, option, said):
    stderr = one_line(certrenew("a.example", "--state-dir", tmp_path / "state", option, ""), 2)
    assert said in stderr
    assert not (tmp_path / "state").exists()


def test_staging_and_another_directory_are_refused_together(tmp_path):
    stderr = one_line(certrenew("a.example", "--state-dir", tmp_path / "state", "--staging",
                                "--directory", "https://127.0.0.1:9/dir"), 2)
    assert "--staging and --directory (https://127.0.0.1:9/dir) both name a CA; pass one" in stderr


@pytest.mark.parametrize("where, said", [("missing/certrenew.prom", "directory {} does not exist"),
                                         ("", "metrics file {} is a directory")])
def test_a_metrics_file_that_cannot_be_written_is_refused_before_the_run(tmp_path, where, said):
    (tmp_path / "ssl").mkdir()
    path = tmp_path / where
    stderr = one_line(certrenew("a.example", "--state-dir", tmp_path / "state", "--ssl-dir", tmp_path / "ssl",
                                "--directory", "https://127.0.0.1:9/dir", "--metrics-file", path), 2)
    assert said.format(path.parent if where else path) in stderr
    assert not (tmp_path / "state").exists()


def test_check_says_in_words_why_the_acme_directory_cannot_be_read(tmp_path):
    result = certrenew("check", "--state-dir", tmp_path / "state", "--ssl-dir", tmp_path,
                       "--directory", "https://127.0.0.1:9/dir")
    [line] = [line for line in result.stdout.splitlines() if "ACME directory" in line]
    assert line == "FAIL ACME directory https://127.0.0.1:9/dir: cannot read it: connection failed (is the CA reachable?)"


def test_a_state_dir_that_cannot_be_created_says_so(tmp_path):
    (tmp_path / "file").write_text("")
    stderr = one_line(certrenew("a.example", "--state-dir", tmp_path / "file" / "state", "--ssl-dir", tmp_path), 1)
    assert f"cannot create the state dir {tmp_path / 'file' / 'state'}: Not a directory" in stderr


@pytest.mark.parametrize("value, traceback", [("no", False), ("0", False), ("Off", False), ("yes", True),
                                              ("TRUE", True)])
def test_verbose_variable_is_a_boolean(tmp_path, value, traceback):
    """-v shows a traceback under the error line: the way to see whether verbose is on."""
    result = certrenew("a.example", "--state-dir", tmp_path / "state", "--ssl-dir", tmp_path / "ssl",
                       CERTRENEW_VERBOSE=value)
    assert result.returncode == 2
    assert ("Traceback" in result.stderr) is traceback, result.stderr


def test_no_verbose_overrides_the_variable_and_a_bad_value_is_refused(tmp_path):
    args = ("a.example", "--state-dir", tmp_path / "state", "--ssl-dir", tmp_path / "ssl")
    one_line(certrenew(*args, "--no-verbose", CERTRENEW_VERBOSE="1"), 2)
    stderr = one_line(certrenew(*args, CERTRENEW_VERBOSE="maybe"), 2)
    assert "invalid CERTRENEW_VERBOSE: expected 1/true/yes/on or 0/false/no/off, not 'maybe'" in stderr


def test_status_with_no_config_and_no_state_dir_is_not_healthy(tmp_path):
    if DEFAULT_CONFIG.exists():
        pytest.skip(f"{DEFAULT_CONFIG} exists on this machine")
    result = certrenew("status", "--json", "--state-dir", tmp_path / "state")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["healthy"] is False and document["certificates"] == []
    assert document["reason"] == (f"no certificate is managed (no state dir {tmp_path / 'state'}): "
                                  "check --config and --state-dir")
    text = certrenew("status", "--state-dir", tmp_path / "state")
    assert text.stdout == "" and one_line(text, 1).startswith("certrenew: not healthy: no certificate is managed")


def test_status_with_a_config_that_manages_nothing_is_not_healthy(tmp_path):
    config = tmp_path / "certrenew.toml"
    config.write_text(f'state_dir = "{tmp_path}"\n')
    result = certrenew("status", "--json", "--config", config)
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert (document["healthy"], document["reason"]) == (False, "no certificate is managed: check --config and "
                                                                "--state-dir")


def test_the_daemon_refuses_bad_settings_before_it_starts(tmp_path):
    config = tmp_path / "certrenew.toml"
    config.write_text('check_interval = "0s"\n[[certificate]]\ndomains = ["a.example"]\n')
    assert "check_interval: 0s is not between 1s and 1d" in one_line(certrenew("daemon", "--config", config), 2)
    config.write_text('[[certificate]]\ndomains = ["a.example"]\n')
    stderr = one_line(certrenew("daemon", "--config", config, CERTRENEW_FORCE="1"), 2)
    assert "the daemon does not take CERTRENEW_FORCE" in stderr
    assert "unrecognized arguments: --force" in one_line(certrenew("daemon", "--config", config, "--force"), 2)
    assert "unrecognized arguments: --check-interval" in one_line(certrenew("run", "--check-interval", "1h"), 2)


def test_errors_are_json_too_with_log_format_json(tmp_path):
    result = certrenew("run", "--config", tmp_path / "missing.toml", "--log-format", "json")
    assert result.returncode == 2
    (line,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert line["level"] == "error" and line["message"].startswith("error: cannot read config file")
    assert "invalid CERTRENEW_LOG_FORMAT: 'xml'" in one_line(certrenew("status", CERTRENEW_LOG_FORMAT="xml"), 2)


@pytest.mark.parametrize("args, env, complaint", [
    ((), {"CERTRENEW_LOG_FORMAT": "json"}, "the following arguments are required: DOMAIN"),
    (("run", "--log-format", "json", "--no-such-option"), {}, "unrecognized arguments: --no-such-option"),
    (("a.example", "--log-format=json", "--concurrency"), {"CERTRENEW_LOG_FORMAT": "text"}, "expected one argument"),
    (("status", "--log-format", "json", "--renew-before"), {}, "expected one argument"),
])
def test_usage_errors_follow_the_log_format_too(args, env, complaint):
    result = certrenew(*args, **env)
    assert result.returncode == 2, result.stderr
    (line,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert line["level"] == "error" and complaint in line["message"], line


def test_a_usage_error_is_text_when_the_flag_says_so_or_says_nothing_usable():
    assert "certrenew: error: the following arguments are required" in one_line(certrenew(), 2)
    text = one_line(certrenew("a.example", "--log-format", "text", "--bogus", CERTRENEW_LOG_FORMAT="json"), 2)
    assert text.startswith("certrenew: error: unrecognized arguments: --bogus")
    assert "invalid choice: 'xml'" in one_line(certrenew("a.example", "--log-format", "xml"), 2)


@pytest.mark.parametrize("what", [*UNFIT, "deep"])
def test_a_config_that_cannot_be_read_is_one_line_exit_2(tmp_path, what):
    config = tmp_path / "certrenew.toml"
    if what == "deep":  # past tomli's nesting limit: it raises RecursionError
        config.write_text("x = " + "[" * 500 + "]" * 500 + "\n")
    else:
        place(config, what, MAX_CONFIG)
    line = one_line(certrenew("run", "--config", config, "--state-dir", tmp_path / "state"), 2)
    assert str(config) in line
    assert (COMPLAINTS.get(what) or "nested more than") in line, line
