"""A fleet on one store: a real 3-member etcd cluster, real pebble (counted through a FaultProxy), the real
`certrenew` CLI as one process per node. Exactly one order reaches the CA per certificate, whatever the nodes
do at once, pause, die, or whatever etcd's leader does (issue 22's "Must hold").

The validation of every name lands on node 1's HAProxy, whose responder (node 1's daemon, or a run) answers
what any node published in the store. Nodes 2 and 3 have ssl dirs of their own (serving them everywhere is
issue 23's part). Each test works under its own prefix, so the module shares one cluster.
"""

import collections
import re
import signal
import subprocess
import uuid

import pytest

from certrenew.challenge.responder import Responder
from certrenew.pki.bundle import leaf_info
from certrenew.state.board import Board
from certrenew.state.etcd import from_url
from certrenew.state.store import Store
from tests.harness.faultproxy import FaultProxy, step
from tests.harness.fleet import FLEET_PEBBLE, WAIT, fleet_config, node_1_responder, node_env, poll, signal_at_first
from tests.harness.lab import fleet_address, free_ports, parse_serial, terminate

pytestmark = [pytest.mark.pebble_env(FLEET_PEBBLE), pytest.mark.fleet]
TTL = 2
"""--lock-ttl of the tests that pause or kill a holder: a successor waits about this long."""


def issued_lines(text: str) -> list[str]:
    return re.findall(r"^.*?(\S+): (?:issued|renewed): ", text, re.M)


def test_three_daemons_started_at_once_order_each_of_20_certificates_once(lab, cluster, tmp_path):
    names = [f"c{index}.fleet.test" for index in range(20)]
    prefix, path = f"f-{uuid.uuid4().hex[:8]}", fleet_config(tmp_path, names)
    logs = [tmp_path / f"daemon{index}.log" for index in (1, 2, 3)]
    with FaultProxy(lab) as proxy:
        daemons = []
        try:
            for index, log in zip((1, 2, 3), logs):
                with open(log, "w") as out:
                    daemons.append(lab.start_certrenew(
                        "daemon", "--config", path, "--verbose", env={**proxy.env, **node_env(lab, cluster, prefix, index, tmp_path)},
                        stdout=out, stderr=subprocess.STDOUT))

            def all_passed():
                for daemon, log in zip(daemons, logs):
                    assert daemon.poll() is None, log.read_text()
                return all("pass done" in log.read_text() for log in logs)

            poll("a first pass of each daemon", all_passed)
        finally:
            for daemon in daemons:
                terminate(daemon)
        requests = collections.Counter(step for method, step in proxy.seen if method == "POST")
    issued = [name for log in logs for name in issued_lines(log.read_text())]
    assert sorted(issued) == sorted(names), "\n".join(log.read_text()[-3000:] for log in logs)
    assert requests["new-order"] == proxy.finalized() == 20, requests
    # The nodes did meet: at least two found a certificate's lock held by another node, and left it to that one.
    assert sum(1 for log in logs if re.search(r"another process works on it: certrenew on node\d", log.read_text())) >= 2


def test_a_holder_paused_past_its_lease_cannot_overwrite_its_successor(lab, cluster, tmp_path):
    name, prefix = "paused.fleet.test", f"p-{uuid.uuid4().hex[:8]}"
    path = fleet_config(tmp_path, [name])
    with FaultProxy(lab) as proxy, node_1_responder(lab, cluster, prefix):
        env = {**proxy.env, "CERTRENEW_LOCK_TTL": str(TTL)}
        first = lab.start_certrenew("run", "--config", path, env={**env, **node_env(lab, cluster, prefix, 2, tmp_path)})
        paused = signal_at_first(proxy, "finalize", lambda: first, signal.SIGSTOP)
        try:
            poll("node 2 paused at its finalize", lambda: paused)
            second = lab.certrenew("run", "--config", path, env={**env, **node_env(lab, cluster, prefix, 3, tmp_path)})
            assert second.returncode == 0, second.stderr
            # Node 3 takes over the order node 2 left (pebble finalized it meanwhile): installed, not ordered again.
            assert re.search(rf"{re.escape(name)}: (issued|installed)", second.stdout), second.stdout
            newer = leaf_info((tmp_path / "ssl3" / f"{name}.pem").read_bytes()).serial
        finally:
            first.send_signal(signal.SIGCONT)
        out, err = first.communicate(timeout=WAIT)
    assert "no longer held" in err, (out, err)  # its late write refused, and said
    assert not (tmp_path / "ssl2" / f"{name}.pem").exists()  # nothing installed out of order
    store = Store(from_url(cluster.url(prefix)))
    try:  # what the fleet serves (issue 23 installs it on every node): the successor's certificate
        assert store.load_record(name).serial == newer
    finally:
        store.backend.close()


def test_an_ordering_node_killed_mid_order_is_taken_over_once(lab, cluster, tmp_path):
    name, prefix = "killed.fleet.test", f"k-{uuid.uuid4().hex[:8]}"
    path = fleet_config(tmp_path, [name])
    with FaultProxy(lab) as proxy, node_1_responder(lab, cluster, prefix):
        env = {**proxy.env, "CERTRENEW_LOCK_TTL": str(TTL)}
        first = lab.start_certrenew("run", "--config", path, env={**env, **node_env(lab, cluster, prefix, 2, tmp_path)})
        killed = signal_at_first(proxy, "finalize", lambda: first, signal.SIGKILL)
        poll("node 2 killed at its finalize", lambda: killed)
        first.wait(WAIT)
        second = lab.certrenew("run", "--config", path, env={**env, **node_env(lab, cluster, prefix, 3, tmp_path)})
        assert second.returncode == 0, second.stderr
        finalized = proxy.count("finalize")
    assert first.returncode == -signal.SIGKILL
    assert re.search(rf"{re.escape(name)}: (issued|renewed|installed)", second.stdout), second.stdout
    assert finalized <= 2  # the order the dead node left, finalized again at most once
    assert (tmp_path / "ssl3" / f"{name}.pem").exists()


def test_etcds_leader_killed_during_a_batch_loses_and_duplicates_nothing(lab, cluster, tmp_path):
    names = [f"l{index}.fleet.test" for index in range(6)]
    prefix, path = f"l-{uuid.uuid4().hex[:8]}", fleet_config(tmp_path, names)
    leader = cluster.leader()
    with FaultProxy(lab) as proxy:
        orders: list[str] = []
        killed: list[int] = []

        def on_request(method, path_):
            if method == "POST" and step(path_) == "new-order":
                orders.append(path_)
                if len(orders) == 3:
                    cluster.kill(leader)
                    killed.append(leader)
            return None

        proxy.on_request = on_request
        try:
            result = lab.certrenew("run", "--config", path, env={
                **proxy.env, "CERTRENEW_CONCURRENCY": "2", **node_env(lab, cluster, prefix, 1, tmp_path)})
        finally:
            if leader not in cluster.running():
                cluster.restart(leader)
        requests = collections.Counter(step for method, step in proxy.seen if method == "POST")
    assert killed == [leader], "the leader was never killed"
    assert result.returncode == 0, result.stderr
    assert requests["new-order"] == proxy.finalized() == 6, requests
    for name in names:
        lab.served_certificate(name)


def test_the_probe_proves_every_node_answers_from_the_store_before_anything_is_ordered(lab, cluster, tmp_path):
    """--http-01-node on a shared store: the probe's token is published in the store, and must come back through
    each node's HAProxy (its daemon's responder answers from the store): the CA validates at whichever node the
    name resolves to. A node that does not answer fails the certificate before any order."""
    name, prefix = "probe.fleet.test", f"n-{uuid.uuid4().hex[:8]}"
    (port,) = free_ports(1)
    lab.start_fleet_node(2, responder=f"{fleet_address(2)}:{port}")
    nodes = [f"{fleet_address(index)}:{lab.http_port}" for index in (1, 2)]
    args = [name, *(arg for node in nodes for arg in ("--http-01-node", node))]
    with FaultProxy(lab) as proxy:
        env = {**proxy.env, **node_env(lab, cluster, prefix, 1, tmp_path)}
        refused = lab.certrenew(*args, env=env)
        assert refused.returncode != 0
        assert f"at HAProxy node {nodes[1]}, not a certrenew daemon's responder" in refused.stdout + refused.stderr
        assert proxy.count("new-order") == 0
        store = Store(from_url(cluster.url(prefix)), holder="node2")
        try:  # node 2's daemon
            with Board(store) as board, Responder(f"{fleet_address(2)}:{port}", board) as responder:
                responder.start()
                issued = lab.certrenew(*args, env=env)
        finally:
            store.backend.close()
        assert issued.returncode == 0, issued.stdout + issued.stderr
        assert proxy.count("new-order") == 1
    assert lab.served_certificate(name).serial_number == parse_serial(leaf_info((lab.ssl_dir / f"{name}.pem").read_bytes()).serial)
