"""A fleet in the lab: nodes on 127.0.0.1, .2, .3 sharing one store on a real etcd cluster
(tests/harness/etcd.py), each node's settings, and the certrenew daemons of three nodes at once; for the
fleet's integration tests and `scripts/bench --fleet`."""

import base64
import contextlib
import functools
import os
import signal
import subprocess
import uuid

import requests

from certrenew.challenge.responder import Responder
from certrenew.state.board import Board
from certrenew.state.etcd import from_url
from certrenew.state.store import Store
from tests.harness.faultproxy import step
from tests.harness.lab import fleet_address, free_ports, parse_serial, terminate
from tests.harness.lab import poll as lab_poll

FLEET_PEBBLE = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
"""pebble as the fleet's tests count on it: no validation sleep, no refused nonce, no authorization reuse."""
WAIT = 90.0
POLL = 0.05
poll = functools.partial(lab_poll, timeout=WAIT, interval=POLL)


def node_env(lab, cluster, prefix: str, index: int, tmp_path, **extra: str) -> dict[str, str]:
    """Node `index`'s settings: the shared store, its name, its responder's address; node 1 is the lab's
    HAProxy (its ssl dir and reload), nodes 2 and 3 have ssl dirs of their own."""
    key_file = tmp_path / "store.key"  # the fleet's: every node holds the same
    if not key_file.exists():
        key_file.touch(mode=0o600)
        key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    env = {"CERTRENEW_STORE": cluster.url(prefix), "CERTRENEW_STORE_KEY_FILE": str(key_file),
           "CERTRENEW_NODE_NAME": f"node{index}", "CERTRENEW_LISTEN": f"{fleet_address(index)}:{lab.listen.rsplit(':', 1)[1]}"}
    if index != 1:
        ssl_dir = tmp_path / f"ssl{index}"
        ssl_dir.mkdir(exist_ok=True)
        env.update({"CERTRENEW_SSL_DIR": str(ssl_dir), "CERTRENEW_RELOAD_COMMAND": "true"})
    return {**env, **extra}


@contextlib.contextmanager
def node_1_responder(lab, cluster, prefix: str):
    """What node 1's daemon would run, in this process: the responder behind the lab's HAProxy, answering
    from the store what the nodes that order (2 and 3 here) publish there."""
    store = Store(from_url(cluster.url(prefix)), holder="node1")
    try:
        with Board(store) as board, Responder(lab.listen, board) as responder:
            responder.start()
            yield
    finally:
        store.backend.close()


def fleet_config(tmp_path, names) -> str:
    path = tmp_path / "certrenew.toml"
    path.write_text("".join(f'[[certificate]]\ndomains = ["{name}"]\n\n' for name in names))
    return str(path)


def signal_at_first(proxy, wanted: str, process_of, sig: int):
    """Make `proxy` signal the process `process_of()` gives, once, when it asks for step `wanted` (the request
    goes on to pebble, its answer waits in the socket); return the list that says it happened."""
    done: list[bool] = []

    def on_request(method, path):
        if not done and method == "POST" and step(path) == wanted:
            done.append(True)
            process_of().send_signal(sig)
        return None

    proxy.on_request = on_request
    return done


class Fleet:
    """Three nodes on one prefix of `cluster`: node 1 is the lab's HAProxy, nodes 2 and 3 are started here."""

    def __init__(self, lab, cluster, tmp_path, names, config: str | None = None, crt_lists=None) -> None:
        """`config`: the nodes' config file, instead of one table a name; `crt_lists`: {node (2, 3): a crt-list its
        HAProxy serves and its daemon adds to}."""
        self.lab, self.cluster, self.tmp_path, self.names = lab, cluster, tmp_path, names
        self.prefix = f"w-{uuid.uuid4().hex[:8]}"
        self.config = config or fleet_config(tmp_path, names)
        crt_lists = crt_lists or {}
        self.store = Store(from_url(cluster.url(self.prefix)))
        self.daemons: dict[int, subprocess.Popen] = {}
        self.metrics = dict(zip((1, 2, 3), free_ports(3)))
        self.env = {}
        for index in (1, 2, 3):
            env = node_env(lab, cluster, self.prefix, index, tmp_path, CERTRENEW_LOCK_TTL="3",
                           CERTRENEW_METRICS_LISTEN=f"127.0.0.1:{self.metrics[index]}")
            if index == 1:
                env["CERTRENEW_HAPROXY_SOCKET"] = str(lab.admin_socket)
            else:
                node = lab.start_fleet_node(index, responder=env["CERTRENEW_LISTEN"], ssl_dir=self.ssl_dir(index),
                                            crt_list=crt_lists.get(index))
                env.update({"CERTRENEW_HAPROXY_SOCKET": str(node.admin_socket),
                            "CERTRENEW_RELOAD_COMMAND": f"kill -USR2 {node.process.pid}"})
                if index in crt_lists:
                    env["CERTRENEW_CRT_LIST"] = str(crt_lists[index])
            self.env[index] = env

    def ssl_dir(self, index: int):
        return self.lab.ssl_dir if index == 1 else self.tmp_path / f"ssl{index}"

    def log(self, index: int):
        return self.tmp_path / f"daemon{index}.log"

    def start(self, *indexes: int) -> None:
        for index in indexes:
            with open(self.log(index), "a") as out:
                self.daemons[index] = self.lab.start_certrenew("daemon", "--config", self.config, "--verbose",
                                                               env=self.env[index], stdout=out,
                                                               stderr=subprocess.STDOUT)

    def alive(self, index: int) -> bool:
        assert self.daemons[index].poll() is None, self.log(index).read_text()[-3000:]
        return True

    def stored(self, name: str) -> int | None:
        """The serial the fleet's record holds for `name`."""
        record = self.store.load_record(name)
        return parse_serial(record.serial) if record and record.serial else None

    def served(self, index: int, name: str) -> int | None:
        """The serial node `index` serves for SNI `name` (its default certificate's if none is `name`'s)."""
        try:
            return self.lab.served_certificate_unverified(name, address=fleet_address(index)).serial_number
        except OSError:
            return None

    def everywhere(self, names=None) -> dict[str, int] | None:
        """{name: serial} once every node serves the store's serial of every name in `names`, else None."""
        serials = {}
        for name in names or self.names:
            serial = self.stored(name)
            if serial is None or any(self.served(index, name) != serial for index in (1, 2, 3)):
                return None
            serials[name] = serial
        return serials

    def wait_everywhere(self, what: str) -> dict[str, int]:
        """`everywhere`, polled until it holds, every started daemon checked alive meanwhile."""
        return poll(what, lambda: all(map(self.alive, tuple(self.daemons))) and self.everywhere())

    def health(self, index: int) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.metrics[index]}/healthz", timeout=5)

    def close(self) -> None:
        for daemon in self.daemons.values():
            daemon.send_signal(signal.SIGCONT)
            terminate(daemon)
        self.store.backend.close()


@contextlib.contextmanager
def fleet(lab, cluster, tmp_path, names, **options):
    running = Fleet(lab, cluster, tmp_path, names, **options)
    try:
        yield running
    finally:
        running.close()
