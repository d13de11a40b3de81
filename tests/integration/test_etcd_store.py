"""The real certrenew CLI with its state on a real etcd cluster (`--store etcd://...`), against the
lab's pebble and HAProxy: what one node issues, another node (its own state dir) finds current,
and a store that cannot be used stops a command in one line before anything is touched."""

import base64
import os

import pytest

from certrenew.pki.bundle import leaf_info
from tests.harness.etcd import EtcdCluster
from tests.harness.faultproxy import FaultProxy
from tests.harness.fleet import FLEET_PEBBLE
from tests.harness.lab import free_ports

pytestmark = pytest.mark.pebble_env(FLEET_PEBBLE)  # its counts of new-orders: no nonce refused and sent again

NAME = "fleet.example"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """One member with auth on: user `node` may read and write `fleet/` only."""
    with EtcdCluster(tmp_path_factory.mktemp("etcd-auth"), size=1) as running:
        running.enable_auth("fleet/")
        yield running


def config_for(tmp_path):
    config = tmp_path / "certrenew.toml"
    config.write_text(f'[[certificate]]\ndomains = ["{NAME}"]\n')
    return config


def secret(path, text):
    path.write_text(text)
    path.chmod(0o600)
    return path


def key_file(path):
    return secret(path, base64.b64encode(os.urandom(32)).decode() + "\n")


def state_files(state_dir):
    """Every file of the state (not the locks) and its bytes."""
    return {str(path.relative_to(state_dir)): path.read_bytes() for top in ("accounts", "certificates")
            for path in (state_dir / top).rglob("*") if path.is_file()}


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_certificate_issued_on_etcd_is_served_and_another_node_finds_it_current(lab, cluster, tmp_path):
    config = config_for(tmp_path)
    store = {"CERTRENEW_STORE": cluster.url("fleet-issue"), "CERTRENEW_STORE_KEY_FILE": str(key_file(tmp_path / "key"))}
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

        # Another key file, or none: one line, and nothing done.
        served = (lab.ssl_dir / f"{NAME}.pem").read_bytes()
        for wrong, says in ((str(key_file(tmp_path / "other-key")), "is not the key this store's private keys are "
                             "encrypted with"), (None, "an etcd store needs the fleet's key file")):
            refused = lab.certrenew("run", "--config", str(config), "--force",
                                    env={**proxy.env, **store, "CERTRENEW_STORE_KEY_FILE": wrong})
            assert refused.returncode == 2 and says in one_line(refused), refused.stderr
        assert proxy.count("new-order") == 1 and (lab.ssl_dir / f"{NAME}.pem").read_bytes() == served
    assert list(other.iterdir()) == []

    # etcd holds the certificate, but no private key in the clear: not the bundle's, the order's nor the account's.
    keys = cluster.etcdctl("get", "--prefix", "--keys-only", "fleet-issue/").split()
    assert f"fleet-issue/data/certificates/{NAME}/current.pem" in keys
    assert any(key.startswith("fleet-issue/data/accounts/") and key.endswith("/key.pem") for key in keys), keys
    values = cluster.etcdctl("get", "--prefix", "fleet-issue/")
    assert "PRIVATE KEY" not in values and "certrenew-sealed-v1 " in values


@pytest.mark.parametrize(("store", "status", "says"), [
    ("etcd://127.0.0.1/fleet", 2, "not an etcd store: 'etcd://127.0.0.1/fleet'; the form is etcd://HOST:PORT"),
    ("etcd://127.0.0.1:{port}/fleet", 1, "etcd at 127.0.0.1:{port} did not answer"),
])
def test_a_store_that_is_not_there_is_one_line(lab, tmp_path, store, status, says):
    port = free_ports(1)[0]
    result = lab.certrenew("run", "--config", str(config_for(tmp_path)),
                           env={"CERTRENEW_STORE": store.format(port=port),
                                "CERTRENEW_STORE_KEY_FILE": str(key_file(tmp_path / "key"))}, timeout=60)
    assert result.returncode == status, result.stderr
    assert says.format(port=port) in one_line(result)
    assert list(lab.state_dir.iterdir()) == [] and list(lab.ssl_dir.glob(f"{NAME}*")) == []


def test_etcd_credentials_come_from_a_password_file_and_wrong_ones_are_one_line(lab, secured, tmp_path):
    config = config_for(tmp_path)
    env = {"CERTRENEW_STORE": secured.url("fleet/site"), "CERTRENEW_STORE_USER": "node",
           "CERTRENEW_STORE_PASSWORD_FILE": str(secret(tmp_path / "password", "wrong\n")),
           "CERTRENEW_STORE_KEY_FILE": str(key_file(tmp_path / "key"))}
    refused = lab.certrenew("run", "--config", str(config), env=env)
    assert refused.returncode == 2, refused.stderr
    assert "refused user 'node'" in one_line(refused) and "authentication failed" in refused.stderr
    assert list(lab.state_dir.iterdir()) == [] and list(lab.ssl_dir.glob(f"{NAME}*")) == []

    secret(tmp_path / "password", "nodepw\n")
    shown = lab.certrenew("status", "--config", str(config), env=env)
    assert shown.returncode == 1 and NAME in shown.stdout and "missing" in shown.stdout, shown.stdout + shown.stderr
    assert "refused" not in shown.stderr


def test_a_nodes_state_moves_into_etcd_and_back_without_a_new_order(lab, cluster, tmp_path):
    config, key = config_for(tmp_path), str(key_file(tmp_path / "key"))
    url = cluster.url("fleet-migrated")
    with FaultProxy(lab) as proxy:
        first = lab.certrenew("run", "--config", str(config), env=proxy.env)
        assert first.returncode == 0, first.stderr
        before = state_files(lab.state_dir)

        moved = lab.certrenew("migrate-state", "--from", str(lab.state_dir), "--to", url,
                              env={"CERTRENEW_STORE_KEY_FILE": key})
        assert moved.returncode == 0, moved.stderr
        assert "1 certificate(s), 1 account(s)" in moved.stdout, moved.stdout
        refused = lab.certrenew("migrate-state", "--from", str(lab.state_dir), "--to", url,
                                env={"CERTRENEW_STORE_KEY_FILE": key})
        assert refused.returncode == 2 and "holds state already" in one_line(refused), refused.stderr
        on_etcd = lab.certrenew("run", "--config", str(config), env={**proxy.env, "CERTRENEW_STORE": url,
                                                                     "CERTRENEW_STORE_KEY_FILE": key})
        assert on_etcd.returncode == 0 and "unchanged" in on_etcd.stdout, on_etcd.stdout + on_etcd.stderr
        assert "PRIVATE KEY" not in cluster.etcdctl("get", "--prefix", "fleet-migrated/")

        back = tmp_path / "back"
        returned = lab.certrenew("migrate-state", "--from", url, "--to", str(back),
                                 env={"CERTRENEW_STORE_KEY_FILE": key})
        assert returned.returncode == 0, returned.stderr
        assert state_files(back) == before
        on_dir = lab.certrenew("run", "--config", str(config), env={**proxy.env, "CERTRENEW_STATE_DIR": str(back)})
        assert on_dir.returncode == 0 and "unchanged" in on_dir.stdout, on_dir.stdout + on_dir.stderr
        assert proxy.count("new-order") == 1, proxy.seen


def test_a_store_over_tls_takes_this_nodes_client_certificate_and_refuses_none_in_one_line(lab, tmp_path):
    config = config_for(tmp_path)
    with EtcdCluster(tmp_path / "etcd", size=1, tls=True) as secure:
        env = {"CERTRENEW_STORE": secure.url("fleet"), "CERTRENEW_STORE_KEY_FILE": str(key_file(tmp_path / "key")),
               "CERTRENEW_STORE_CA_BUNDLE": str(secure.tls.ca)}
        refused = lab.certrenew("status", "--config", str(config), env=env)
        assert refused.returncode == 2 and "TLS with etcd at" in one_line(refused), refused.stderr
        checked = lab.certrenew("check", "--config", str(config), env={**env, "CERTRENEW_STORE_CERT": str(secure.tls.cert)})
        assert f"store {secure.url('fleet')}: answers" in checked.stdout, checked.stdout + checked.stderr
        shown = lab.certrenew("status", "--config", str(config), env={**env, "CERTRENEW_STORE_CERT": str(secure.tls.cert)})
        assert shown.returncode == 1 and NAME in shown.stdout and "missing" in shown.stdout, shown.stdout + shown.stderr
        assert "store-key-check" in secure.etcdctl("get", "--prefix", "--keys-only", "fleet/")


def test_revoke_on_a_fleet_waits_for_the_node_working_on_that_certificate(cluster, tmp_path):
    """The whole store's lock keeps new runs from starting, not a run on another node already working on the
    certificate: revoke's writes (its state moved aside, the revocation recorded, what was unfinished dropped)
    go under the certificate's own lock, so such a run's next write cannot undo them, nor they its."""
    from certrenew.cli.revoke import Request, carry_out
    from certrenew.config import Settings
    from certrenew.errors import CertrenewError
    from certrenew.state.store import PendingOrder, open_store

    settings = Settings.of(store=cluster.url("fleet-revoke"), store_key_file=key_file(tmp_path / "key"),
                           lock_timeout=0, state_dir=tmp_path / "state")
    order = PendingOrder("https://ca.example/order/1", ["a.example"], "ecdsa-p256", b"-----KEY-----\n")
    node = open_store(settings.with_options(node_name="node2"))
    try:
        with node.certificate("a", 0):  # node 2's run, in the middle of its order
            node.save_order("a", order)
            with pytest.raises(CertrenewError, match="node2 .* holds the lock on certificates/a"):
                carry_out(settings, Request("a", None, None, settings.acme.directory_url, "unspecified", delete=True))
            assert node.load_order("a") == order
            node.discard_order("a")  # node 2's next write: its lock still stands
    finally:
        node.backend.close()
