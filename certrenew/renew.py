"""A renewal run: decide what is due, order it, install it, record it.

This module is the library API behind the CLI. The ACME stack is imported only when
something is due, so a run with nothing to do reads a few small files and exits.
"""

import datetime
import logging
import os
from dataclasses import dataclass

from certrenew.atomicfile import remove_stale_temps
from certrenew.config import CertificateSpec, Settings
from certrenew.errors import CertrenewError
from certrenew.policy import decide
from certrenew.store import CertificateRecord, FileStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What a run did for one certificate."""

    name: str
    action: str
    """"issued", "renewed", "installed" (a pending one), "unchanged" or "failed"."""
    detail: str

    @property
    def failed(self) -> bool:
        return self.action == "failed"


def run(settings: Settings, specs: list[CertificateSpec]) -> list[Outcome]:
    """Bring every certificate in `specs` up to date and return what happened to each."""
    now = _now()
    store = FileStore(settings.state_dir)
    store.prepare()
    _check_ssl_dir(settings)
    remove_stale_temps(settings.ssl_dir)

    outcomes: dict[str, Outcome] = {}
    work = []
    for spec in specs:
        if store.load_bundle(spec.name, "pending") is not None:
            log.info("%s: installing the certificate a previous run issued", spec.name)
            work.append((spec, "resume"))
            continue
        decision = decide(store.load_record(spec.name), list(spec.domains), spec.key_type, now, settings.force)
        if decision.due:
            log.info("%s: renewing (%s)", spec.name, decision.reason)
            work.append((spec, "issue"))
        else:
            outcomes[spec.name] = Outcome(spec.name, "unchanged", decision.reason)

    if work:
        from certrenew.issue import Issuer  # the ACME stack, only when there is work

        with Issuer(settings, store) as issuer:
            for spec, step in work:
                outcomes[spec.name] = _attempt(store, spec, now, getattr(issuer, step))
    return [outcomes[spec.name] for spec in specs]


def _attempt(store: FileStore, spec: CertificateSpec, now: datetime.datetime, step) -> Outcome:
    """Run one certificate's step; a failure is recorded and reported, not raised."""
    try:
        return step(spec)
    except CertrenewError as error:
        record = store.load_record(spec.name) or CertificateRecord(spec.name, list(spec.domains), spec.key_type)
        record.last_attempt, record.last_error, record.failures = now, str(error), record.failures + 1
        store.save_record(record)
        return Outcome(spec.name, "failed", str(error))


def _check_ssl_dir(settings: Settings) -> None:
    ssl_dir = settings.ssl_dir
    if not ssl_dir.is_dir():
        raise CertrenewError(f"the ssl dir {ssl_dir} does not exist (create it, or set --ssl-dir)")
    if not os.access(ssl_dir, os.W_OK):
        raise CertrenewError(f"the ssl dir {ssl_dir} is not writable by this user")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
