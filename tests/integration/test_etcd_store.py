"""The real certrenew CLI with its state on a real etcd cluster (`--store etcd://...`), against the
lab's pebble and HAProxy: what one node issues, another node (its own state dir) finds current,
and a store that cannot be used stops a command in one line before anything is touched."""

import pytest

from certrenew.pki.bundle import leaf_info
from tests.harness.etcd import EtcdCluster
from tests.harness.faultproxy import FaultProxy
from tests.harness.lab import free_ports

NAME = "fleet.example"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with EtcdCluster(tmp_path_factory.mktemp("etcd")) as running:
        yield running


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """One member with auth on: user `node` may read and write `fleet/` only."""
    with EtcdCluster(tmp_path_factory.mktemp("etcd-auth"), size=1) as running:
        running.etcdctl("user", "add", "root:rootpw")
        running.etcdctl("role", "add", "certrenew")
        running.etcdctl("role", "grant-permission", "certrenew", "--prefix=true", "readwrite", "fleet/")
        running.etcdctl("user", "add", "node:nodepw")
        running.etcdctl("user", "grant-role", "node", "certrenew")
        running.etcdctl("auth", "enable")
        yield running


def config_for(tmp_path):
    config = tmp_path / "certrenew.toml"
    config.write_text(f'[[certificate]]\ndomains = ["{NAME}"]\n')
    return config


def secret(path, text):
    path.write_text(text)
    path.chmod(0o600)
    return path


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_certificate_issued_on_etcd_is_served_and_another_node_finds_it_current(lab, cluster, tmp_path):
    config, store = config_for(tmp_path), {"CERTRENEW_STORE": cluster.url("fleet-issue")}
    with FaultProxy(lab) as proxy:
        first = lab.certrenew("run", "--config", str(config), env={**proxy.env, **store})
        assert first.returncode == 0, first.stderr
        serial = leaf_info((lab.ssl_dir / f"{NAME}.pem").read_bytes()).serial
        lab.wait_served_serial(NAME, serial)
        assert list(lab.state_dir.iterdir()) == []  # the whole state is in etcd

        shown = lab.certrenew("status", "--config", str(config), env={**proxy.env, **store})
        assert shown.returncode == 0, shown.stderr
        assert NAME in shown.stdout and "ok" in shown.stdout, shown.stdout

        other = tmp_path / "node2"
        other.mkdir(mode=0o700)
        second = lab.certrenew("run", "--config", str(config),
                               env={**proxy.env, **store, "CERTRENEW_STATE_DIR": str(other),
                                    "CERTRENEW_NODE_NAME": "node2"})
        assert second.returncode == 0, second.stderr
        assert "unchanged" in second.stdout, second.stdout
        assert proxy.count("new-order") == 1, proxy.seen
    assert list(other.iterdir()) == []
    assert b"fleet-issue/data/certificates/" + NAME.encode() + b"/current.pem" in \
        cluster.etcdctl("get", "--prefix", "--keys-only", "fleet-issue/").encode()


@pytest.mark.parametrize(("store", "status", "says"), [
    ("etcd://127.0.0.1/fleet", 2, "not an etcd store: 'etcd://127.0.0.1/fleet'; the form is etcd://HOST:PORT"),
    ("etcd://127.0.0.1:{port}/fleet", 1, "etcd at 127.0.0.1:{port} did not answer"),
])
def test_a_store_that_is_not_there_is_one_line(lab, tmp_path, store, status, says):
    port = free_ports(1)[0]
    result = lab.certrenew("run", "--config", str(config_for(tmp_path)),
                           env={"CERTRENEW_STORE": store.format(port=port)}, timeout=60)
    assert result.returncode == status, result.stderr
    assert says.format(port=port) in one_line(result)
    assert list(lab.state_dir.iterdir()) == [] and list(lab.ssl_dir.glob(f"{NAME}*")) == []


def test_etcd_credentials_come_from_a_password_file_and_wrong_ones_are_one_line(lab, secured, tmp_path):
    config = config_for(tmp_path)
    env = {"CERTRENEW_STORE": secured.url("fleet/site"), "CERTRENEW_STORE_USER": "node",
           "CERTRENEW_STORE_PASSWORD_FILE": str(secret(tmp_path / "password", "wrong\n"))}
    refused = lab.certrenew("run", "--config", str(config), env=env)
    assert refused.returncode == 2, refused.stderr
    assert "refused user 'node'" in one_line(refused) and "authentication failed" in refused.stderr
    assert list(lab.state_dir.iterdir()) == [] and list(lab.ssl_dir.glob(f"{NAME}*")) == []

    secret(tmp_path / "password", "nodepw\n")
    shown = lab.certrenew("status", "--config", str(config), env=env)
    assert shown.returncode == 1 and NAME in shown.stdout and "missing" in shown.stdout, shown.stdout + shown.stderr
    assert "refused" not in shown.stderr
