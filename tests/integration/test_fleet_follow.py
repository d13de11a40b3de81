"""Every node serves what the fleet issued (issue 23's "Must hold"): a real 3-member etcd cluster, real pebble,
three real HAProxy nodes (the lab's on 127.0.0.1, nodes 2 and 3 on 127.0.0.2 and .3, each with its own ssl dir
and Runtime API), the real `certrenew daemon` on each. What each node serves is asked of it by a TLS client
with SNI; what the fleet holds is the record in etcd. Each test works under its own prefix, so the module
shares one cluster. Validations land on node 1, whose daemon answers what any node published (shared tokens).
"""

import contextlib
import datetime
import json
import signal
import threading
import time

import pytest
import requests

from certrenew.haproxy.runtime_api import RuntimeApi, argument
from certrenew.pki.placeholder import PLACEHOLDER_FILE
from tests.harness.fleet import FLEET_PEBBLE, fleet, poll
from tests.harness.lab import Lab, check_haproxy_config, log_size, terminate
from tests.harness.relay import Relay

pytestmark = [pytest.mark.pebble_env(FLEET_PEBBLE), pytest.mark.fleet]
VALIDITY = 30
"""Seconds pebble's certificates live in the renewal tests: each is renewed about every 15 s."""
SLOW = 0.3
"""Seconds the relay in front of node 2's Runtime API holds each connection: a catch-up of seconds."""


class SlowRelay(Relay):
    """A relay that holds each connection for SLOW seconds before it passes it on."""

    def _relay(self, client) -> None:
        time.sleep(SLOW)
        super()._relay(client)


@contextlib.contextmanager
def short_lived_fleet(cluster, tmp_path, name):
    """Three daemons on certificate `name` in a lab of its own, of short-lived certificates, once every node
    serves the first one: the fleet and that serial."""
    with Lab(tmp_path / "lab", pebble_env=FLEET_PEBBLE, certificate_validity=VALIDITY) as lab, \
            fleet(lab, cluster, tmp_path, [name]) as nodes:
        nodes.start(1, 2, 3)
        yield nodes, nodes.wait_everywhere("the first certificate served everywhere")[name]


def test_three_daemons_on_20_certificates_serve_each_with_the_same_serial_on_every_node(lab, cluster, tmp_path):
    names = [f"e{index}.fleet.test" for index in range(20)]
    with fleet(lab, cluster, tmp_path, names) as nodes:
        nodes.start(1, 2, 3)
        serials = nodes.wait_everywhere("all 20 served by every node")

        def status_says_current() -> dict | None:
            """`certrenew status --json` on node 1, once it says every node serves every certificate."""
            result = lab.certrenew("status", "--json", "--config", nodes.config,
                                   env={**nodes.env[1], "CERTRENEW_METRICS_LISTEN": None})
            document = json.loads(result.stdout)
            rows = document["certificates"]
            return document if len(rows) == 20 and all(
                row["lagging"] == [] and set(row["nodes"]) == {"node1", "node2", "node3"} for row in rows) else None

        # What each node reports is written after its batch: status shows it once the last report is in.
        status = poll("status showing all three nodes current", status_says_current)
        logs = [nodes.log(index).read_text() for index in (1, 2, 3)]
    assert len(serials) == 20 and len(set(serials.values())) == 20
    assert {node["node"]: node["lagging"] for node in status["nodes"]} == {"node1": 0, "node2": 0, "node3": 0}
    # Each certificate was issued by one node, and given to the others by the store.
    issued = [sum(f"{name}: issued" in log for name in names) for log in logs]
    assert sum(issued) == 20, issued
    assert all("served as the store holds it" in log for log, count in zip(logs, issued) if count < 20)


@pytest.mark.haproxy  # its own lab, of short-lived certificates
def test_a_renewal_is_served_by_all_three_nodes(cluster, tmp_path):
    name = "renewed.fleet.test"
    with short_lived_fleet(cluster, tmp_path, name) as (nodes, first):
        renewed = poll("a renewal in the store", lambda: (serial := nodes.stored(name)) != first and serial,
                       interval=0.01)
        poll("the renewal served by every node",
             lambda: all(nodes.served(index, name) == renewed for index in (1, 2, 3)), interval=0.01)
        lag = datetime.datetime.now(datetime.timezone.utc) - nodes.store.load_record(name).issued_at
    # issued_at is stamped just before the record's write (the promotion) commits: the lag is an upper bound.
    print(f"\nrenewal: from the store's record to the last of 3 nodes serving it: {lag.total_seconds() * 1000:.0f} ms")


@pytest.mark.haproxy  # its own lab, of short-lived certificates
def test_a_restarted_node_serves_the_renewal_it_missed_before_it_says_it_is_healthy(cluster, tmp_path):
    name = "restarted.fleet.test"
    with short_lived_fleet(cluster, tmp_path, name) as (nodes, old):
        terminate(nodes.daemons[2])
        old = nodes.served(2, name)
        poll("a renewal while node 2 is down", lambda: nodes.stored(name) not in (None, old))
        assert nodes.served(2, name) == old  # nobody else installs into node 2
        answers: list[tuple[int, int | None]] = []
        stop = threading.Event()

        def watch_health() -> None:
            """Every /healthz answer, and for each 200 what node 2 serves right after it."""
            while not stop.is_set():
                try:
                    code = nodes.health(2).status_code
                except requests.RequestException:
                    code = 0
                answers.append((code, nodes.served(2, name) if code == 200 else None))
                time.sleep(0.01)

        watcher = threading.Thread(target=watch_health)
        watcher.start()
        # Node 2's Runtime API answers late, as a busy HAProxy's does: its catch-up takes seconds, not milliseconds.
        with SlowRelay("api", str(nodes.env[2]["CERTRENEW_HAPROXY_SOCKET"]), tmp_path / "slow.sock") as relay:
            nodes.env[2]["CERTRENEW_HAPROXY_SOCKET"] = str(relay.address)
            try:
                nodes.start(2)
                poll("node 2 healthy again", lambda: nodes.alive(2) and any(code == 200 for code, _ in answers))
            finally:
                stop.set()
                watcher.join()
        log = nodes.log(2).read_text()
    healthy = [serial for code, serial in answers if code == 200]
    assert old not in healthy, answers  # never healthy while still serving the certificate it missed
    catching_up = sum(code == 503 for code, _ in answers)
    print(f"\nrestart: /healthz answered 503 (catching up) {catching_up} times, then 200")
    assert catching_up, answers  # it was seen catching up
    assert "caught up with the store" in log


@pytest.mark.haproxy  # its own lab, of short-lived certificates
def test_a_node_that_lost_its_watch_events_to_a_compaction_resyncs_and_serves_the_current_serial(cluster, tmp_path):
    name = "compacted.fleet.test"
    with short_lived_fleet(cluster, tmp_path, name) as (nodes, old):
        nodes.daemons[3].send_signal(signal.SIGSTOP)
        try:
            old = nodes.served(3, name)  # its own, if it was the one that renewed
            renewed = poll("a renewal while node 3 is paused", lambda: nodes.stored(name) not in (None, old)
                           and nodes.served(2, name) == nodes.stored(name) and nodes.stored(name))
            revision = json.loads(cluster.etcdctl("put", f"{nodes.prefix}/compact-marker", "x", "-w", "json"))
            revision = int(revision["header"]["revision"])
            cluster.etcdctl("compact", str(revision))
            assert nodes.served(3, name) == old
            since = log_size(nodes.log(3))
        finally:
            nodes.daemons[3].send_signal(signal.SIGCONT)
        # The serial of the compaction's time, not a later renewal's (which a watch would bring): a resync.
        poll("node 3 serving the certificate it missed", lambda: nodes.alive(3) and nodes.served(3, name) == renewed,
             timeout=10)
        after = nodes.log(3).read_text()[since:]
    assert "following the store afresh" in after, after[-3000:]  # it resynced: the events it missed were gone
    assert renewed != old


def test_revoke_delete_on_one_node_removes_the_certificate_from_every_node_and_each_haproxy_can_start(
        lab, cluster, tmp_path):
    name = "deleted.fleet.test"
    with fleet(lab, cluster, tmp_path, [name]) as nodes:
        one_shot = {**nodes.env[1], "CERTRENEW_METRICS_LISTEN": None}
        issued = lab.certrenew("run", "--config", nodes.config, env=one_shot)
        assert issued.returncode == 0, issued.stderr
        nodes.start(2, 3)  # after the issue: a daemon's pass would order the name again once it is deleted
        serial = nodes.wait_everywhere("served by every node")[name]
        for index in (1, 2, 3):  # it is the last bundle of every ssl dir: HAProxy keeps the placeholder in memory
            (nodes.ssl_dir(index) / PLACEHOLDER_FILE).unlink()
        result = lab.certrenew("revoke", name, "--yes", "--delete", env={**one_shot, "CERTRENEW_CONFIG": None})
        assert result.returncode == 0, result.stdout + result.stderr
        poll("no node serving it", lambda: all(map(nodes.alive, (2, 3)))
             and all(nodes.served(index, name) != serial for index in (1, 2, 3)))
        poll("its bundle gone from every ssl dir", lambda: not any((nodes.ssl_dir(index) / f"{name}.pem").exists()
                                                                   for index in (1, 2, 3)))
        for index in (1, 2, 3):
            assert (nodes.ssl_dir(index) / PLACEHOLDER_FILE).exists()
        for config_file in (lab.haproxy_cfg, lab.workdir / "node2.cfg", lab.workdir / "node3.cfg"):
            check_haproxy_config(config_file)  # each HAProxy could start on what its ssl dir holds
        logs = [nodes.log(index).read_text() for index in (2, 3)]
    assert all(f"{name}: serial" in log and "removed, as the fleet's store did" in log for log in logs), logs


def test_a_node_serving_a_crt_list_gets_the_fleets_certificate_as_a_line_of_its_own_and_renews_it_in_place(
        lab, cluster, tmp_path):
    """Node 2's HTTPS bind serves a crt-list (`--crt-list`): the certificate node 1 issued goes in beside the
    operator's line with the certificate's `crt_list_options`, and into the running HAProxy; its renewal
    replaces the entry, never a second line."""
    name = "listed.fleet.test"
    options = f"[alpn h2,http/1.1] {name}"
    config = tmp_path / "listed.toml"
    config.write_text(f'[[certificate]]\ndomains = ["{name}"]\ncrt_list_options = "{options}"\n')
    crt_list = tmp_path / "node2.lst"
    operator = f"{tmp_path / 'ssl2' / PLACEHOLDER_FILE} [ssl-min-ver TLSv1.2]\n"
    crt_list.write_text(operator)
    with fleet(lab, cluster, tmp_path, [name], config=str(config), crt_lists={2: crt_list}) as nodes:
        one_shot = {**nodes.env[1], "CERTRENEW_METRICS_LISTEN": None}
        issued = lab.certrenew("run", "--config", nodes.config, env=one_shot)
        assert issued.returncode == 0, issued.stderr
        nodes.start(2, 3)  # after the issue: node 2 follows what node 1 issued
        serial = nodes.wait_everywhere("served by every node")[name]
        bundle = nodes.ssl_dir(2) / f"{name}.pem"
        assert crt_list.read_text() == operator + f"{bundle} {options}\n"
        api = RuntimeApi(nodes.env[2]["CERTRENEW_HAPROXY_SOCKET"])

        def entries() -> list[str]:
            answer = api.command(f"show ssl crt-list {argument(str(crt_list))}")
            return [line for line in answer.splitlines() if line.startswith(str(bundle))]
        [entry] = entries()
        assert "alpn h2,http/1.1" in entry and name in entry

        renewed = lab.certrenew("run", "--force", "--config", nodes.config, env=one_shot)
        assert renewed.returncode == 0, renewed.stderr
        poll("the renewal served by every node", lambda: all(map(nodes.alive, (2, 3))) and (
            (serials := nodes.everywhere()) is not None and serials[name] != serial))
        assert crt_list.read_text() == operator + f"{bundle} {options}\n"  # the same line, once
        assert entries() == [entry]
        log = nodes.log(2).read_text()
    assert f"{name}: issued" not in log and "served as the store holds it" in log, log
