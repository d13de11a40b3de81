"""The fleet's view: status rows and --json, /metrics and /healthz, from records and the nodes' reports
(written here in `nodes`' format, as a node's follower publishes them) on a store with revisions."""

import datetime
import json
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from certrenew.cli import fleetview, metrics
from certrenew.cli.status import collect
from certrenew.config import CertificateSpec, Settings
from certrenew.state.memory import MemoryBackend
from certrenew.state.nodes import Behind, NodeReport, publish
from certrenew.state.sealed import SealedBackend
from certrenew.state.store import CertificateRecord, FileStore, Store, encode, is_secret
from tests.harness.lab import free_ports

NOW = datetime.datetime(2026, 12, 5, 12, tzinfo=datetime.timezone.utc)
INTERVAL = 900.0
SETTINGS = Settings.of(state_dir=Path("/unused"))


def record(name: str, serial: str = "0a") -> CertificateRecord:
    return CertificateRecord(name, [name], "ecdsa-p256", serial, NOW - datetime.timedelta(days=1),
                             NOW + datetime.timedelta(days=60), NOW - datetime.timedelta(days=1))


def ago(seconds: float) -> datetime.datetime:
    return NOW - datetime.timedelta(seconds=seconds)


@pytest.fixture
def fleet_store():
    """Certificates a and b (b rewritten last), and four nodes: node1 current, node2 behind on b since
    10 min, node3 not yet at b's generation, node4 silent for an hour."""
    store = Store(MemoryBackend(), holder="certrenew on node1 (pid 7)")
    store.save_record(record("a.example"))
    store.save_record(record("b.example", "0b"))
    generation = store.records()["b.example"].generation
    publish(store.backend, NodeReport("node1", ago(30), generation, INTERVAL))
    publish(store.backend, NodeReport("node2", ago(30), generation, INTERVAL,
                                      {"b.example": Behind("0a", ago(600), "haproxy refused the bundle")}))
    publish(store.backend, NodeReport("node3", ago(30), generation - 1, INTERVAL))
    publish(store.backend, NodeReport("node4", ago(3600), generation - 1, INTERVAL))
    return store


def view(store: Store, node: str | None = "node1", now: datetime.datetime = NOW):
    rows = collect(SETTINGS, None, store, now=now)
    return rows, fleetview.read(store, node, now=now)


def test_status_names_each_nodes_state_the_lock_holder_and_the_nodes_that_lag(fleet_store):
    with fleet_store.certificate("a.example", wait=0):
        rows, fleet = view(fleet_store)
    a, b = ({**row.to_json(), **fleet.certificate(row)} for row in rows)
    assert a["generation"] < b["generation"] and b["generation"] == fleet_store.records()["b.example"].generation
    assert {node: state["state"] for node, state in a["nodes"].items()} == {
        "node1": "current", "node2": "current", "node3": "current", "node4": "silent"}
    assert {node: state["state"] for node, state in b["nodes"].items()} == {
        "node1": "current", "node2": "behind", "node3": "catching-up", "node4": "silent"}
    assert b["nodes"]["node2"] == {"state": "behind", "serving": "0a", "since": "2026-12-05T11:50:00+00:00",
                                   "error": "haproxy refused the bundle"}
    assert (a["lagging"], b["lagging"]) == (["node4"], ["node2", "node3", "node4"])
    assert a["lock"]["holder"] == "certrenew on node1 (pid 7)" and a["lock"]["node"] == "node1"
    assert a["lock"]["token"] >= 1 and a["lock"]["lease_left"] > 0 and b["lock"] is None
    document = fleet.to_json(rows)
    assert document["store_revision"] >= b["generation"]
    assert {node["node"]: (node["lagging"], node["silent"]) for node in document["nodes"]} == {
        "node1": (0, False), "node2": (1, False), "node3": (1, False), "node4": (2, True)}
    json.dumps(document)  # as --json prints it
    text = fleetview.format_fleet(fleet, rows)
    assert "node2 behind, serving 0a since 2026-12-05T11:50:00+00:00 because haproxy refused the bundle" in text
    assert "b.example (generation" in text and "node3 catching-up" in text
    assert "a.example: locked by certrenew on node1 (pid 7)" in text


def test_a_state_dir_is_no_fleet_but_names_who_holds_a_lock(tmp_path):
    store = FileStore(tmp_path / "state", holder="certrenew on solo (pid 9)")
    with store.lock(5):
        store.save_record(record("a.example"))
    with store.certificate("a.example", wait=0):
        rows, fleet = view(store)
    (a,) = ({**row.to_json(), **fleet.certificate(row)} for row in rows)
    assert not fleet.on and (a["generation"], a["nodes"], a["lagging"]) == (None, {}, [])
    assert a["lock"]["holder"] == "certrenew on solo (pid 9)" and a["lock"]["since"] is not None
    assert fleet.to_json(rows) == {"store_revision": None, "nodes": [], "unreadable_reports": []}
    assert fleetview.read(store, "solo", locks=False).locks == {}  # the daemon's scrapes do not list them
    assert metrics.health(rows, None, fleet)[1] == {"healthy": True, "certificates": 1, "unhealthy": []}


def test_records_read_no_bundle_so_a_sealed_store_decrypts_none():
    inner = MemoryBackend()
    sealed = SealedBackend(inner, b"k" * 32, is_secret, Path("/unused"))
    store = Store(sealed)
    store.save_record(record("a.example"))
    inner.write({"certificates/a.example/current.pem": b"a bundle in the clear, which unsealing refuses"})
    assert store.records()["a.example"].record == record("a.example")
    with pytest.raises(Exception, match="not encrypted"):  # what reading the whole prefix would cost and meet
        sealed.list("certificates/")


def test_a_bad_record_is_its_rows_fault_alone(fleet_store):
    fleet_store.backend.write({"certificates/c.example/meta.json": encode({"name": "c.example"})})
    rows, _ = view(fleet_store)
    assert [(row.name, row.state) for row in rows] == [("a.example", "ok"), ("b.example", "ok"),
                                                       ("c.example", "failing")]
    assert "corrupt state file" in rows[2].last_error and rows[2].generation is not None


def samples(text: bytes) -> dict:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text.decode()) for sample in family.samples}


def test_metrics_have_a_few_series_per_node_not_one_per_certificate_and_node(fleet_store):
    for index in range(50):
        fleet_store.save_record(record(f"c{index}.example"))
    with fleet_store.certificate("a.example", wait=0):
        rows, fleet = view(fleet_store)
    found = samples(metrics.render(rows, None, fleet))
    by_node = {name: {dict(labels)["node"]: value for (sample, labels), value in found.items() if sample == name}
               for name in {sample for sample, _ in found if sample.startswith("certrenew_node_")}
               if name != "certrenew_node_reports_unreadable"}
    assert by_node["certrenew_node_lagging_certificates"] == {"node1": 50, "node2": 51, "node3": 51, "node4": 52}
    assert by_node["certrenew_node_behind_certificates"] == {"node1": 0, "node2": 1, "node3": 0, "node4": 0}
    assert by_node["certrenew_node_applied_revision"]["node4"] == rows[1].generation - 1
    assert by_node["certrenew_node_report_timestamp_seconds"]["node4"] == ago(3600).timestamp()
    assert by_node["certrenew_node_reconcile_interval_seconds"]["node1"] == INTERVAL
    assert by_node["certrenew_node_locks_held"] == {"node1": 1, "node2": 0, "node3": 0, "node4": 0}
    assert found[("certrenew_store_revision", ())] == fleet.revision > 0
    fleet_series = [key for key in found if key[0].startswith(("certrenew_node_", "certrenew_store_"))]
    assert len(fleet_series) == 6 * 4 + 2  # whatever the number of certificates


def test_healthz_is_503_naming_why_on_a_node_that_lags_beyond_its_interval(fleet_store):
    rows, _ = view(fleet_store)
    verdicts = {}
    for node in ("node1", "node2", "node3", "node4", "node5"):
        ok, document = metrics.health(rows, None, fleetview.read(fleet_store, node, now=NOW))
        verdicts[node] = (ok, document["lag"])
        assert document["silent_nodes"] == ["node4"]  # named, whoever is asked
    assert verdicts["node1"] == (True, None)
    assert verdicts["node2"] == (True, None)  # behind on b for 10 min: within its interval
    assert verdicts["node3"] == (True, None)  # catching up, and it reconciled 30 s ago
    assert verdicts["node4"][0] is False and "has not reported what it serves for 3600 s" in verdicts["node4"][1]
    assert verdicts["node5"] == (False, "node node5 has not reported what it serves to the store")

    beyond = NOW + datetime.timedelta(seconds=301)  # node2's failure is now more than an interval old
    assert metrics.health(rows, None, fleetview.read(fleet_store, "node2", now=beyond)) == (False, {
        "healthy": False, "certificates": 2, "unhealthy": [], "node": "node2", "silent_nodes": ["node4"],
        "lag": "node node2 has not served b.example for longer than its reconcile interval (900 s): "
               "haproxy refused the bundle"})
    later = NOW + datetime.timedelta(seconds=INTERVAL)  # node3 has not reconciled for more than its interval
    ok, document = metrics.health(rows, None, fleetview.read(fleet_store, "node3", now=later))
    assert not ok and document["lag"].startswith("node node3 has not applied b.example and has not reconciled for 930 s")
    assert metrics.health(rows, None, fleetview.read(fleet_store, "node1", now=later))[0]  # nothing to apply
    config = [CertificateSpec("a.example", ("a.example",))]  # b is in the store alone: node3 must serve it too
    ok, document = metrics.health(collect(SETTINGS, config, fleet_store, now=later), None,
                                  fleetview.read(fleet_store, "node3", now=later))
    assert not ok and document["certificates"] == 1 and "has not applied b.example" in document["lag"]


def test_the_daemons_server_answers_healthz_and_metrics_for_its_node(fleet_store):
    rows, _ = view(fleet_store)
    with metrics.serve(f"127.0.0.1:{free_ports(1)[0]}", lambda: rows, None,
                       lambda: fleetview.read(fleet_store, "node4", locks=False, now=NOW)) as server:
        base = "http://{}:{}".format(*server.address)
        answer = requests.get(f"{base}/healthz", timeout=5)
        assert answer.status_code == 503 and answer.json()["node"] == "node4"
        assert "node node4 has not reported what it serves" in answer.json()["lag"]
        scraped = samples(requests.get(f"{base}/metrics", timeout=5).content)
        assert scraped[("certrenew_node_behind_certificates", (("node", "node2"),))] == 1
