"""The fleet as `certrenew status --json` shows it, on a real 3-member etcd cluster: two certificates issued
by node 1's real `certrenew run`, the nodes' reports published as a node's follower publishes them
(`nodes.publish`), and a real run on node 2 stopped while it holds a certificate's lock.
"""

import datetime
import json
import signal
import uuid

import pytest

from certrenew.state.etcd import from_url
from certrenew.state.nodes import Behind, NodeReport, publish
from tests.harness.faultproxy import FaultProxy
from tests.harness.fleet import FLEET_PEBBLE, fleet_config, node_1_responder, node_env, poll, signal_at_first

pytestmark = [pytest.mark.pebble_env(FLEET_PEBBLE), pytest.mark.fleet]
TTL = 30


def test_status_names_each_nodes_state_and_the_node_holding_a_lock(lab, cluster, tmp_path):
    names = ["a.view.test", "b.view.test"]
    prefix = f"v-{uuid.uuid4().hex[:8]}"
    issued = lab.certrenew("run", "--config", fleet_config(tmp_path, names), env=node_env(lab, cluster, prefix, 1, tmp_path))
    assert issued.returncode == 0, issued.stderr

    backend = from_url(cluster.url(prefix))
    try:
        generations = {key.split("/")[1]: entry.version
                       for key, entry in backend.list("certificates/", "/meta.json").items()}
        early, late = sorted(generations, key=generations.__getitem__)
        now = datetime.datetime.now(datetime.timezone.utc)
        publish(backend, NodeReport("node1", now, generations[late], 900.0))
        publish(backend, NodeReport("node2", now, generations[late], 900.0,
                                    {late: Behind(None, now - datetime.timedelta(minutes=2), "the reload failed")}))
        publish(backend, NodeReport("node3", now, generations[early], 900.0))
    finally:
        backend.close()

    single = tmp_path / "single"
    single.mkdir()
    with FaultProxy(lab) as proxy, node_1_responder(lab, cluster, prefix):
        holder = lab.start_certrenew("run", "--force", "--config", fleet_config(single, [early]), env={
            **proxy.env, "CERTRENEW_LOCK_TTL": str(TTL), **node_env(lab, cluster, prefix, 2, tmp_path)})
        stopped = signal_at_first(proxy, "new-order", lambda: holder, signal.SIGSTOP)
        try:
            poll("node 2's run stopped holding the lock of its certificate", lambda: stopped)
            shown = lab.certrenew("status", "--json", "--config", fleet_config(tmp_path, names),
                                  env=node_env(lab, cluster, prefix, 1, tmp_path))
            text = lab.certrenew("status", "--config", fleet_config(tmp_path, names),
                                 env=node_env(lab, cluster, prefix, 1, tmp_path))
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    rows = {row["name"]: row for row in document["certificates"]}
    assert {name: row["generation"] for name, row in rows.items()} == generations
    assert {node: view["state"] for node, view in rows[early]["nodes"].items()} == {
        "node1": "current", "node2": "current", "node3": "current"}
    assert {node: view["state"] for node, view in rows[late]["nodes"].items()} == {
        "node1": "current", "node2": "behind", "node3": "catching-up"}
    assert rows[late]["nodes"]["node2"]["error"] == "the reload failed"
    assert rows[late]["lagging"] == ["node2", "node3"] and rows[early]["lagging"] == []
    lock = rows[early]["lock"]
    assert lock["holder"] == f"certrenew on node2 (pid {holder.pid})" and lock["node"] == "node2", lock
    assert 0 < lock["lease_left"] <= TTL and lock["since"] is not None
    assert rows[late]["lock"] is None
    assert document["store_revision"] >= generations[late]
    assert {node["node"]: (node["lagging"], node["locks"]) for node in document["nodes"]} == {
        "node1": (0, 0), "node2": (1, 1), "node3": (1, 0)}
    assert document["healthy"] and all(row["state"] == "ok" for row in rows.values())  # a view, not a verdict
    assert text.returncode == 0 and "node3 catching-up" in text.stdout
    assert f"{early}: locked by certrenew on node2 (pid {holder.pid})" in text.stdout
