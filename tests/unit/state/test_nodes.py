"""The nodes' reports: what a node serves, in a document that stays small, and one bad report hiding no other."""

import datetime

from certrenew.state.memory import MemoryBackend
from certrenew.state.nodes import Behind, NodeReport, node_key, publish, reports

NOW = datetime.datetime(2026, 12, 5, 12, tzinfo=datetime.timezone.utc)


def test_a_node_serves_a_generation_it_has_reached_unless_it_is_behind_on_that_certificate():
    report = NodeReport("node2", NOW, 40, 900.0, {"b.example": Behind("01ab", NOW, "haproxy refused it")})
    assert report.serves("a.example", 40)
    assert report.serves("a.example", 12)
    assert not report.serves("a.example", 41)
    assert not report.serves("b.example", 12)


def test_a_report_older_than_two_intervals_is_stale():
    report = NodeReport("node2", NOW, 1, 60.0)
    assert not report.stale(NOW + datetime.timedelta(seconds=120))
    assert report.stale(NOW + datetime.timedelta(seconds=121))


def test_reports_round_trip_sorted_and_a_bad_one_is_named_apart():
    backend = MemoryBackend()
    second = NodeReport("node 2 (eu)", NOW, 7, 900.0, {"b.example": Behind(None, NOW, "no socket")})
    publish(backend, second)
    publish(backend, NodeReport("node1", NOW, 9, 900.0))
    backend.write({"nodes/node3": b'{"node": "node3", "at": "yesterday"}'})
    found, unreadable = reports(backend)
    assert [report.node for report in found] == ["node 2 (eu)", "node1"]
    assert found[0] == second
    assert len(unreadable) == 1 and "nodes/node3" in unreadable[0]


def test_every_node_name_gets_a_key_of_its_own():
    names = ["node1", "node 1", "b64-bm9kZTE", "nœud", "a/b", ".hidden"]
    keys = [node_key(name) for name in names]
    assert len(set(keys)) == len(names)
    assert keys[0] == "nodes/node1"
    backend = MemoryBackend()
    for name in names:  # each a valid key of every backend
        publish(backend, NodeReport(name, NOW, 1, 60.0))
    assert sorted(report.node for report in reports(backend)[0]) == sorted(names)
