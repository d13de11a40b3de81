"""The `certrenew` command: a thin shell over `certrenew.renew.run`.

Every option can also come from an environment variable `CERTRENEW_<OPTION>` (for
containers and systemd units); an option on the command line wins.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from certrenew import __version__
from certrenew.config import LETSENCRYPT, LETSENCRYPT_STAGING, CertificateSpec, Settings, check_certificate_name
from certrenew.errors import CertrenewError, UsageError
from certrenew.keys import DEFAULT_KEY_TYPE, KEY_TYPES, check_key_type

log = logging.getLogger("certrenew")

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see --help)")


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, metavar="DIR",
                        help="account, keys, certificates and records (default /var/lib/certrenew)")
    parser.add_argument("--ssl-dir", type=Path, metavar="DIR",
                        help="HAProxy's crt directory, one <name>.pem per certificate (default /etc/haproxy/ssl)")
    parser.add_argument("-v", "--verbose", action="store_true", default=None, help="log every step (and tracebacks)")
    parser.add_argument("-q", "--quiet", action="store_true", default=None, help="print only errors")
    parser.add_argument("--version", action="version", version=f"certrenew {__version__}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="certrenew",
        description="Obtain or renew a certificate over ACME (HTTP-01 behind HAProxy) and make HAProxy serve it.",
        epilog="Every option also reads CERTRENEW_<OPTION> from the environment, e.g. CERTRENEW_STATE_DIR. "
        "Exit status: 0 done or nothing to do, 1 the run failed, 2 bad usage or input. "
        "Other commands: certrenew bootstrap-ssl-dir --help",
    )
    parser.add_argument("domains", nargs="+", metavar="DOMAIN", help="names for the certificate; the first names it")
    parser.add_argument("--directory", metavar="URL", help="ACME directory URL (default Let's Encrypt)")
    parser.add_argument("--staging", action="store_true", default=None, help="use Let's Encrypt's staging CA")
    parser.add_argument("--email", metavar="ADDR", help="contact address for the ACME account")
    parser.add_argument("--agree-tos", action="store_true", default=None,
                        help="agree to the CA's terms of service (needed to register an account)")
    parser.add_argument("--ca-bundle", metavar="PATH",
                        help="CA bundle to verify the ACME server (default: system store or REQUESTS_CA_BUNDLE)")
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="where the HTTP-01 responder listens, behind HAProxy (default 127.0.0.1:49494)")
    parser.add_argument("--reload-command", metavar="CMD",
                        help="how to reload HAProxy, run without a shell (default 'systemctl reload haproxy')")
    parser.add_argument("--key-type", metavar="TYPE", help=f"{' | '.join(KEY_TYPES)} (default {DEFAULT_KEY_TYPE})")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="time budget for the CA (default 300)")
    parser.add_argument("--force", action="store_true", default=None, help="renew even if not due")
    _common_options(parser)
    return parser


def build_bootstrap_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="certrenew bootstrap-ssl-dir",
        description="Write a self-signed placeholder into the ssl dir so HAProxy can start before any "
        "real certificate exists (HAProxy refuses an empty crt directory).",
    )
    _common_options(parser)
    return parser


def _env(name: str) -> str | None:
    return os.environ.get("CERTRENEW_" + name.upper().replace("-", "_"))


def _resolve(args: argparse.Namespace, name: str, default=None, convert=str):
    """The option's value: the command line, else CERTRENEW_<NAME>, else `default`."""
    value = getattr(args, name)
    if value is not None:
        return value
    raw = _env(name)
    if raw is None:
        return default
    try:
        return convert(raw)
    except ValueError:
        raise UsageError(f"invalid value {raw!r} in CERTRENEW_{name.upper()}") from None


def _flag(raw: str) -> bool:
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise ValueError(raw)


def _settings(args: argparse.Namespace) -> Settings:
    staging = _resolve(args, "staging", False, _flag)
    ca_bundle = _resolve(args, "ca_bundle")
    if ca_bundle and not Path(ca_bundle).is_file():
        raise UsageError(f"CA bundle {ca_bundle} does not exist")
    timeout = _resolve(args, "timeout", Settings.timeout, float)
    if timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    return Settings(
        directory_url=_resolve(args, "directory", LETSENCRYPT_STAGING if staging else LETSENCRYPT),
        email=_resolve(args, "email"),
        agree_tos=_resolve(args, "agree_tos", False, _flag),
        ca_bundle=ca_bundle,
        state_dir=_resolve(args, "state_dir", Settings.state_dir, Path),
        ssl_dir=_resolve(args, "ssl_dir", Settings.ssl_dir, Path),
        listen=_resolve(args, "listen", Settings.listen),
        reload_command=_resolve(args, "reload_command", Settings.reload_command),
        timeout=timeout,
        force=_resolve(args, "force", False, _flag),
    )


def _setup_logging(args: argparse.Namespace) -> bool:
    verbose = _resolve(args, "verbose", False, _flag)
    quiet = _resolve(args, "quiet", False, _flag)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="certrenew: %(message)s", stream=sys.stderr)
    if not verbose:
        logging.getLogger("acme").setLevel(logging.WARNING)
    return verbose


def _renew(argv: list[str]) -> int:
    from certrenew.domains import normalize_domains
    from certrenew.renew import run

    args = build_parser().parse_args(argv)
    _setup_logging(args)
    settings = _settings(args)
    domains = normalize_domains(args.domains)
    key_type = check_key_type(_resolve(args, "key_type", DEFAULT_KEY_TYPE))
    spec = CertificateSpec(check_certificate_name(domains[0]), tuple(domains), key_type)
    quiet = _resolve(args, "quiet", False, _flag)
    failed = False
    for outcome in run(settings, [spec]):
        if outcome.failed:
            failed = True
            print(f"certrenew: {outcome.name}: failed: {outcome.detail}", file=sys.stderr)
        elif not quiet:
            print(f"{outcome.name}: {outcome.action}: {outcome.detail}")
    return 1 if failed else 0


def _bootstrap(argv: list[str]) -> int:
    from certrenew.placeholder import write_placeholder

    args = build_bootstrap_parser().parse_args(argv)
    _setup_logging(args)
    ssl_dir = _resolve(args, "ssl_dir", Settings.ssl_dir, Path)
    print(f"placeholder: {write_placeholder(ssl_dir)}")
    return 0


COMMANDS = {"bootstrap-ssl-dir": _bootstrap}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = COMMANDS.get(argv[0], _renew) if argv else _renew
    if command is not _renew:
        argv = argv[1:]
    try:
        return command(argv)
    except CertrenewError as error:
        if log.isEnabledFor(logging.DEBUG):
            log.exception("failed")
        print(f"certrenew: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("certrenew: interrupted", file=sys.stderr)
        return 130
