"""`certrenew status`: what each certificate looks like right now, from stored state alone."""

import datetime
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from certrenew.config import CertificateSpec, Settings
from certrenew.errors import CertrenewError
from certrenew.renewal.policy import due_reason, minutes, renew_at
from certrenew.state.store import CertificateRecord, Store, StoredRecord, open_store
from certrenew.system.strenum import StrEnum

JSON_VERSION = 1
class State(StrEnum):
    """A certificate's state in `status`, its --json and the metrics."""

    OK = "ok"
    DUE = "due"
    FAILING = "failing"
    EXPIRED = "expired"
    REVOKED = "revoked"
    MISSING = "missing"
    """Never issued."""
    SHADOWED = "shadowed"
    """Another bundle in the ssl dir claims its names."""
    UNMANAGED = "unmanaged"
    """Not in the config."""


HEALTHY = State.OK


@dataclass(frozen=True)
class CertificateStatus:
    """One row of `certrenew status`; `to_json` is the documented, stable --json form."""

    name: str
    domains: list[str]
    state: State
    serial: str | None
    not_after: datetime.datetime | None
    days_left: float | None
    next_renewal: datetime.datetime | None
    last_error: str | None
    failures: int
    shadowed_by: str | None = None
    """Why a run refuses to order it: another bundle in the ssl dir claims its names (see `install.shadowing`)."""
    ca: str | None = None
    """The ACME directory URL of the CA that issued the current certificate (a fallback's, say)."""
    generation: int | None = None
    """The version of its record's last write in the store (None: no record): see `StoredRecord`."""

    @property
    def last_result(self) -> str:
        if self.shadowed_by:
            return f"refused: {self.shadowed_by}"
        if self.last_error:
            return f"failed: {self.last_error}"
        return "ok" if self.serial else "never issued"

    def to_json(self) -> dict:
        from certrenew.pki.bundle import (
            serial_hex,  # cryptography: not for status's other readers (metrics, a no-op run)
        )

        def when(value):
            return value.replace(microsecond=0).isoformat() if value else None

        return {
            "name": self.name,
            "domains": self.domains,
            "state": self.state,
            # As everywhere (see `serial_hex`), a record written before it used that spelling included.
            "serial": serial_hex(int(self.serial, 16)) if self.serial else None,
            "not_after": when(self.not_after),
            "days_left": None if self.days_left is None else round(self.days_left, 2),
            "next_renewal": when(self.next_renewal),
            "last_result": self.last_result,
            "failures": self.failures,
            "ca": self.ca,
        }


def collect(settings: Settings, specs: list[CertificateSpec] | None, store: Store | None = None,
            now: datetime.datetime | None = None, read_ssl_dir: bool = False) -> list[CertificateStatus]:
    """Every managed certificate (all stored ones when `specs` is None), then the unmanaged ones.

    Reads `store` (by default the one the settings name, see `open_store`) without taking its
    lock: status never writes. A record that cannot be read is a row "failing" with the
    reason, not the end of the report. With `read_ssl_dir`, the ssl dir's bundles are read too,
    and a certificate another one shadows is "shadowed": `certrenew status` asks, the
    daemon's endpoints, asked every few seconds, do not.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    store = store if store is not None else open_store(settings)
    managed = {spec.name for spec in specs or ()}
    stored = store.records()  # one listing, not a read per certificate
    rows = []
    for spec in specs or ():
        found = stored.get(spec.name)
        if found is not None and found.error is not None:
            rows.append(_unreadable(spec, found.error, generation=found.generation))
        else:
            rows.append(_status(settings, spec, found, now))
    if read_ssl_dir and specs and not settings.haproxy.crt_list:  # see install.shadowing
        rows = _shadowed(settings, specs, rows)
    for name, found in stored.items():
        if name in managed:
            continue
        if found.record is None:
            rows.append(_unreadable(CertificateSpec(name, ()), found.error, managed=specs is None,
                                    generation=found.generation))
        else:
            rows.append(_status(settings, _spec_of(found.record), found, now, managed=specs is None))
    return rows


def unhealthy(settings: Settings, rows: list[CertificateStatus]) -> str | None:
    """Why the certificates are not healthy, or None when every managed one is ok.

    Nothing managed is not healthy: a monitoring check pointed at the wrong config or
    state dir must fail loudly, not report all clear.
    """
    if not any(row.state != State.UNMANAGED for row in rows):
        if settings.store and "://" in settings.store:
            return f"no certificate is managed in {settings.store}: check --config and --store"
        where = "" if settings.state_dir.is_dir() else f" (no state dir {settings.state_dir})"
        return f"no certificate is managed{where}: check --config and --state-dir"
    bad = [f"{row.name} is {row.state}" for row in rows if row.state not in (HEALTHY, State.UNMANAGED)]
    return ", ".join(bad) or None


def forget_hint(names: list[str]) -> str:
    """What stops a certificate failing for ever (a mistyped or abandoned name): it is not dropped by itself."""
    name = names[0] if len(names) == 1 else "NAME"
    return (f"a name no longer wanted stops failing once it is out of the config and "
            f"`certrenew revoke {name} --delete` has removed it")
def _shadowed(settings: Settings, specs: list[CertificateSpec], rows: list[CertificateStatus]) -> list[CertificateStatus]:
    """`rows` (one per spec, in order), those another bundle in the ssl dir shadows marked so."""
    from certrenew.haproxy.install import shadowed  # cryptography: only when the ssl dir is read

    problems = shadowed(settings.haproxy.ssl_dir, specs)
    return [replace(row, state=State.SHADOWED, shadowed_by=problems[spec.name]) if spec.name in problems else row
            for spec, row in zip(specs, rows)]


def _spec_of(record: CertificateRecord) -> CertificateSpec:
    return CertificateSpec(record.name, tuple(record.domains), record.key_type)


def _unreadable(spec: CertificateSpec, error: CertrenewError | None, managed: bool = True,
                generation: int | None = None) -> CertificateStatus:
    return CertificateStatus(spec.name, list(spec.domains), State.FAILING if managed else State.UNMANAGED, None, None, None,
                             None, str(error), 0, generation=generation)


def _status(settings: Settings, spec: CertificateSpec, stored: StoredRecord | None,
            now: datetime.datetime, managed: bool = True) -> CertificateStatus:
    record = stored.record if stored is not None else None
    not_after = record.not_after if record is not None else None
    issued = record if not_after is not None else None
    next_renewal = (issued.revoked or renew_at(issued, settings.renew_before)) if issued else None
    if record is not None and record.next_attempt and (next_renewal is None or record.next_attempt > next_renewal):
        next_renewal = record.next_attempt
    due = issued is None or due_reason(record, list(spec.domains), spec.key_type, now, settings.renew_before,
                                       settings.acme.directory_urls) is not None
    if not managed:
        state = State.UNMANAGED
    elif not_after is not None and now >= not_after:
        state = State.EXPIRED
    elif record is not None and record.failures and due:
        # A failed --force on a certificate not yet due leaves it serving and in time: its error is
        # shown in last_result, but keeping status red until the renewal time would cry wolf.
        state = State.FAILING
    elif not issued:
        state = State.MISSING
    elif issued.revoked:
        state = State.REVOKED
    elif due:
        state = State.DUE
    else:
        state = HEALTHY
    return CertificateStatus(
        name=spec.name,
        domains=list(spec.domains),
        state=state,
        serial=issued.serial if issued else None,
        not_after=not_after,
        days_left=(not_after - now).total_seconds() / 86400 if not_after is not None else None,
        next_renewal=next_renewal,
        last_error=record.last_error if record else None,
        failures=record.failures if record else 0,
        ca=(issued.directory or settings.acme.directory_url) if issued else None,  # unrecorded: the configured CA
        generation=stored.generation if stored is not None else None,
    )


def format_table(rows: list[CertificateStatus]) -> str:
    """A plain text table, one row per certificate."""
    header = ("NAME", "STATE", "DOMAINS", "NOT AFTER", "DAYS LEFT", "NEXT RENEWAL", "CA", "LAST RESULT")
    lines = [header]
    for row in rows:
        lines.append((
            row.name,
            row.state,
            ",".join(row.domains),
            minutes(row.not_after) if row.not_after else "-",
            f"{row.days_left:.1f}" if row.days_left is not None else "-",
            minutes(row.next_renewal) if row.next_renewal else "-",
            urlsplit(row.ca).netloc if row.ca else "-",  # the host tells CAs apart; the URL is in --json
            row.last_result,
        ))
    widths = [max(map(len, column)) for column in list(zip(*lines))[:-1]]
    template = "  ".join(f"{{:<{width}}}" for width in widths) + "  {}"
    return "\n".join(template.format(*line) for line in lines)
