"""`scripts/bench --fleet`: how fast a renewal reaches every node of a fleet.

Three HAProxy nodes (127.0.0.1, .2, .3) and three `certrenew daemon`s on one store, a real 3-member
etcd cluster, pebble issuing 30-second certificates (due 15 s after issuance). For each renewal:
the time from the store's commit of the renewed certificate (seen by a watch of the store in this
process) to the last node serving it, and from its renewal time to every node serving it. Each
node is asked by a TLS client with SNI from a thread of its own, every SERVE_POLL seconds: a
figure is late by at most that and a handshake.
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from certrenew.renewal.policy import renew_at
from certrenew.state.store import CERTIFICATES
from tests.harness.etcd import EtcdCluster
from tests.harness.fleet import FLEET_PEBBLE, fleet
from tests.harness.lab import Lab, parse_serial

VALIDITY = 30
"""Seconds pebble's certificates live: each falls due half-way, 15 s after issuance."""
NAME = "fleet.bench.example"
NODES = (1, 2, 3)
SERVE_POLL = 0.002
WATCH = 1.0


def fleet_latency(runs: int, workdir: Path, say: Callable[[str], None] = lambda line: None) -> list[tuple[float, float]]:
    """(commit -> last node serving, due -> every node serving), in seconds, for `runs` renewals in a row."""
    with EtcdCluster(workdir / "etcd") as cluster, \
            Lab(workdir / "lab", pebble_env=FLEET_PEBBLE, certificate_validity=VALIDITY) as lab, \
            fleet(lab, cluster, workdir, [NAME]) as nodes, ThreadPoolExecutor(1 + len(NODES)) as pool:
        nodes.start(*NODES)
        nodes.wait_everywhere("the first certificate served by every node")
        samples = []
        for _ in range(runs):
            record = nodes.store.load_record(NAME)
            old, due = parse_serial(record.serial), renew_at(record).timestamp()
            committed = pool.submit(_committed, nodes.store.backend, old)
            served = [pool.submit(_served, nodes, index, old) for index in NODES]
            last = max(when.result() for when in served)
            samples.append((last - committed.result(), last - due))
            say(f"renewal: commit -> last node {samples[-1][0] * 1000:.0f} ms, due -> every node "
                f"{samples[-1][1] * 1000:.0f} ms")
    return samples


def _committed(backend, old: int) -> float:
    """When a watch of the store brought a record of NAME with a serial other than `old` (its commit, within
    a round trip)."""
    prefix, revision = f"{CERTIFICATES}/{NAME}/", 0
    deadline = time.monotonic() + 3 * VALIDITY
    while time.monotonic() < deadline:
        changes = backend.watch(prefix, revision, WATCH)
        revision = changes.revision
        entry = changes.entries.get(f"{prefix}meta.json")
        if entry is not None and parse_serial(json.loads(entry.value)["serial"]) != old and not changes.complete:
            return time.time()
    raise TimeoutError("no renewal committed to the store")


def _served(nodes, index: int, old: int) -> float:
    """When node `index` first served a certificate for NAME other than serial `old`."""
    deadline = time.monotonic() + 3 * VALIDITY
    while time.monotonic() < deadline:
        if nodes.served(index, NAME) not in (None, old):
            return time.time()
        time.sleep(SERVE_POLL)
    raise TimeoutError(f"node {index} did not serve the renewal")


def print_fleet(samples: list[tuple[float, float]]) -> None:
    for label, values, target in (("store commit -> last of 3 nodes serving", [s[0] for s in samples], "< 100 ms"),
                                  ("due -> served on every node", [s[1] for s in samples], "")):
        print(f"{label}: median {statistics.median(values) * 1000:.0f} ms (min {min(values) * 1000:.0f}, "
              f"max {max(values) * 1000:.0f})" + (f"   target {target}" if target else ""))


def main(args: argparse.Namespace, workdir: Path) -> None:
    print(f"certrenew fleet: 3 HAProxy nodes, 3 daemons, a 3-member etcd cluster, {VALIDITY}-second certificates "
          f"from pebble, {args.runs} renewals in a row", flush=True)
    print_fleet(fleet_latency(args.runs, workdir, print if args.verbose else lambda line: None))
