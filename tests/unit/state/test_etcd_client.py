"""`EtcdClient.outage`: since when every request has failed, kept by the client all requests go through."""

import time

import pytest

from certrenew.errors import StoreUnreachable
from certrenew.state import etcd_client
from certrenew.state.etcd_client import EtcdClient
from tests.harness.lab import free_ports


def test_every_endpoint_failing_for_longer_than_an_election_is_an_outage_until_one_answers(monkeypatch):
    endpoints = [f"127.0.0.1:{port}" for port in free_ports(2)]  # nothing listens there
    client = EtcdClient(endpoints, patience=0.3)
    started = time.time()
    with pytest.raises(StoreUnreachable):
        client.call("/v3/kv/range", {"key": "eA=="})
    assert client.outage is None  # failing for less than GRACE: an election looks the same
    monkeypatch.setattr(etcd_client, "GRACE", 0.0)
    outage = client.outage
    assert outage is not None and started <= outage.since <= outage.last <= time.time()
    assert outage.reason.startswith(endpoints[1]) or outage.reason.startswith(endpoints[0])
    assert client.watch(b"x", 1, 0.3) == [] and client.outage.since == outage.since  # a watch failing too
    monkeypatch.setattr(client, "_send", lambda *args, **kwargs: {"kvs": []})  # one answers
    client.call("/v3/kv/range", {"key": "eA=="})
    assert client.outage is None
