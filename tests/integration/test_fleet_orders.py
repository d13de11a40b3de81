"""Shared tokens end to end (issue 22's "Must hold"): a real 3-member etcd cluster, real pebble, three real
HAProxy nodes (127.0.0.1, .2, .3 on the same ports), each sending challenges to its own node's responder.
Nodes 2 and 3 run `certrenew daemon`; node 1 runs `certrenew run` and orders names that resolve (for pebble)
to node 3 and to node 2, so only the token it published in etcd, answered by the other node's daemon from
its watch-fed copy, can validate them. (The stateless variant: test_stateless_http01.py.)"""

import contextlib
import re
import subprocess
import uuid

import pytest

from tests.harness.fleet import FLEET_PEBBLE, fleet_config, node_env, poll
from tests.harness.lab import fleet_address, free_ports, terminate

pytestmark = [pytest.mark.pebble_env(FLEET_PEBBLE), pytest.mark.fleet]
WWW, API = "www.fleet.test", "api.fleet.test"
ON_NODE = {WWW: 3, API: 2}


def _challenge_requests(lab, index: int, status: str = r"\d+") -> int:
    """How many challenge requests fleet node `index`'s HAProxy (node 1: the lab's) logged, answered by its
    letsencrypt backend with `status`."""
    log = lab.workdir / ("haproxy.log" if index == 1 else f"node{index}.log")
    return len(re.findall(rf'letsencrypt_backend/letsencrypt \S+ {status} .*"GET /\.well-known/acme-challenge/',
                          log.read_text()))


@contextlib.contextmanager
def _fleet(lab, cluster, tmp_path):
    """Nodes 2 and 3 up, each HAProxy in front of its own daemon's responder, and the names pointed at them;
    yields node 1's settings and the daemons by node. The daemons' CA is out of reach (a closed port), so
    they only answer: node 1 is the one that orders."""
    prefix = f"o-{uuid.uuid4().hex[:8]}"
    idle = tmp_path / "idle.toml"
    idle.write_text('[[certificate]]\ndomains = ["idle.fleet.test"]\n')
    closed = free_ports(1)[0]
    daemons: dict[int, subprocess.Popen] = {}
    try:
        for index in (2, 3):
            env = node_env(lab, cluster, prefix, index, tmp_path,
                           CERTRENEW_DIRECTORY=f"https://127.0.0.1:{closed}/dir")
            log = tmp_path / f"daemon{index}.log"
            with open(log, "w") as out:
                daemons[index] = lab.start_certrenew("daemon", "--config", str(idle), "--verbose", env=env,
                                                     stdout=out, stderr=subprocess.STDOUT)
            lab.start_fleet_node(index, responder=env["CERTRENEW_LISTEN"])
        for index in daemons:
            poll(f"node {index}'s daemon up", lambda node=index: _started(daemons[node], tmp_path / f"daemon{node}.log"))
        for name, index in ON_NODE.items():
            lab.point_name(name, fleet_address(index))
        yield node_env(lab, cluster, prefix, 1, tmp_path), daemons
    finally:
        for daemon in daemons.values():
            terminate(daemon)


def _started(daemon: subprocess.Popen, log) -> bool:
    assert daemon.poll() is None, log.read_text()
    return "daemon started" in log.read_text()


def test_node_1_orders_names_validated_at_node_3_and_node_2_through_shared_tokens(lab, cluster, tmp_path):
    with _fleet(lab, cluster, tmp_path) as (env, daemons):
        before = [_challenge_requests(lab, index, "200") for index in (1, 2, 3)]
        result = lab.certrenew("run", "--config", fleet_config(tmp_path, [WWW, API]), env=env)
        assert result.returncode == 0, result.stdout + result.stderr

        def answered() -> list[int]:
            return [_challenge_requests(lab, index, "200") - seen for index, seen in zip((1, 2, 3), before)]

        # HAProxy writes its log lines a moment after it answers: wait for them, up to poll's bound.
        poll("the validations in the nodes' logs", lambda: (seen := answered())[1] and seen[2] and seen[0] >= 2)
        delta = answered()
    for name in (WWW, API):
        assert re.search(rf"{re.escape(name)}: issued", result.stdout), result.stdout
        served = lab.served_certificate(name)  # by node 1, verified to pebble's root, for the name
        assert served.subject.rfc4514_string() == f"CN={name}"
    # pebble's validations (one per vantage point) reached nodes 3 and 2, whose own daemons answered them; node 1
    # saw only its pre-flight probes, one per name.
    assert delta[1] >= 1 and delta[2] >= 1 and delta[0] == 2, delta


def test_with_node_3s_daemon_stopped_the_name_on_node_3_is_not_issued(lab, cluster, tmp_path):
    with _fleet(lab, cluster, tmp_path) as (env, daemons):
        terminate(daemons[3])
        before = _challenge_requests(lab, 3, "503")
        result = lab.certrenew("run", "--config", fleet_config(tmp_path, [WWW]), env=env)
        refused = _challenge_requests(lab, 3, "503") - before
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{WWW}: failed: {WWW}: validation failed" in result.stderr, result.stderr
    assert refused >= 1  # the CA did ask node 3, whose responder was gone
    assert not (lab.ssl_dir / f"{WWW}.pem").exists()
