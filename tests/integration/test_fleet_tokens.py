"""Shared HTTP-01 answers on a fleet whose store is a real 3-member etcd cluster: the node that orders
publishes its key authorizations there, and every node's daemon responder answers them from a copy a watch
keeps current (`state.board`), so its event loop never waits on etcd."""

import signal
import time
import uuid

import requests

from certrenew.challenge.responder import Responder
from certrenew.state.board import Board
from certrenew.state.etcd import from_url
from certrenew.state.store import Store
from tests.harness.lab import free_ports


def _ask(port: int, token: str, host: str) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}/.well-known/acme-challenge/{token}", headers={"Host": host},
                        timeout=3)


def test_every_node_answers_what_the_ordering_node_published_even_with_etcd_frozen(cluster):
    url = cluster.url(f"t-{uuid.uuid4().hex[:8]}")
    node_1, node_3 = Store(from_url(url), holder="node-1"), Store(from_url(url), holder="node-3")
    port_1, port_3 = free_ports(2)
    try:
        with Board(node_3) as board, Responder(f"127.0.0.1:{port_3}", board) as daemon_3, \
                Responder(f"127.0.0.1:{port_1}", node_1) as ordering:
            daemon_3.start()
            ordering.present("www.fleet.test", "tok-1", "tok-1.thumb")  # node 1's own port: published all the same
            assert _ask(port_3, "tok-1", "www.fleet.test").text == "tok-1.thumb"
            assert _ask(port_3, "tok-1", "api.fleet.test").status_code == 404  # the Host must name its domain
            ordering.present("api.fleet.test", "tok-2", "tok-2.thumb")
            assert _ask(port_3, "tok-2", "api.fleet.test").text == "tok-2.thumb"
            deadline = time.monotonic() + 10  # the watch brings them within milliseconds, later on a busy machine
            while not all(f"challenges/{token}.json" in board._entries for token in ("tok-1", "tok-2")):
                assert time.monotonic() < deadline, "node 3's watch never brought the published tokens"
                time.sleep(0.05)
            for member in cluster.running():  # etcd gone quiet: answers come from node 3's copy
                cluster.kill(member, signal.SIGSTOP)
            try:
                assert _ask(port_3, "tok-1", "www.fleet.test").text == "tok-1.thumb"
                assert _ask(port_3, "unknown", "www.fleet.test").status_code == 404  # a bounded look-up
                assert _ask(port_3, "tok-2", "api.fleet.test").text == "tok-2.thumb"
            finally:
                for member in cluster.running():
                    cluster.kill(member, signal.SIGCONT)
            ordering.cleanup("www.fleet.test", "tok-1")  # withdrawn: node 3's watch resumes and brings it
            deadline = time.monotonic() + 10
            while _ask(port_3, "tok-1", "www.fleet.test").status_code != 404:
                assert time.monotonic() < deadline, "node 3 still answers a withdrawn token"
                time.sleep(0.05)
    finally:
        node_1.backend.close()
        node_3.backend.close()
