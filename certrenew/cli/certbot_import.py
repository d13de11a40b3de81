"""Taking certificates over from certbot without reissuing them.

certbot keeps, under its configuration directory (/etc/letsencrypt), one *lineage* per
certificate: `renewal/<name>.conf`, `live/<name>/*.pem` symlinks into
`archive/<name>/`, and the ACME account it was ordered with under
`accounts/<server>/<id>/`. Importing makes certbot's current certificate and key
certrenew's current bundle for `<name>` (so the first renewal names it in ARI's
`replaces`), reuses the account for the same CA, and appends a `[[certificate]]` to the
config file. Whatever certbot did that certrenew does not (other authenticators,
hooks, a preferred chain...) is listed, one line each, for the operator to redo.

Everything is read and checked before anything is written, and nothing under the
certbot directory is ever opened for writing. The ssl dir is not touched either:
HAProxy keeps serving exactly what it served, and certrenew writes `<name>.pem` at the
first renewal.
"""

import configparser
import dataclasses
import datetime
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certrenew.config import CertificateSpec, Settings, certificate_specs, load_config
from certrenew.errors import CertrenewError, UsageError
from certrenew.haproxy.install import read_bundle_file
from certrenew.pki.bundle import (
    CLOCK_SKEW,
    CertificateInfo,
    build_bundle,
    certificate_info,
    certificates,
    chain_problem,
    leaf_certificate,
    leaf_info,
    pem_blocks,
)
from certrenew.pki.keys import is_key_of, key_to_pem, key_type_of, load_key
from certrenew.state.store import Account, CertificateRecord, Store, open_store
from certrenew.system.atomicfile import write_atomic
from certrenew.system.runcontext import RunContext

DEFAULT_CERTBOT_DIR = Path("/etc/letsencrypt")
ASK_TIMEOUT = 10.0
"""Seconds for each question to the CA (its directory, a certificate's renewal information)."""
TOP = "top"
"""The section name given to a renewal conf's top-level keys (configobj needs no header for them)."""
HOOKS = MappingProxyType({"pre_hook": "pre hook", "post_hook": "post hook", "renew_hook": "deploy hook",
                          "manual_auth_hook": "manual auth hook", "manual_cleanup_hook": "manual cleanup hook"})
"""certbot stores --deploy-hook as renew_hook."""


class _CaseKeepingParser(configparser.ConfigParser):
    """Keys as certbot wrote them (configparser lower-cases them by default)."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def read_renewal_conf(text: str) -> dict[str, dict[str, str]]:
    """certbot's `renewal/<name>.conf` as {section: {key: value}}, its top-level keys under TOP.

    configobj writes it: top-level keys before any section, `[renewalparams]`, at times a
    nested `[[webroot_map]]` (read here as a section of its own), a value quoted only
    when it holds a comma or a quote. configparser reads that once told: no
    interpolation (a hook may hold a %), keys as written, `=` as the only delimiter,
    and a header for the top-level keys. A duplicate key or a line that is not
    `key = value` is an error, not a guess.
    """
    parser = _CaseKeepingParser(interpolation=None, delimiters=("=",), comment_prefixes=("#",),
                                inline_comment_prefixes=None, strict=True, default_section="\0")
    parser.read_string(f"[{TOP}]\n{text}")
    return {name: {key: _unquote(value) for key, value in parser[name].items()} for name in parser.sections()}


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def describe_key(key) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA {key.key_size}"
    return type(key).__name__


@dataclass(frozen=True)
class Takeover:
    """One certbot certificate certrenew takes over as it is."""

    lineage: str
    spec: CertificateSpec
    bundle: bytes
    info: CertificateInfo
    account_id: str
    notes: list[str]
    """What certbot did for it that certrenew does not: one line each, for the operator to redo."""
    managed: bool = False
    """certrenew already had it (replaced with --force)."""
    ssl_dir: list[str] = field(default_factory=list)
    """Which bundles in the ssl dir serve it today, where that matters for the first renewal."""


@dataclass(frozen=True)
class ImportPlan:
    """Everything an import would do, read and checked before anything is written."""

    directory_url: str
    takeovers: list[Takeover]
    skipped: dict[str, str]
    """Lineage name -> why certrenew cannot take it over (it stays certbot's)."""
    account: Account | None
    """certbot's account to store for `directory_url`; None when certrenew keeps its own."""
    account_id: str
    config_path: Path
    config_text: str
    """The config file after the import (the file's text, then the appended entries)."""
    appended: str
    notes: list[str] = field(default_factory=list)
    """About the whole certbot directory: its hooks for every certificate."""

    def lines(self, dry_run: bool) -> list[str]:
        """The report: what was (or would be) carried over, skipped, or left to redo."""
        verb = "would import" if dry_run else "imported"
        lines = []
        for item in self.takeovers:
            replaced = " (replacing what certrenew had)" if item.managed else ""
            lines.append(f"{item.spec.name}: {verb}{replaced}: {item.spec.key_type}, {' '.join(item.spec.domains)}, "
                         f"serial {item.info.serial}, expires {item.info.not_after:%Y-%m-%d %H:%M} UTC")
            lines += [f"{item.spec.name}: not carried over: {note}" for note in item.notes]
            lines += [f"{item.spec.name}: ssl dir: {note}" for note in item.ssl_dir]
        lines += [f"{name}: skipped: {reason}" for name, reason in self.skipped.items()]
        lines += self.notes
        if self.account is not None:
            lines.append(f"account: {'would reuse' if dry_run else 'reusing'} certbot account {self.account_id} "
                         f"({self.account.uri}) for {self.directory_url}")
        if self.appended:
            count = self.appended.count("[[certificate]]")
            lines.append(f"config: {'would append' if dry_run else 'appended'} {count} [[certificate]] "
                         f"to {self.config_path}")
        return lines


def import_certbot(settings: Settings, certbot_dir: Path, config_path: Path, names: list[str] | None = None,
                   dry_run: bool = False, force: bool = False, context: RunContext | None = None) -> ImportPlan:
    """Take over certbot's lineages (all, or `names`); with `dry_run`, only say what would happen.

    Bad input (not a certbot directory, a broken lineage, an unknown name, a certificate
    certrenew already manages without `force`) raises UsageError before anything is
    written. The plan is made again under the state dir's lock, in case another run
    changed the state meanwhile.
    """
    plan = make_plan(settings, certbot_dir, config_path, names, force)
    if dry_run:
        return plan
    store = open_store(settings, context)
    with store.lock(settings.lock_timeout):
        plan = make_plan(settings, certbot_dir, config_path, names, force)
        if plan.takeovers:
            apply(plan, store)
    return plan


def make_plan(settings: Settings, certbot_dir: Path, config_path: Path, names: list[str] | None,
              force: bool) -> ImportPlan:
    """Read and check everything an import needs; write nothing."""
    store = open_store(settings)
    config = load_config(config_path) if config_path.exists() else None
    directory_url = settings.acme.directory_url
    lineages = _lineage_names(certbot_dir, names)
    takeovers, skipped = [], {}
    for name in lineages:
        result = _read_lineage(certbot_dir, name, settings)
        if isinstance(result, str):
            skipped[name] = result
        else:
            takeovers.append(result)

    configured = {spec.name: spec for spec in (config.certificates if config else [])}
    served = _served(settings.haproxy.ssl_dir)
    for index, item in enumerate(takeovers):
        managed = item.spec.name in configured or store.load_record(item.spec.name) is not None
        if managed and item.spec.name not in configured and store.load_bundle(item.spec.name) == item.bundle:
            managed = False  # an import that failed before its config was written took it over: finish it
        if managed and not force:
            raise UsageError(f"{item.spec.name}: certrenew already manages a certificate of that name "
                             "(in the config or the state dir); --force replaces it with certbot's")
        spec = configured.get(item.spec.name)
        if spec is not None and (spec.domains, spec.key_type) != (item.spec.domains, item.spec.key_type):
            item.notes.append(f"the config's [[certificate]] {spec.name} asks for other names or another key "
                              "type than certbot's certificate has, so the next run reissues it")
        takeovers[index] = dataclasses.replace(item, managed=managed, ssl_dir=_ssl_dir_notes(settings, item, served))

    unknown, asked = _unknown_to_the_ca(settings, takeovers) if takeovers else ({}, [])
    skipped.update(unknown)
    takeovers = [item for item in takeovers if item.lineage not in unknown]
    account, account_id = _account(store, certbot_dir, directory_url, takeovers) if takeovers else (None, "")
    original = config_path.read_text() if config_path.exists() else ""
    appended = "".join(_toml(item, certbot_dir) for item in takeovers if item.spec.name not in configured)
    if not original:
        appended = appended.lstrip("\n")
    elif appended and not original.endswith("\n"):
        appended = "\n" + appended
    _check_config(config_path, original + appended)
    return ImportPlan(directory_url, takeovers, skipped, account, account_id, config_path, original + appended,
                      appended, asked + _global_hooks(certbot_dir))


def apply(plan: ImportPlan, store: Store) -> None:
    """Write the plan (under the store's lock): account, each certificate as current (with its record),
    then the config file.

    Not undone when a write fails half-way (a full disk, a config that cannot be written):
    undoing could fail too, and a kill cannot undo. The same import run again recognises
    the certificates it took over already (certbot's very bundle, not yet in the config)
    and finishes, without --force.
    """
    if plan.account is not None:
        store.save_account(plan.directory_url, plan.account)
    now = datetime.datetime.now(datetime.timezone.utc)
    for item in plan.takeovers:
        info = item.info
        store.save_pending(item.spec.name, item.bundle)
        store.promote_pending(CertificateRecord(
            name=item.spec.name, domains=list(item.spec.domains), key_type=item.spec.key_type,
            serial=info.serial, not_before=info.not_before, not_after=info.not_after, issued_at=info.not_before,
            # Ask the CA for its renewal window (ARI) at the next run, as after an issuance.
            ari_next_check=now,
        ))
    if plan.appended:
        try:
            plan.config_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(plan.config_path, plan.config_text.encode(), mode=0o644, keep_mode=True)
        except OSError as error:
            raise CertrenewError(f"cannot write {plan.config_path}: {error.strerror}; the certificates are taken "
                                 "over in the state dir: run the same import again once the config can be "
                                 "written, it finishes what this one began") from error


def _lineage_names(certbot_dir: Path, names: list[str] | None) -> list[str]:
    renewal = certbot_dir / "renewal"
    found = sorted(path.name.removesuffix(".conf") for path in renewal.glob("*.conf")) if renewal.is_dir() else []
    if not found:
        raise UsageError(f"{certbot_dir} is not a certbot configuration directory: no renewal/*.conf in it")
    unknown = [name for name in names or [] if name not in found]
    if unknown:
        raise UsageError(f"no certbot certificate named {', '.join(unknown)} in {renewal} "
                         f"(there are: {', '.join(found)})")
    return list(names) if names else found


def _read_lineage(certbot_dir: Path, name: str, settings: Settings) -> Takeover | str:
    """The lineage as certrenew would take it over, or why it cannot (a str); UsageError if it is broken.

    The certificate and key are read through `live/<name>/`, not the absolute paths the
    conf names, so a copy of the directory elsewhere reads its own files.
    """
    conf_path = certbot_dir / "renewal" / f"{name}.conf"
    try:
        conf = read_renewal_conf(_read(name, conf_path, "renewal conf").decode())
    except (configparser.Error, UnicodeDecodeError) as error:
        raise UsageError(f"{name}: cannot read {conf_path}: {' '.join(str(error).split())}") from error
    params = conf.get("renewalparams", {})
    for key in ("server", "account"):
        if not params.get(key):
            raise UsageError(f"{name}: {conf_path} has no {key} in [renewalparams]")
    if params["server"] != settings.acme.directory_url:
        raise UsageError(f"{name}: certbot renews it at {params['server']}, but certrenew is set to "
                         f"{settings.acme.directory_url}; certrenew keeps one CA per config: set directory "
                         "(or --directory) to certbot's server")

    live = certbot_dir / "live" / name
    fullchain, key_pem = (_read(name, live / file) for file in ("fullchain.pem", "privkey.pem"))
    try:
        chain = certificates(pem_blocks(fullchain))
        cert = chain[0]
        key = load_key(key_pem)
    except (ValueError, TypeError, IndexError, CertrenewError) as error:
        raise UsageError(f"{name}: cannot read the certificate or key in {live}: {error or type(error).__name__}") \
            from error
    if not is_key_of(key, cert):
        raise UsageError(f"{name}: {live / 'privkey.pem'} is not the key of {live / 'fullchain.pem'}")
    problem = _not_issued(chain, datetime.datetime.now(datetime.timezone.utc))
    if problem:
        return f"{live / 'fullchain.pem'}: {problem}; certbot keeps it, or add it to the config for certrenew to order"

    key_type = key_type_of(key.public_key())
    if key_type is None:
        return f"its key is {describe_key(key)}, a type certrenew does not issue; certbot keeps renewing it"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "the certificate names no DNS names"
    if san.get_values_for_type(x509.IPAddress):
        return "the certificate names IP addresses, which import-certbot does not take over: add it as a [[certificate]]"
    try:
        domains = sorted(san.get_values_for_type(x509.DNSName), key=lambda d: d != name)
        [spec] = certificate_specs(name, domains, key_type)  # HTTP-01: no wildcard
    except UsageError as error:
        return f"{error}; certbot keeps renewing it"
    notes = _not_carried_over(conf, cert, settings)
    return Takeover(name, spec, build_bundle(fullchain, key_pem),
                    certificate_info(cert), params["account"], notes)


def _not_issued(chain: list[x509.Certificate], now: datetime.datetime) -> str | None:
    """Why certbot's certificate is not one a CA issued and still valid, or None: the proof an issued
    certificate passes (see `bundle.check_issued`), where the names are the certificate's own.

    Whatever sits in live/ is taken for the CA's otherwise (a self-signed certificate valid
    for 100 years was imported, and reported ok until it expired). Whether the issuer is the
    CA's is for the CA to say (see `_unknown_to_the_ca`).
    """
    leaf = chain[0]
    if len(chain) < 2:
        self_signed = leaf.issuer == leaf.subject and chain_problem([leaf, leaf]) is None
        return "its certificate is self-signed, not issued by a CA" if self_signed else \
            f"it holds no certificate of its issuer ({leaf.issuer.rfc4514_string()})"
    problem = chain_problem(chain)
    if problem:
        return f"its chain is broken: {problem}"
    try:
        issuer_is_ca = chain[1].extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        issuer_is_ca = False
    if not issuer_is_ca:
        return f"its issuer ({chain[1].subject.rfc4514_string()}) is not a CA certificate"
    if now >= leaf.not_valid_after_utc:
        return f"it expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if now + CLOCK_SKEW < leaf.not_valid_before_utc:
        return f"it is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    return None


def _unknown_to_the_ca(settings: Settings, takeovers: list[Takeover]) -> tuple[dict[str, str], list[str]]:
    """The lineages whose certificate the CA says it did not issue (why, by lineage), and a note
    where it could not be asked.

    No chain shows that its issuer is the CA's: no ACME resource names a CA's
    intermediates. But a CA that speaks ARI (RFC 9773) answers renewal information for its
    own certificates only, 404 for another's (Let's Encrypt's Boulder does), so one GET per
    certificate tells. A CA without ARI (pebble), or one that does not answer, leaves the
    proof to the chain, and a note says so.
    """
    import requests  # only an import asks, once per certificate

    from certrenew.acme.ari import ari_cert_id
    from certrenew.acme.transport import describe

    url, verify = settings.acme.directory_url, settings.acme.ca_bundle or True
    try:
        response = requests.get(url, verify=verify, timeout=ASK_TIMEOUT)
        response.raise_for_status()
        base = response.json().get("renewalInfo")
    except (requests.RequestException, ValueError, AttributeError) as error:
        return {}, [f"certbot: the CA at {url} could not be asked whether it issued these certificates "
                    f"({describe(error)}); only their chains prove them"]
    if not isinstance(base, str):
        return {}, [f"certbot: the CA at {url} offers no renewal information (ARI), which would show it issued "
                    "these certificates; only their chains prove them"]
    unknown = {}
    for item in takeovers:
        try:
            status = requests.get(f"{base.rstrip('/')}/{ari_cert_id(leaf_certificate(item.bundle))}", verify=verify,
                                  timeout=ASK_TIMEOUT).status_code
        except x509.ExtensionNotFound:  # no authority key identifier: no CA's certificate lacks one
            status = 404
        except requests.RequestException:
            continue
        if status == 404:
            unknown[item.lineage] = (f"the CA at {url} does not know its certificate (its renewal information is "
                                     "404 Not Found): another CA issued it; certbot keeps it, or add it to the "
                                     "config for certrenew to order")
    return unknown, []


def _read(name: str, path: Path, noun: str = "PEM file") -> bytes:
    """A file of certbot's, read as the ssl dir's bundles are: a FIFO, a device or an oversized
    file is refused in one line naming it, not waited on or read until memory runs out."""
    try:
        content = read_bundle_file(path, noun, "not imported; certbot keeps regular files there")
    except CertrenewError as error:
        raise UsageError(f"{name}: {error}") from error
    if content is None:
        target = f" (-> {path.resolve()})" if path.is_symlink() else ""
        raise UsageError(f"{name}: cannot read {path}{target}: no such file")
    return content


def _not_carried_over(conf: dict[str, dict[str, str]], cert: x509.Certificate, settings: Settings) -> list[str]:
    """What certbot does for this lineage that certrenew will not: one line each."""
    params, notes = conf.get("renewalparams", {}), []
    authenticator = params.get("authenticator", "standalone")
    if authenticator != "standalone":
        webroot = f" ({params['webroot_path'].rstrip(',')})" if params.get("webroot_path") else ""
        notes.append(f"authenticator {authenticator}{webroot}: certrenew answers HTTP-01 itself, from its responder "
                     f"on {settings.responder.listen} behind HAProxy's acme-challenge ACL; route port 80 of every name there")
    elif params.get("http01_port") and params["http01_port"] != settings.responder.listen.rpartition(":")[2]:
        notes.append(f"http01_port {params['http01_port']}: certbot answered HTTP-01 there; certrenew's responder "
                     f"listens on {settings.responder.listen}: point HAProxy's acme backend at it")
    if params.get("installer", "none").lower() != "none":
        notes.append(f"installer {params['installer']}: certrenew installs into HAProxy only")
    notes += [f"{label} {params[key]!r}: certrenew does not run certbot's hooks"
              for key, label in HOOKS.items() if params.get(key)]
    if params.get("preferred_chain"):
        notes.append(f"preferred_chain {params['preferred_chain']!r}: certrenew installs the CA's default chain")
    try:
        cert.extensions.get_extension_for_class(x509.TLSFeature)
        notes.append("must-staple: certrenew's certificates do not carry the OCSP must-staple extension")
    except x509.ExtensionNotFound:
        pass
    if params.get("reuse_key", "").lower() == "true":
        notes.append("reuse_key: certrenew makes a new key for every certificate")
    if conf.get(TOP, {}).get("renew_before_expiry"):
        notes.append(f"renew_before_expiry {conf[TOP]['renew_before_expiry']!r}: certrenew renews by its own rule "
                     "(or renew_before)")
    return notes


def _account(store: Store, certbot_dir: Path, directory_url: str,
             takeovers: list[Takeover]) -> tuple[Account | None, str]:
    """certbot's account to reuse and its id; None if certrenew already has another for this CA.

    certrenew has one account per CA: that of the first lineage, or the one it had.
    """
    account_id = takeovers[0].account_id
    account: Account | None = _read_account(certbot_dir, directory_url, account_id)
    using = f"certbot's account {account_id}"
    own = store.load_account(directory_url)
    if own is not None and account is not None and own.key_pem != account.key_pem:
        account, account_id, using = None, "", "the account it already had"
    for item in takeovers:
        if item.account_id != account_id:
            item.notes.append(f"certbot's account {item.account_id}: certrenew renews with {using} "
                              f"for {directory_url} (one account per CA)")
    return account, account_id


def _read_account(certbot_dir: Path, directory_url: str, account_id: str) -> Account:
    """certbot's account for `directory_url`: its JWK private key as PEM, and its URI at the CA.

    certbot keeps it under accounts/<host[:port]>/<directory path>/<id>/; older ones under
    another server's directory (acme-v01 for acme-v02), hence the search.
    """
    accounts = certbot_dir / "accounts"
    parts = urlsplit(directory_url)
    directory = accounts / parts.netloc / parts.path.strip("/") / account_id
    if not directory.is_dir():
        directory = next((path for path in accounts.glob(f"**/{account_id}") if path.is_dir()), directory)
    import josepy as jose  # the ACME stack, only for an import

    try:
        jwk = jose.JWK.json_loads(_read(f"certbot account {account_id}", directory / "private_key.json", "certbot account file"))
        uri = json.loads(_read(f"certbot account {account_id}", directory / "regr.json", "certbot account file"))["uri"]
        if not isinstance(uri, str) or not uri.startswith("https://"):  # stored, it must read back
            raise ValueError(f"regr.json: the account URI {uri!r} is not an https:// URL")
    except OSError as error:
        raise UsageError(f"certbot account {account_id}: cannot read {error.filename}: {error.strerror}") from error
    except (ValueError, KeyError, TypeError, jose.DeserializationError) as error:
        raise UsageError(f"certbot account {account_id}: malformed account files in {directory}: "
                         f"{error or type(error).__name__}") from error
    key_pem = key_to_pem(jwk.key)
    key = load_key(key_pem)
    if not (isinstance(key, rsa.RSAPrivateKey) or key_type_of(key.public_key()) == "ecdsa-p256"):
        raise UsageError(f"certbot account {account_id}: its key is {describe_key(key)}; "
                         "certrenew signs with RSA or ECDSA P-256 account keys")
    return Account(key_pem, uri)


def _toml(item: Takeover, certbot_dir: Path) -> str:
    """A [[certificate]] table for `item`; JSON strings are valid TOML strings."""
    domains = ", ".join(json.dumps(domain) for domain in item.spec.domains)
    return (f"\n# Taken over from certbot ({certbot_dir / 'renewal' / item.lineage}.conf)\n"
            f"[[certificate]]\nname = {json.dumps(item.spec.name)}\ndomains = [{domains}]\n"
            f"key_type = {json.dumps(item.spec.key_type)}\n")


def _check_config(config_path: Path, text: str) -> None:
    """The config with the appended entries must load as certrenew will load it."""
    with tempfile.TemporaryDirectory() as scratch:
        trial = Path(scratch) / config_path.name
        trial.write_text(text)
        try:
            load_config(trial)
        except UsageError as error:
            message = str(error).replace(str(trial), str(config_path))
            raise UsageError(f"the config with certbot's certificates added would not load: {message}") from error


def _global_hooks(certbot_dir: Path) -> list[str]:
    """certbot runs every executable in renewal-hooks/{pre,deploy,post}/ on every renewal."""
    hooks = certbot_dir / "renewal-hooks"
    return [f"certbot: not carried over: {hook} (a {kind} hook for every certificate): certrenew does not run it"
            for kind in ("pre", "deploy", "post") for hook in sorted((hooks / kind).glob("*")) if hook.is_file()]


def _served(ssl_dir: Path) -> dict[str, list[Path]]:
    """The bundles in the ssl dir by the fingerprint of their leaf certificate."""
    served: dict[str, list[Path]] = {}
    for path in sorted(ssl_dir.glob("*.pem")) if ssl_dir.is_dir() else []:
        try:  # bounded, and a FIFO or a device named like a bundle is passed over, not waited on
            served.setdefault(leaf_info(read_bundle_file(path) or b"").fingerprint, []).append(path)
        except (OSError, ValueError, IndexError, CertrenewError):
            continue
    return served


def _ssl_dir_notes(settings: Settings, item: Takeover, served: dict[str, list[Path]]) -> list[str]:
    """Where HAProxy serves this certificate from today, compared with the file certrenew will write.

    Import does not touch the ssl dir: HAProxy keeps serving what it served. Renewals
    write `<name>.pem`; a bundle of the same certificate under another name would then
    be a second certificate for the same names, which HAProxy may keep serving.
    """
    if not settings.haproxy.ssl_dir.is_dir():
        return []
    target = settings.haproxy.ssl_dir / f"{item.spec.name}.pem"
    serving = served.get(item.info.fingerprint, [])
    notes = [f"{path} serves this certificate today, but renewals write {target.name}: rename it to that (and "
             "reload HAProxy) before the first renewal, or HAProxy holds both" for path in serving if path != target]
    if target.exists() and target not in serving:
        notes.append(f"{target} holds another certificate; the first renewal replaces it")
    elif not serving:
        notes.append(f"no bundle in {settings.haproxy.ssl_dir} holds this certificate; certrenew writes "
                     f"{target.name} at the first renewal (at once: certrenew run --force)")
    return notes
