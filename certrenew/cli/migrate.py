"""`certrenew migrate-state`: move one node's state into a fleet's etcd store (or back) without
reissuing anything.

Every entry is copied as it is (records, bundles current, previous and pending, accounts, orders,
what was set aside or archived), each certificate's entries in one write, so a copy that stops
half-way leaves whole certificates. Both stores are held whole meanwhile (no run changes the
source, nor writes the destination), and the copy is read back before it is reported. The source
is left as it was: the operator removes it once the nodes run on the destination.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from certrenew.config import Settings
from certrenew.errors import CertrenewError, UsageError
from certrenew.state.backend import ABSENT, Entry
from certrenew.state.etcd import MAX_OPS
from certrenew.state.sealed import CHECK_KEY
from certrenew.state.store import CERTIFICATES, open_store
from certrenew.system.runcontext import RunContext


@dataclass(frozen=True)
class Migrated:
    entries: int
    certificates: int
    accounts: int


def migrate(settings: Settings, source: str, destination: str, overwrite: bool = False,
            context: RunContext | None = None) -> Migrated:
    """Copy the whole state at `source` (a directory or etcd://...) to `destination`, refused
    (UsageError, nothing written) when the destination holds state already, unless `overwrite`."""
    if source == destination:
        raise UsageError(f"--from and --to both name {source}: nothing to migrate")
    if "://" not in source and not Path(source).is_dir():
        raise UsageError(f"--from {source}: no such state dir")
    stores = [open_store(settings.with_options(store=where), context) for where in (source, destination)]
    origin, target = stores
    with origin.lock(settings.lock_timeout), target.lock(settings.lock_timeout):
        entries = _state(origin.backend.list(""))
        if not entries:
            raise UsageError(f"{source} holds no state to migrate (is it the node's state dir or store?)")
        there = _state(target.backend.list(""))
        if there and not overwrite:
            raise UsageError(f"{destination} holds state already ({len(there)} entries): migrate into an empty "
                             "store, or give --overwrite to replace what both hold")
        for batch in _batches(entries, there):
            expect = {key: there[key].version if key in there else ABSENT for key in batch}
            target.backend.write({key: entries[key].value if key in entries else None for key in batch}, expect=expect)
        copied = _state(target.backend.list(""))
        groups = {_group(key) for key in entries}
        lost = sorted([key for key, entry in entries.items() if key not in copied or copied[key].value != entry.value]
                      + [key for key in copied if key not in entries and _group(key) in groups])
        if lost:
            raise CertrenewError(f"{len(lost)} entries did not arrive whole at {destination} (first "
                                 f"{target.backend.where(lost[0])}); {source} is unchanged")
    names = {key.split("/")[1] for key in entries if key.startswith(f"{CERTIFICATES}/")}
    accounts = {key.split("/")[1] for key in entries if key.startswith("accounts/")}
    return Migrated(len(entries), len(names), len(accounts))


def _state(entries: dict[str, Entry]) -> dict[str, Entry]:
    """The state's entries, without the store's own check of its key file (each store has its own)."""
    return {key: entry for key, entry in entries.items() if key != CHECK_KEY}


def _group(key: str) -> str:
    """What `key` is part of: a certificate (`certificates/NAME`), an account, an archive."""
    return "/".join(key.split("/")[:2])


def _batches(entries: dict[str, Entry], there: dict[str, Entry]) -> Iterator[list[str]]:
    """The keys by certificate (or account), each group one write, split only past a transaction's size: the
    source's, and those the destination holds of the same group, to delete (a certificate arrives whole, not
    beside a pending bundle or an order of the destination's own that the next run would install or resume)."""
    groups: dict[str, list[str]] = {}
    for key in sorted(entries):
        groups.setdefault(_group(key), []).append(key)
    for key in sorted(there.keys() - entries.keys()):
        if _group(key) in groups:
            groups[_group(key)].append(key)
    for keys in groups.values():
        for start in range(0, len(keys), MAX_OPS):
            yield keys[start:start + MAX_OPS]
