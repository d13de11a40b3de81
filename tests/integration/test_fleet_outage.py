"""etcd away (issue 23's "Must hold"): every member of a real 3-member cluster stopped for 30 s while two
`certrenew daemon`s run on it, a certificate falling due meanwhile (pebble's 30 s certificates). No daemon
exits, HAProxy keeps serving, /healthz says why, and once etcd is back the due certificate is ordered once
(counted at the CA through a FaultProxy) and served, without a restart.

Node 1 is the lab's HAProxy (what it serves is asked by a TLS client); node 2 has an ssl dir of its own, which
its daemon fills with what the store holds, whichever node issued it."""

import json
import signal
import subprocess
import time
import uuid

import pytest
import requests

from certrenew.pki.bundle import leaf_info
from tests.harness.etcd import EtcdCluster
from tests.harness.faultproxy import FaultProxy
from tests.harness.fleet import FLEET_PEBBLE, fleet_config, node_env, poll
from tests.harness.lab import Lab, LabError, free_ports, terminate

pytestmark = pytest.mark.fleet

NAME = "outage.fleet.test"
VALIDITY = 30
"""Seconds pebble's certificates last: due after 15, so one falls due during the outage."""
OUTAGE = 30.0


@pytest.fixture
def cluster(tmp_path):
    with EtcdCluster(tmp_path / "etcd") as running:
        yield running


def _healthz(port: int) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


@pytest.mark.haproxy
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
def test_every_etcd_member_stopped_for_30_s_no_daemon_exits_haproxy_serves_and_the_due_certificate_is_ordered_once(
        cluster, tmp_path, sig):
    """Killed: every request refused at once. Frozen (SIGSTOP, as a partition looks): connections accepted by
    the kernel, never answered, so every request waits out its timeout."""
    prefix, path = f"o-{uuid.uuid4().hex[:8]}", fleet_config(tmp_path, [NAME])
    with Lab(tmp_path / "lab", pebble_env=FLEET_PEBBLE, certificate_validity=VALIDITY) as lab, \
            FaultProxy(lab) as proxy:
        ports = dict(zip((1, 2), free_ports(2)))
        logs = {index: tmp_path / f"daemon{index}.log" for index in ports}
        daemons: dict[int, subprocess.Popen] = {}

        def start(index: int) -> None:
            env = {**proxy.env, **node_env(lab, cluster, prefix, index, tmp_path)}
            with open(logs[index], "w") as out:
                daemons[index] = lab.start_certrenew(
                    "daemon", "--config", path, "--verbose", "--metrics-listen", f"127.0.0.1:{ports[index]}",
                    *(["--haproxy-socket", str(lab.admin_socket)] if index == 1 else []),
                    env=env, stdout=out, stderr=subprocess.STDOUT)

        def ssl_dir(index: int):
            return lab.ssl_dir if index == 1 else tmp_path / f"ssl{index}"

        def alive() -> bool:
            for index, daemon in daemons.items():
                assert daemon.poll() is None, f"daemon {index} exited:\n{logs[index].read_text()}"
            return True

        def issued_by() -> int | None:
            alive()
            return next((index for index, log in logs.items() if f"{NAME}: renewed: " in log.read_text()), None)

        try:
            start(1)  # node 1 first, so the first certificate is the one the lab's HAProxy serves
            poll("node 1 issued", lambda: alive() and f"{NAME}: issued: " in logs[1].read_text())
            first = leaf_info((lab.ssl_dir / f"{NAME}.pem").read_bytes()).serial
            lab.wait_served_serial(NAME, first)
            start(2)
            poll("node 2's first pass", lambda: alive() and "pass done" in logs[2].read_text())
            orders = proxy.count("new-order"), proxy.count("finalize")
            assert orders == (1, 1), proxy.seen

            for member in range(3):
                cluster.kill(member, sig)
            stopped = time.monotonic()
            assert cluster.running() == ([] if sig == signal.SIGKILL else [0, 1, 2])
            with pytest.raises(LabError):  # the outage is real: no member answers
                cluster.etcdctl("endpoint", "health", "--command-timeout=1s")
            # `status` on node 1 meanwhile: it gives up on the store after its patience (15 s), by which time the
            # certificate (issued before node 2 started, due 15 s after) is past its renewal time.
            asked = lab.start_certrenew("status", "--json", "--config", path,
                                        env={**proxy.env, **node_env(lab, cluster, prefix, 1, tmp_path)})

            def says_why():
                alive()
                answer = _healthz(ports[1])
                return answer.json() if answer.status_code == 503 and "unreachable since" in answer.text else None

            health = poll("node 1's /healthz to say the store is away", says_why)
            print(f"/healthz said why {time.monotonic() - stopped:.1f} s after etcd stopped")
            assert health["store"]["reachable"] is False and health["store"]["unreachable_since"], health
            metrics = requests.get(f"http://127.0.0.1:{ports[1]}/metrics", timeout=5).text
            assert "certrenew_store_up 0.0" in metrics and "certrenew_store_unreachable_since_timestamp_seconds" in metrics
            # The certificate falls due (15 s after its issue) while etcd is away: named, by node 1's /healthz.
            poll("the due certificate named in /healthz", lambda: NAME in _healthz(ports[1]).text)
            while time.monotonic() - stopped < OUTAGE:
                alive()
                assert lab.served_certificate_unverified(NAME).serial_number == int(first, 16)  # served as it was
                time.sleep(1)
            assert (proxy.count("new-order"), proxy.count("finalize")) == orders  # nothing ordered meanwhile
            out, err = asked.communicate(timeout=5)
            assert asked.returncode == 1, (out, err)
            said = json.loads(out)
            with pytest.raises(LabError):
                cluster.etcdctl("endpoint", "health", "--command-timeout=1s")
        finally:
            for member in range(3):
                if sig == signal.SIGSTOP:
                    cluster.kill(member, signal.SIGCONT)
                elif member not in cluster.running():
                    cluster.restart(member, wait=False)
        try:
            cluster.wait_healthy()
            returned = time.monotonic()
            node = poll("the due certificate renewed", issued_by)
            renewed = leaf_info((ssl_dir(node) / f"{NAME}.pem").read_bytes()).serial
            took = time.monotonic() - returned
            for index in ports:  # every node, the one that did not issue it through its follower
                poll(f"node {index} holding the renewal",
                     lambda index=index: leaf_info((ssl_dir(index) / f"{NAME}.pem").read_bytes()).serial == renewed)
            lab.wait_served_serial(NAME, renewed)  # node 1's HAProxy: what a TLS client sees
            ordered = (proxy.count("new-order"), proxy.count("finalize"))
            poll("both healthy again", lambda: all(_healthz(port).json()["store"] == {"reachable": True}
                                                  for port in ports.values()))
            alive()  # no daemon exited, none was restarted
        finally:
            for daemon in daemons.values():
                terminate(daemon)
    assert said["healthy"] is False and said["store"]["reachable"] is False and said["store"]["unreachable_since"]
    assert said["reason"].startswith("the store is unreachable since ") and NAME in said["reason"], said
    assert [item["name"] for item in said["expiring"]] == [NAME], said  # by name, with its time left
    assert renewed != first
    assert ordered == (orders[0] + 1, orders[1] + 1), proxy.seen  # once, by one node, not once per node
    print(f"renewed and served by node {node} {took:.1f} s after etcd was healthy again")
    assert took < 10, took  # without a restart, and not a --check-interval (nor a minute's retry) later
    for log in logs.values():
        text = log.read_text()
        assert f"{NAME}: failed" not in text and "pass failed" not in text, text  # a store's condition, not theirs
