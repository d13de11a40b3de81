"""The command line as an operator meets it: the real CLI in a subprocess, no CA needed."""

import gc
import json
import os
import select
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from certrenew.cli import commands
from certrenew.cli.commands import (
    build_bootstrap_parser,
    build_daemon_parser,
    build_parser,
    build_run_parser,
    build_status_parser,
)
from certrenew.config import DEFAULT_CONFIG
from certrenew.errors import UsageError
from certrenew.system.limits import MAX_CONFIG
from tests.harness.container import python_for_anyone
from tests.harness.unfit import COMPLAINTS, UNFIT, place

REPO = Path(__file__).resolve().parents[3]


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


@pytest.mark.parametrize("what", UNFIT)
def test_a_crt_list_that_cannot_be_read_is_a_fail_line_not_a_hang(tmp_path, what):
    """The crt-list is read in the install, under the state dir's lock: a FIFO would hang every run after."""
    crt_list = place(tmp_path / "crt.lst", what, MAX_CONFIG)
    result = certrenew("check", "--crt-list", crt_list, "--state-dir", tmp_path / "state", "--ssl-dir", tmp_path,
                       "--directory", "https://127.0.0.1:1/directory")
    assert f"FAIL crt-list {crt_list}: cannot read the crt-list {crt_list}: it is {COMPLAINTS[what]}" in result.stdout, (
        result.stdout + result.stderr)


def test_a_config_any_user_may_write_is_refused_before_its_hooks_run(tmp_path):
    """Its hooks are commands certrenew runs, with every key it holds: whoever may write it may run anything."""
    marker = tmp_path / "hook-ran"
    config = tmp_path / "certrenew.toml"
    config.write_text(f'pre_hook = "touch {marker}"\n[[certificate]]\ndomains = ["a.example"]\n')
    config.chmod(0o666)
    line = one_line(certrenew("run", "--config", config, "--state-dir", tmp_path / "state", "--directory",
                              "https://127.0.0.1:1/directory", "--no-self-check"), 2)
    assert f"cannot read config file {config}: any user may write it" in line and "chmod o-w" in line, line
    assert not marker.exists()
    config.chmod(0o644)  # writable by its owner alone: read
    assert "any user may write" not in certrenew("run", "--config", config, "--state-dir", tmp_path / "state",
                                                 "--directory", "https://127.0.0.1:1/directory").stderr
@pytest.mark.parametrize("args, meant", [
    (("renew",), "`certrenew run`"),
    (("certificates",), "`certrenew status`"),
    (("delete", "--cert-name", "example.com"), "`certrenew revoke NAME --delete`"),
    (("help",), "`certrenew --help`"),
    (("-q", "renew"), "`certrenew run`"),
])
def test_a_certbot_command_is_answered_with_certrenews(tmp_path, args, meant):
    stderr = one_line(certrenew(*args, "--state-dir", tmp_path / "state"), 2)
    assert f"is certbot's command; certrenew's is {meant}" in stderr and "invalid domain" not in stderr
    assert not (tmp_path / "state").exists()


def test_certbots_dash_d_is_answered_with_the_names_as_arguments(tmp_path):
    stderr = one_line(certrenew("--agree-tos", "-d", "example.com", "-d", "www.example.com,b.example"), 2)
    assert "not with -d: `certrenew example.com www.example.com b.example`" in stderr


@pytest.mark.parametrize("before", [("--log-format", "json"), ("--config", "CONFIG"), ("-q", "--log-format=json")])
def test_options_may_come_before_the_subcommand(tmp_path, before):
    config = tmp_path / "certrenew.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[[certificate]]\ndomains = ["a.example"]\n')
    args = [str(config) if arg == "CONFIG" else arg for arg in before]
    result = certrenew(*args, "status", *([] if "--config" in before else ["--config", config]))
    assert result.returncode == 1, result.stderr  # not healthy: never issued; but read as `status`
    assert "a.example" in result.stdout and "invalid domain" not in result.stderr


def _issued_record(state_dir, name, domains):
    import datetime

    from certrenew.state.store import CertificateRecord, FileStore

    now = datetime.datetime.now(datetime.timezone.utc)
    store = FileStore(state_dir)
    with store.lock(5):
        store.save_record(CertificateRecord(name, domains, "ecdsa-p256", "07f4", now, now + datetime.timedelta(days=90)))


def test_dropping_a_name_from_a_certificate_takes_force(tmp_path):
    (tmp_path / "ssl").mkdir()
    _issued_record(tmp_path / "state", "example.com", ["example.com", "www.example.com"])
    where = ("--state-dir", tmp_path / "state", "--ssl-dir", tmp_path / "ssl", "--directory", "https://127.0.0.1:9/dir")
    stderr = one_line(certrenew("EXAMPLE.com", *where), 2)
    assert ("certificate example.com also has www.example.com: name them all to keep them "
            "(`certrenew example.com www.example.com`), or pass --force to drop them") in stderr
    kept = certrenew("example.com", "www.example.com", *where)
    assert kept.returncode == 0 and "example.com: unchanged: not due until" in kept.stdout, kept.stderr
    forced = certrenew("example.com", "--force", "--reload-command", "true", *where)
    assert forced.returncode != 0 and "also has" not in forced.stderr  # past the guard, to the (absent) CA


def test_a_run_waiting_for_the_lock_says_at_once_who_holds_it(tmp_path):
    from certrenew.state.lock import StateLock

    (tmp_path / "ssl").mkdir()
    with StateLock(tmp_path / "state", timeout=0):
        waiting = subprocess.Popen([sys.executable, "-m", "certrenew", "a.example", "--state-dir", tmp_path / "state",
                                    "--ssl-dir", tmp_path / "ssl", "--lock-timeout", "60"],
                                   cwd=REPO, stderr=subprocess.PIPE, text=True)
        try:  # while the lock is still held: said at once, not after 60 s
            assert select.select([waiting.stderr], [], [], 20)[0], "nothing said while waiting"
            first = waiting.stderr.readline()
        finally:
            waiting.kill()
            waiting.communicate()
    assert first == (f"certrenew: another certrenew run (pid {os.getpid()}) holds the lock on {tmp_path / 'state'}; "
                     "waiting up to 60 s for it (--lock-timeout)\n")


def test_a_name_failing_again_and_again_says_how_to_drop_it(tmp_path):
    import datetime

    from certrenew.state.store import CertificateRecord, FileStore

    store, now = FileStore(tmp_path / "state"), datetime.datetime.now(datetime.timezone.utc)
    with store.lock(5):
        store.save_record(CertificateRecord("typo.example", ["typo.example"], "ecdsa-p256", last_attempt=now,
                                            last_error="NXDOMAIN", failures=7,
                                            next_attempt=now + datetime.timedelta(hours=12)))
    (tmp_path / "ssl").mkdir()
    config = tmp_path / "certrenew.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\nssl_dir = "{tmp_path / "ssl"}"\n'
                      '[[certificate]]\ndomains = ["typo.example"]\n')
    hint = "a name no longer wanted stops failing once it is out of the config and " \
           "`certrenew revoke typo.example --delete` has removed it"
    run = certrenew("run", "--config", config)
    assert run.returncode == 1 and "typo.example: deferred:" in run.stderr and hint in run.stderr, run.stderr
    status = certrenew("status", "--config", config)
    assert status.returncode == 1 and f"typo.example is failing ({hint})" in one_line(status, 1)


def test_a_systemctl_reload_that_would_fail_is_found_before_ordering(tmp_path):
    # This host's systemd does not answer (a container), or has no such unit: either way the reload would fail.
    reload = "systemctl reload certrenew-no-such-unit.service"
    (tmp_path / "ssl").mkdir()
    where = ("--state-dir", tmp_path / "state", "--ssl-dir", tmp_path / "ssl", "--reload-command", reload)
    check = certrenew("check", *where, "--directory", "https://127.0.0.1:9/dir")
    (line,) = [line for line in check.stdout.splitlines() if "reload command" in line]
    assert line.startswith(f"FAIL reload command: {reload!r} would fail: systemd ") and \
        line.endswith("(set --reload-command)"), line
    run = certrenew("a.example", *where, "--directory", "https://127.0.0.1:9/dir", "--agree-tos")
    assert run.returncode == 2 and f"error: {reload!r} would fail: systemd " in run.stderr, run.stderr
    assert "ACME directory" not in run.stderr  # refused before the CA is asked: no order to waste


def test_help_lists_every_command_and_each_command_only_the_options_it_reads():
    from certrenew.cli.commands import COMMANDS

    top = certrenew("--help")
    assert top.returncode == 0 and "certrenew COMMAND [options]" in top.stdout.split("\n\n")[0]
    for command in COMMANDS:
        assert f"\n  {command} " in top.stdout, command
    check = certrenew("check", "--help").stdout
    for meaningless in ("--force", "--metrics-file", "--key-type"):
        assert meaningless not in check
    configs = {command: " ".join(certrenew(command, "--help").stdout.split("--config FILE")[-1].split()[:8])
               for command in ("run", "status", "check", "revoke")}
    assert configs["run"].startswith("TOML config file listing the certificates (default /etc/certrenew")
    for command in ("status", "check", "revoke"):
        assert configs[command].startswith("TOML config file, read if present"), configs
    assert "read only when named" in " ".join(top.stdout.split("--config FILE")[-1].split())


@pytest.mark.parametrize("line, said", [
    ('agree-tos = true\n', "unknown key 'agree-tos': did you mean 'agree_tos'?"),
    ('haproxy_sockets = ["/run/haproxy/admin.sock"]\n', "unknown key 'haproxy_sockets': did you mean 'haproxy_socket'?"),
    ('[[certificate]]\ndomain = ["a.example"]\n', "certificate #1: unknown key 'domain': did you mean 'domains'?"),
])
def test_a_misspelt_config_key_is_answered_with_the_right_one(tmp_path, line, said):
    config = tmp_path / "certrenew.toml"
    config.write_text(line)
    stderr = one_line(certrenew("status", "--config", config), 2)
    assert said in stderr and "known:" not in stderr


def test_a_list_key_given_one_string_is_a_list_of_one(tmp_path):
    config = tmp_path / "certrenew.toml"
    config.write_text(f'state_dir = "{tmp_path}"\nhaproxy_socket = "/run/haproxy/admin.sock"\n'
                      'verify_endpoint = "127.0.0.1:443"\n[[certificate]]\ndomains = "a.example"\n')
    result = certrenew("status", "--config", config)
    assert result.returncode == 1 and "a.example is missing" in result.stderr, result.stderr  # read, not refused
    from certrenew.config import load_config

    loaded = load_config(config)
    assert loaded.settings["haproxy_socket"] == ("/run/haproxy/admin.sock",)
    assert loaded.settings["verify_endpoint"] == ("127.0.0.1:443",) and loaded.certificates[0].domains == ("a.example",)



@pytest.mark.parametrize("args", [("status", "--json"), ("status",)])
def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path, args):
    _issued_record(tmp_path, "example.com", ["example.com"])
    env = {key: value for key, value in os.environ.items() if not key.startswith("CERTRENEW_")}
    process = subprocess.Popen([sys.executable, "-m", "certrenew", *args, "--state-dir", tmp_path], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    process.stdout.close()  # `| head -1` done before certrenew writes: its writes find no reader
    stderr = process.communicate(timeout=60)[1].decode()
    assert "Broken pipe" not in stderr and "Traceback" not in stderr, stderr
    assert process.returncode == 141  # as a tool killed by SIGPIPE: the shell's 128 + 13


def test_an_ssl_dir_not_writable_names_its_owner_and_the_fix(site_for_anyone):
    import tempfile

    with tempfile.TemporaryDirectory(dir="/tmp") as top:  # not under pytest's, closed to other users
        _ssl_dir_not_writable(Path(top), site_for_anyone)


def _ssl_dir_not_writable(tmp_path, site):
    tmp_path.chmod(0o755)
    ssl = tmp_path / "ssl"
    ssl.mkdir(mode=0o755)
    (ssl / "placeholder.pem").write_text("")
    # As root, run as nobody (root writes anywhere); else a directory closed to this user.
    as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    if not as_user:
        ssl.chmod(0o555)
    user = "nobody" if as_user else __import__("pwd").getpwuid(os.geteuid()).pw_name
    env = {key: value for key, value in os.environ.items() if not key.startswith("CERTRENEW_")}
    # nobody may not enter the checkout, nor run its virtualenv's interpreter (a clone under root's home).
    python = str(python_for_anyone()) if as_user else sys.executable
    if as_user:
        env["PYTHONPATH"] = str(site)
    fix = f"not writable by user {user} (it is "
    for args in (("a.example",), ("check",)):
        result = subprocess.run([*as_user, python, "-m", "certrenew", *args, "--ssl-dir", ssl, "--state-dir",
                                 tmp_path / "state", "--directory", "https://127.0.0.1:9/dir"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
        said = result.stderr if args == ("a.example",) else result.stdout
        assert fix in said and f"`chown {user} {ssl}`" in said and "chmod g+w" in said, said


def test_a_socket_check_names_the_socket_once(tmp_path):
    missing = tmp_path / "no-such.sock"
    result = certrenew("check", "--haproxy-socket", missing, "--state-dir", tmp_path, "--ssl-dir", tmp_path,
                       "--directory", "https://127.0.0.1:9/dir", "--reload-command", "true")
    (line,) = [line for line in result.stdout.splitlines() if str(missing) in line]
    assert line.startswith(f"FAIL HAProxy socket {missing}: No such file") and line.count(str(missing)) == 1, line


def test_verbose_shows_the_cause_under_the_error_line(tmp_path):
    (tmp_path / "ssl").mkdir()
    key = tmp_path / "missing.key"
    args = ("a.example", "--challenge", "dns-01", "--dns-server", "127.0.0.1", "--tsig-key", key,
            "--state-dir", tmp_path / "state", "--ssl-dir", tmp_path / "ssl", "--agree-tos")
    line = one_line(certrenew(*args), 2)
    assert line == f"certrenew: error: TSIG key file {key}: cannot read it: No such file or directory\n"
    verbose = certrenew(*args, "-v")
    assert verbose.returncode == 2 and verbose.stderr.endswith(
        line + f"certrenew:   caused by FileNotFoundError: [Errno 2] No such file or directory: '{key}'\n"), verbose.stderr


def test_verbose_shows_what_a_certificate_failed_on_underneath(tmp_path):
    (tmp_path / "ssl").mkdir()
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        listen = f"127.0.0.1:{free.getsockname()[1]}"
    outputs = []
    for verbose in ((), ("-v",)):
        state = tmp_path / f"state{len(outputs)}"  # each its first attempt: no back-off from the other
        result = certrenew("a.example", "--directory", "https://127.0.0.1:9/dir", "--state-dir", state, "--ssl-dir",
                           tmp_path / "ssl", "--agree-tos", "--reload-command", "true", "--listen", listen, *verbose)
        assert result.returncode == 1 and "a.example: failed: cannot reach the ACME directory" in result.stderr
        outputs.append(result.stderr)
    assert "caused by" not in outputs[0]
    assert "a.example: caused by ConnectionRefusedError: [Errno 111] Connection refused\n" in outputs[1], outputs[1]


def test_the_command_exits_with_main_s_status_its_objects_frozen_for_the_last_collections(monkeypatch):
    """The console script's `console` leaves nothing for the interpreter's final collections to walk."""
    monkeypatch.setattr(commands, "main", lambda: 3)
    try:
        with pytest.raises(SystemExit) as exited:
            commands.console()
        assert exited.value.code == 3 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_python_m_certrenew_and_the_console_script_both_go_through_console():
    root = Path(commands.__file__).parents[2]
    assert (root / "certrenew" / "__main__.py").read_text().strip().endswith("console()")
    assert 'certrenew = "certrenew.cli.commands:console"' in (root / "pyproject.toml").read_text()

