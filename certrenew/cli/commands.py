"""The `certrenew` command: a thin shell over `certrenew.renewal.renew.run`.

Settings come from the command line, then `CERTRENEW_<OPTION>` environment variables,
then the config file (see `certrenew.config`).
"""

import argparse
import datetime
import gc
import json
import logging
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import NoReturn, TextIO

from certrenew.config import (
    DEFAULT_CONFIG,
    OPTIONS,
    STORE_OPTIONS,
    CertificateSpec,
    ConfigFile,
    Settings,
    build_settings,
    certificate_specs,
    env_flag,
    load_config,
)
from certrenew.errors import CertrenewError, Interrupted, StoreUnreachable, UsageError, causes
from certrenew.renewal.policy import Action
from certrenew.state.store import Store, open_store
from certrenew.system import signals
from certrenew.system.limits import raise_open_files_limit
from certrenew.system.runcontext import RunContext
from certrenew.version import __version__

log = logging.getLogger("certrenew")

EPILOG = ("Every option also reads CERTRENEW_<OPTION> from the environment, e.g. CERTRENEW_STATE_DIR; "
          "each --flag has a --no-flag form to override a true one from there or the config file. Exit status: 0 done or nothing to do, 1 the run failed, 2 bad usage or input.")


DAEMON_ONLY = ("metrics_listen", "check_interval", "reconcile_interval")
ONE_SHOT_OPTIONS = tuple(option for option in OPTIONS if option.name not in DAEMON_ONLY)
"""The options of `run` and the single-domain form: all but the daemon's."""
DAEMON_OPTIONS = tuple(option for option in OPTIONS if option.name not in ("force", "metrics_file"))
"""The daemon's: no --force (it would renew on every pass), and its metrics are served, not written."""
NO_RENEWAL_OPTIONS = tuple(option for option in ONE_SHOT_OPTIONS
                      if option.name not in ("force", "metrics_file", "concurrency", "renew_before", "key_type"))
"""Those of check and revoke, which decide no renewal: none that only the renewal reads."""
CONFIG_REQUIRED = f"TOML config file listing the certificates (default {DEFAULT_CONFIG})"
CONFIG_NAMED = "TOML config file of settings, read only when named here or by CERTRENEW_CONFIG"
CONFIG_IF_PRESENT = f"TOML config file, read if present (default {DEFAULT_CONFIG})"
COMMAND_USAGE = """certrenew [options] DOMAIN [DOMAIN ...]
       certrenew COMMAND [options] ...   (certrenew COMMAND --help lists its options)"""
COMMAND_SUMMARIES = MappingProxyType({
    "run": "renew every certificate of the config file that is due",
    "daemon": "keep them valid from a long-running process",
    "status": "show every certificate; exit 1 when one is not healthy",
    "check": "run every pre-flight check without ordering",
    "revoke": "revoke a certificate at the CA (and --reissue or --delete it)",
    "bootstrap-ssl-dir": "write a placeholder so HAProxy can start",
    "import-certbot": "take over certbot's certificates without reissuing them",
    "haproxy-config": "print the lines that make HAProxy answer HTTP-01 by itself",
    "migrate-state": "move a node's state into an etcd store (or back) without reissuing",
})
LOG_FORMATS = ("text", "json")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def _parser(prog: str, description: str, options=ONE_SHOT_OPTIONS, config: str = CONFIG_IF_PRESENT,
            **details) -> argparse.ArgumentParser:
    """A command's parser: `options` of the shared ones, `config` the help of its --config."""
    # No abbreviations: a mistyped --agree-to must not pass for --agree-tos.
    parser = _Parser(prog=prog, description=description, epilog=EPILOG, allow_abbrev=False, **details)
    for option in options:
        if option.kind is bool:
            parser.add_argument(option.cli, action=argparse.BooleanOptionalAction, help=option.help)
        else:
            parser.add_argument(option.cli, metavar=option.metavar, help=option.help,
                                action="append" if option.repeated else "store")
    parser.add_argument("--config", type=Path, metavar="FILE", help=config)
    parser.add_argument("-v", "--verbose", action=argparse.BooleanOptionalAction, help="log every step (and tracebacks)")
    parser.add_argument("-q", "--quiet", action=argparse.BooleanOptionalAction, help="print only errors")
    parser.add_argument("--log-format", choices=LOG_FORMATS,
                        help="text (default) or json: one JSON object per log line, for log shippers")
    parser.add_argument("--version", action="version", version=f"certrenew {__version__}")
    return parser


def build_parser() -> argparse.ArgumentParser:
    commands = "\n".join(f"  {command:<19}{summary}" for command, summary in COMMAND_SUMMARIES.items())
    parser = _parser(
        "certrenew",
        "Obtain or renew a certificate for DOMAINs over ACME (HTTP-01 behind HAProxy, or DNS-01) and make "
        f"HAProxy serve it.\n\ncommands:\n{commands}",
        config=CONFIG_NAMED, usage=COMMAND_USAGE, formatter_class=_ListsAsWritten,
    )
    parser.add_argument("domains", nargs="+", metavar="DOMAIN", help="names for the certificate; the first names it")
    return parser


class _ListsAsWritten(argparse.HelpFormatter):
    """Paragraphs wrapped as usual, but a list (a paragraph of several lines: the commands) kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text
        return "\n\n".join(paragraph if "\n" in paragraph else fill(paragraph, width, indent)
                           for paragraph in text.split("\n\n"))


def build_run_parser() -> argparse.ArgumentParser:
    return _parser("certrenew run", "Renew every certificate of the config file that is due.", config=CONFIG_REQUIRED)


def build_daemon_parser() -> argparse.ArgumentParser:
    return _parser(
        "certrenew daemon",
        "Keep every certificate of the config file valid from a long-running process: a pass when one falls "
        "due (at the latest every --check-interval), the HTTP-01 responder up all along. SIGHUP re-reads the "
        "config; SIGTERM or SIGINT stop it (exit 0).",
        DAEMON_OPTIONS, CONFIG_REQUIRED,
    )


def build_status_parser() -> argparse.ArgumentParser:
    parser = _parser(
        "certrenew status",
        "Show every certificate: names, expiry, next renewal, last result. Exit 1 when any managed "
        "certificate is expired, failing, missing or past its renewal time.",
        [option for option in OPTIONS if option.name in (*STORE_OPTIONS, "renew_before")],
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output (its fields: docs/commands.md)")
    return parser


def build_check_parser() -> argparse.ArgumentParser:
    parser = _parser(
        "certrenew check",
        "Run every pre-flight check without ordering: config, state and ssl dirs, HAProxy's admin socket, "
        "haproxy -c, the reload command, the ACME directory, and a probe through HAProxy for every name "
        "(those of the config file, and the DOMAINs given, as the single-domain form takes them). "
        "One line per check, and one for what could not be checked; exit 1 if any failed.",
        NO_RENEWAL_OPTIONS,
    )
    parser.add_argument("domains", nargs="*", metavar="DOMAIN", help="names to probe, as `certrenew DOMAIN...` "
                        "would order them")
    return parser


def build_bootstrap_parser() -> argparse.ArgumentParser:
    return _parser(
        "certrenew bootstrap-ssl-dir",
        "Write a self-signed placeholder into the ssl dir so HAProxy can start before any real certificate "
        "exists (HAProxy refuses an empty crt directory).",
        [option for option in OPTIONS if option.name == "ssl_dir"], CONFIG_NAMED,
    )


def build_revoke_parser() -> argparse.ArgumentParser:
    from certrenew.cli.revoke import REASONS

    parser = _parser(
        "certrenew revoke",
        "Revoke the current certificate of NAME at the CA (the configured directory), after asking on a "
        "terminal. It stays served unless --reissue serves a new one first, or --delete removes it.",
        NO_RENEWAL_OPTIONS,
    )
    parser.add_argument("name", metavar="NAME", help="the certificate's name, as certrenew status lists it")
    parser.add_argument("--reason", default="unspecified", metavar="REASON",
                        help=f"{' | '.join(REASONS)} (default unspecified)")
    parser.add_argument("--yes", action="store_true", help="do not ask (required when stdin is not a terminal)")
    then = parser.add_mutually_exclusive_group()
    then.add_argument("--reissue", action="store_true",
                      help="first order and serve a new certificate with a fresh key (NAME as in the config)")
    then.add_argument("--delete", action="store_true",
                      help="then remove it from every HAProxy, the ssl dir and the state dir (kept under removed/)")
    return parser


def build_haproxy_config_parser() -> argparse.ArgumentParser:
    parser = _parser(
        "certrenew haproxy-config",
        "Print the HAProxy lines that answer HTTP-01 challenges without certrenew's responder, from the key "
        "thumbprint of the configured CA's account in the state dir (--http-01-mode stateless): the same lines "
        "on every node of a fleet.",
        [option for option in OPTIONS if option.name in ("directory", "staging", *STORE_OPTIONS, "lock_timeout")],
    )
    parser.add_argument("--map", metavar="FILE", help="read the thumbprint from this HAProxy map file instead of "
                        "an environment variable, so the Runtime API's `set map` changes it without a reload")
    parser.add_argument("--create-account", action="store_true", help="make the account's key in the state dir "
                        "if there is none (the CA registers it at the first order)")
    return parser


def build_migrate_parser() -> argparse.ArgumentParser:
    parser = _parser(
        "certrenew migrate-state",
        "Copy every certificate, key, record, account and order of one store to another, a state dir into a "
        "fleet's etcd store or back, without reissuing anything; the source is left as it was. Refuses a "
        "destination that holds state already, unless --overwrite.",
        [option for option in OPTIONS if option.name in STORE_OPTIONS and option.name not in ("state_dir", "store")
         or option.name == "lock_timeout"], CONFIG_NAMED,
    )
    parser.add_argument("--from", dest="source", required=True, metavar="DIR|URL", help="the store to copy: a state "
                        "dir, or etcd://HOST:PORT[,HOST:PORT...]/PREFIX")
    parser.add_argument("--to", dest="destination", required=True, metavar="DIR|URL", help="the store to copy into")
    parser.add_argument("--overwrite", action="store_true", help="copy into a store that holds state already, "
                        "each certificate the source holds replacing the destination's whole")
    return parser


def _config(args: argparse.Namespace, required: bool | None) -> ConfigFile | None:
    """The config file named by --config or CERTRENEW_CONFIG, else the default one if `required`
    (True) or if it exists (None); with False, only a named one."""
    path = args.config or os.environ.get("CERTRENEW_CONFIG")
    if path is None and (required is False or (required is None and not DEFAULT_CONFIG.exists())):
        return None
    return load_config(Path(path) if path else DEFAULT_CONFIG)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, message, logger, and the certificate's name where a line is about one."""

    def format(self, record: logging.LogRecord) -> str:
        document = {"ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(
                        timespec="milliseconds"),
                    "level": record.levelname.lower(), "message": record.getMessage(), "logger": record.name}
        if hasattr(record, "certificate"):
            document["name"] = record.certificate
        if record.exc_info:
            document["traceback"] = self.formatException(record.exc_info)
        return json.dumps(document)


@dataclass(frozen=True)
class Output:
    """A command's own lines (outcomes, checks, tables, errors) as its log lines are: text, or with
    --log-format json one JSON object per line, so a log shipper reads every line certrenew writes."""

    quiet: bool = False
    json: bool = False

    def result(self, line: str, name: str | None = None, level: int = logging.INFO) -> None:
        """A line of what the command found or did, on stdout."""
        self._write(sys.stdout, "", line, name, level)

    def problem(self, line: str, name: str | None = None, level: int = logging.ERROR) -> None:
        """A line about what went wrong (or a summary), on stderr after "certrenew: " as the log's."""
        self._write(sys.stderr, "certrenew: ", line, name, level)

    def _write(self, stream: TextIO, prefix: str, line: str, name: str | None, level: int) -> None:
        if self.json:
            record = logging.LogRecord(log.name, level, __file__, 0, line, None, None)
            if name is not None:
                record.certificate = name
            line, prefix = JsonFormatter().format(record), ""
        print(prefix + line, file=stream)


def _setup_logging(args: argparse.Namespace) -> Output:
    """Set the log level from -v/-q, else CERTRENEW_VERBOSE/CERTRENEW_QUIET, and the format from --log-format,
    else CERTRENEW_LOG_FORMAT; the command's own lines follow them."""
    verbose = bool(args.verbose if args.verbose is not None else env_flag("CERTRENEW_VERBOSE"))
    quiet = bool(args.quiet if args.quiet is not None else env_flag("CERTRENEW_QUIET"))
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    log_format = args.log_format or os.environ.get("CERTRENEW_LOG_FORMAT", "text")
    if log_format not in LOG_FORMATS:
        raise UsageError(f"invalid CERTRENEW_LOG_FORMAT: {log_format!r} (choose {' or '.join(LOG_FORMATS)})")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter("certrenew: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    if not verbose:
        logging.getLogger("acme").setLevel(logging.WARNING)
    return Output(quiet, log_format == "json")


def _report(report, output: Output) -> int:
    """One line per certificate: failures to stderr, the rest to stdout; then, for several, a summary
    to stderr. Exit 1 if a certificate or a hook failed (the hook already said so, in one line)."""
    outcomes = report.outcomes
    for outcome in outcomes:
        line = f"{outcome.name}: {outcome.action}: {outcome.detail}"
        if outcome.failed:
            output.problem(line, outcome.name, logging.ERROR if outcome.action == Action.FAILED else logging.WARNING)
        elif not output.quiet:
            output.result(line, outcome.name)
    failed = [outcome.name for outcome in outcomes if outcome.failed]
    if failed and len(outcomes) > 1:
        output.problem(f"{len(failed)} of {len(outcomes)} certificates failed: {', '.join(failed)}")
    if len(outcomes) > 1 and (report.failed or not output.quiet):
        output.problem(report.summary(), level=logging.ERROR if report.failed else logging.INFO)
    deferred = [outcome.name for outcome in outcomes if outcome.action == Action.DEFERRED]
    if deferred:  # failed before, and again: maybe for ever
        from certrenew.cli.status import forget_hint

        output.problem(forget_hint(deferred), level=logging.WARNING)
    return 1 if report.failed else 0


def _renew_recorded(settings, specs, output: Output, context: RunContext) -> int:
    """`renew.run` and its report; with --metrics-file, then the run's metrics, whatever its outcome."""
    from certrenew.renewal.progress import for_stream
    from certrenew.renewal.renew import run

    store = open_store(settings)
    progress = for_stream(sys.stderr, output.quiet or output.json)  # a bar is no JSON
    if settings.daemon.metrics_file is None:
        return _report(run(settings, specs, store, progress=progress, context=context), output)
    from certrenew.cli import metrics, status

    metrics.check_textfile(settings.daemon.metrics_file)
    telemetry = metrics.Telemetry()
    started, code = time.monotonic(), 1
    try:
        code = _report(run(settings, specs, store, telemetry=telemetry, progress=progress, context=context), output)
        return code
    finally:
        telemetry.record_run(code == 0, time.monotonic() - started)
        metrics.write_textfile(settings.daemon.metrics_file, status.collect(settings, specs, store), telemetry)


def _renew(argv: list[str], context: RunContext) -> int:
    args = build_parser().parse_args(argv)
    output = _setup_logging(args)
    _refuse_mistyped_command(args.domains)
    settings = build_settings(vars(args), _config(args, required=False))
    defaults = settings.certificate
    specs = certificate_specs(None, args.domains, defaults.key_type, defaults.profile, defaults.challenge,
                              defaults.dns(), defaults.crt_list_options)
    if not settings.force:
        _refuse_dropping_names(open_store(settings, context), specs)
    return _renew_recorded(settings, specs, output, context)


def _refuse_dropping_names(store: Store, specs: list[CertificateSpec]) -> None:
    """`certrenew example.com` for a certificate that also has www.example.com would reissue it
    without: certbot asks first, and the command line is where a name is forgotten, so that takes
    --force. (A config file edited to drop a name says so on purpose.)"""
    for spec in specs:
        record = store.load_record(spec.name)
        dropped = [domain for domain in record.domains if domain not in spec.domains] if record else []
        if record and record.not_after and dropped:
            raise UsageError(f"certificate {spec.name} also has {', '.join(dropped)}: name them all to keep them "
                             f"(`certrenew {' '.join(record.domains)}`), or pass --force to drop them")



def _refuse_mistyped_command(domains: list[str]) -> None:
    """`certrenew stauts` is a typo, not a certificate to order: say which command was meant."""
    if len(domains) == 1 and "." not in domains[0]:
        import difflib  # here: only a mistake needs it

        close = difflib.get_close_matches(domains[0], COMMANDS, n=1)
        if close:
            raise UsageError(f"{domains[0]!r} is not a domain name: did you mean `certrenew {close[0]}`?")


def _managed(args: argparse.Namespace) -> tuple[Settings, list[CertificateSpec]]:
    """The settings and the certificates of the config file that `run` and the daemon manage."""
    config = _config(args, required=True)
    assert config is not None  # required
    if not config.certificates:
        raise UsageError(f"{config.path}: no [[certificate]] to manage")
    return build_settings(vars(args), config), config.certificates


def _run(argv: list[str], context: RunContext) -> int:
    args = build_run_parser().parse_args(argv)
    output = _setup_logging(args)
    return _renew_recorded(*_managed(args), output, context)


def _daemon(argv: list[str], context: RunContext) -> int:
    # SIGHUP first: its default action ends the process, and a reload may come at any moment.
    with signals.Hangups() as hangups:
        from certrenew.cli.daemon import Daemon
        from certrenew.renewal.renew import check_hooks

        args = build_daemon_parser().parse_args(argv)
        _setup_logging(args)

        def load() -> tuple[Settings, list[CertificateSpec]]:
            settings, specs = _managed(args)
            if settings.force:  # from CERTRENEW_FORCE: every pass would order every certificate
                raise UsageError("the daemon does not take CERTRENEW_FORCE: use `certrenew run --force` once")
            check_hooks(settings.hooks)  # at start and on SIGHUP, not once a minute in a failing pass
            return settings, specs

        settings, specs = load()
        try:
            Daemon(settings, specs, open_store(settings, context), load, hangups, context=context).run()
        except Interrupted as interrupted:
            log.info("stopping: %s", interrupted)
            return signals.exit_abandoning_workers(context, 0)
    return 0


def _status(argv: list[str], context: RunContext) -> int:
    from certrenew.cli import fleetview, status
    from certrenew.state.store import this_node

    args = build_status_parser().parse_args(argv)
    output = _setup_logging(args)
    config = _config(args, required=None)
    settings = build_settings(vars(args), config)
    try:
        store = open_store(settings)
        rows = status.collect(settings, config.certificates if config else None, store, read_ssl_dir=True)
        fleet = fleetview.read(store, this_node(settings.fleet))
    except StoreUnreachable as error:
        return _status_away(args.json, output, settings, config.certificates if config else [], error)
    reason = status.unhealthy(settings, rows)
    if args.json:
        document = {"version": status.JSON_VERSION, "healthy": reason is None, "reason": reason,
                    "certificates": [{**row.to_json(), **fleet.certificate(row)} for row in rows],
                    **fleet.to_json(rows)}
        print(json.dumps(document, indent=None if output.json else 2))  # one line among JSON log lines
    else:
        lines = status.format_table(rows).splitlines() if rows else []
        if output.json:  # one object per certificate, not the header
            for row, line in zip(rows, lines[1:]):
                output.result(line.rstrip(), row.name)
        elif lines:
            print("\n".join(lines))
            if fleet_lines := fleetview.format_fleet(fleet, rows):
                print(fleet_lines)
        if reason:
            failing = [row.name for row in rows if row.state == status.State.FAILING]
            hint = f" ({status.forget_hint(failing)})" if failing else ""
            output.problem(f"not healthy: {reason}{hint}")
    return 0 if reason is None else 1


def _status_away(as_json: bool, output: "Output", settings: Settings, specs: list[CertificateSpec],
                 error: StoreUnreachable) -> int:
    """`status` with the store unreachable: since when (this command's requests), and what this node's ssl dir
    holds past its renewal time meanwhile, by name and time left; exit 1."""
    from certrenew.cli import status
    from certrenew.cli.outage import store_health
    from certrenew.state.backend import Outage

    now = time.time()
    health = store_health(Outage(error.since or now, now, str(error)), settings.haproxy.ssl_dir, specs,
                          settings.renew_before)
    lines = health.lines()
    if as_json:
        document = {"version": status.JSON_VERSION, "healthy": False, "reason": "; ".join(lines), **health.to_json(),
                    "certificates": []}
        print(json.dumps(document, indent=None if output.json else 2))
    else:
        output.problem(f"not healthy: {lines[0]}")
        for line in lines[1:]:
            output.problem(line)
    return 1


def _revoke(argv: list[str], context: RunContext) -> int:
    from certrenew.cli import revoke

    args = build_revoke_parser().parse_args(argv)
    output = _setup_logging(args)
    config = _config(args, required=None)
    settings = build_settings(vars(args), config)
    request = revoke.prepare(settings, args.name, args.reason, config, args.reissue, args.delete)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("stdin is not a terminal to confirm on: pass --yes to revoke without asking")
        print(request.question(), end="", file=sys.stderr, flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            output.problem("nothing revoked", request.name)
            return 1
    for line in revoke.carry_out(settings, request, context).report():
        if not output.quiet:
            output.result(line, request.name)
    return 0


def _check(argv: list[str], context: RunContext) -> int:
    from certrenew.renewal import preflight

    args = build_check_parser().parse_args(argv)
    output = _setup_logging(args)
    config = _config(args, required=None)
    settings = build_settings(vars(args), config)
    specs = list(config.certificates) if config else []
    if args.domains:
        defaults = settings.certificate
        specs += certificate_specs(None, args.domains, defaults.key_type, defaults.profile, defaults.challenge,
                                   defaults.dns())
    checks = preflight.run_checks(settings, config.path if config else None, specs)
    levels = {preflight.OK: logging.INFO, preflight.WARN: logging.WARNING, preflight.FAIL: logging.ERROR}
    for check in checks:
        output.result(str(check), level=levels[check.status])
    return 1 if any(check.status == preflight.FAIL for check in checks) else 0


def _bootstrap(argv: list[str], context: RunContext) -> int:
    from certrenew.pki.placeholder import write_placeholder

    args = build_bootstrap_parser().parse_args(argv)
    output = _setup_logging(args)
    settings = build_settings(vars(args), _config(args, required=False))
    output.result(f"placeholder: {write_placeholder(settings.haproxy.ssl_dir)}")
    return 0


def build_import_parser() -> argparse.ArgumentParser:
    from certrenew.cli.certbot_import import DEFAULT_CERTBOT_DIR

    parser = _parser(
        "certrenew import-certbot",
        "Take over certbot's certificates without reissuing them: each current certificate and key becomes "
        "certrenew's, certbot's account is reused, and a [[certificate]] per certificate is appended to the config "
        "file. Reads the certbot directory only; leaves the ssl dir alone. Lists what certbot did that certrenew "
        "does not (hooks, other authenticators), one line each.",
        [option for option in OPTIONS if option.name in ("directory", "staging", *STORE_OPTIONS, "ssl_dir", "listen",
                                                         "lock_timeout")],
        f"TOML config file the certificates are appended to, created if missing (default {DEFAULT_CONFIG})",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="certbot certificate names (default: all)")
    parser.add_argument("--certbot-dir", type=Path, default=DEFAULT_CERTBOT_DIR, metavar="DIR",
                        help=f"certbot's configuration directory (default {DEFAULT_CERTBOT_DIR})")
    parser.add_argument("--dry-run", action="store_true", help="print what would be imported; write nothing")
    parser.add_argument("--force", dest="replace", action="store_true",
                        help="replace a certificate certrenew already manages under the same name")
    return parser


def _import_certbot(argv: list[str], context: RunContext) -> int:
    from certrenew.cli.certbot_import import import_certbot

    args = build_import_parser().parse_args(argv)
    output = _setup_logging(args)
    path = Path(args.config or os.environ.get("CERTRENEW_CONFIG") or DEFAULT_CONFIG)
    settings = build_settings(vars(args), load_config(path) if path.exists() else None)
    plan = import_certbot(settings, args.certbot_dir, path, args.names, args.dry_run, args.replace, context)
    for line in plan.lines(args.dry_run):
        output.result(line)
    if args.dry_run and plan.appended:
        if output.json:
            output.result(f"to append to {path}:\n{plan.appended}")
        else:
            print(f"--- to append to {path} ---\n{plan.appended}", end="")
    return 0 if plan.takeovers else 1


def _haproxy_config(argv: list[str], context: RunContext) -> int:
    from certrenew.cli.haproxy_config import render

    args = build_haproxy_config_parser().parse_args(argv)
    _setup_logging(args)
    settings = build_settings(vars(args), _config(args, required=None))
    print(render(settings, args.map, args.create_account, context), end="")
    return 0


def _migrate_state(argv: list[str], context: RunContext) -> int:
    from certrenew.cli.migrate import migrate

    args = build_migrate_parser().parse_args(argv)
    output = _setup_logging(args)
    settings = build_settings(vars(args), _config(args, required=False))
    done = migrate(settings, args.source, args.destination, args.overwrite, context)
    output.result(f"migrated {done.entries} entries ({done.certificates} certificate(s), {done.accounts} account(s)) "
                  f"from {args.source} to {args.destination}; {args.source} is unchanged")
    return 0


COMMANDS = MappingProxyType({"run": _run, "daemon": _daemon, "status": _status, "check": _check, "revoke": _revoke,
                             "bootstrap-ssl-dir": _bootstrap, "import-certbot": _import_certbot,
                             "haproxy-config": _haproxy_config, "migrate-state": _migrate_state})


CERTBOT_HABITS = MappingProxyType({
    "renew": "`certrenew run`",
    "certonly": "`certrenew DOMAIN [DOMAIN ...]`",
    "certificates": "`certrenew status`",
    "delete": "`certrenew revoke NAME --delete`",
    "help": "`certrenew --help` (or `certrenew COMMAND --help`)",
})
"""certbot's commands and what certrenew calls them: an operator's fingers remember certbot."""
CERTBOT_DOMAIN_FLAGS = ("-d", "--domain", "--domains")


def _command(argv: list[str]) -> tuple[str | None, list[str]]:
    """The subcommand and the rest of the command line: the shared options may come before the
    subcommand (`certrenew --log-format json run`), as most tools allow; None for the single-domain
    form. (Not revoke's or import-certbot's parsers: they import what a no-op run must not.)"""
    takes_value = {option for action in build_parser()._actions if action.nargs != 0
                   for option in action.option_strings}
    index = 0
    while index < len(argv) and argv[index].startswith("-") and argv[index] not in ("--", *CERTBOT_DOMAIN_FLAGS):
        index += 2 if argv[index] in takes_value else 1
    word = argv[index] if index < len(argv) else ""
    if word in CERTBOT_HABITS:
        raise UsageError(f"{word!r} is certbot's command; certrenew's is {CERTBOT_HABITS[word]}")
    if word in COMMANDS:
        return word, argv[:index] + argv[index + 1:]
    names = [name for flag, value in zip(argv, argv[1:]) if flag in CERTBOT_DOMAIN_FLAGS for name in value.split(",")]
    if names:
        raise UsageError(f"certrenew takes the names as arguments, not with -d: `certrenew {' '.join(names)}` "
                         "(the first names the certificate)")
    return None, argv


def console() -> NoReturn:
    """The `certrenew` command (the console script, `python -m certrenew`): `main`, then exit.

    Before exiting, every object is frozen (`gc.freeze`) so the interpreter's last collections
    do not walk what the run left, all of it freed with the process anyway: 25 ms of a
    210 ms one-certificate run. Exit handlers, the flush of output and log files, and the
    freeing of each module still happen as before."""
    code = main()
    gc.freeze()
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _without_charset_guessing()
    raise_open_files_limit()
    context = RunContext()
    try:
        with signals.handled(context):
            try:
                name, rest = _command(argv)
                code = COMMANDS[name](rest, context) if name else _renew(rest, context)
                sys.stdout.flush()  # a reader gone (`status | head -1`) shows here, not at the interpreter's exit
                return code
            except Interrupted as interrupted:
                # Still under handled(): abandoned workers keep seeing the cancellation, so
                # none starts a write once the run has given up its lock.
                Output(json=_log_format(argv) == "json").problem(
                    f"{interrupted}; stopped cleanly, the next run picks up from here", level=logging.WARNING)
                return signals.exit_abandoning_workers(context, interrupted.exit_code)
    except BrokenPipeError:  # as Unix tools end on SIGPIPE: quietly, with its status; the rest of the output has nowhere to go
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (CertrenewError, OSError) as error:  # OSError: the state or ssl dir refusing a read or write, say
        if log.isEnabledFor(logging.DEBUG):
            log.exception("failed")
        message = f"{error.strerror}: {error.filename}" if isinstance(error, OSError) and error.filename else error
        # A log shipper reads every line as JSON, argparse's complaints too.
        output = Output(json=_log_format(argv) == "json")
        output.problem(f"error: {message}")
        if log.isEnabledFor(logging.DEBUG):  # -v: what certrenew met underneath, one line each
            for cause in causes(error):
                output.problem(f"  caused by {type(cause).__name__}: {cause}")
        return getattr(error, "exit_code", 1)


def _without_charset_guessing() -> None:
    """Keep `requests` from importing charset_normalizer, 2.5 MiB and 9 ms of an order's start-up.

    requests guesses the encoding of a body whose Content-Type names none, and falls back to
    UTF-8 when no guesser is installed. What certrenew reads (the CA's JSON and PEM, etcd's JSON)
    is ASCII or UTF-8, so the guess only ever said the same. A module set to None in sys.modules
    is one Python refuses to import; a library host that imported it first keeps it.
    """
    for guesser in ("chardet", "charset_normalizer"):
        sys.modules.setdefault(guesser, None)  # type: ignore[arg-type]
    warnings.filterwarnings("ignore", "Unable to find acceptable character detection", module="requests")


def _log_format(argv: list[str]) -> str:
    """--log-format if given, else CERTRENEW_LOG_FORMAT: read apart from the command's parser, so that
    an error it finds in the rest of the command line still comes out in the format asked for."""
    early = _Parser(add_help=False, allow_abbrev=False)
    early.add_argument("--log-format")
    try:
        flag = early.parse_known_args(argv)[0].log_format
    except UsageError:  # --log-format last, without its value: the command's parser says so
        flag = None
    return flag or os.environ.get("CERTRENEW_LOG_FORMAT", "text")
