"""The etcd backend against a real 3-member etcd cluster on loopback (tests/harness/etcd.py).

Each test works under its own prefix, so the module shares one cluster and stays fast.
"""

import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import trustme

from certrenew.errors import CertrenewError, ConfigurationError, Interrupted, UsageError
from certrenew.state.backend import ABSENT, Busy, Conflict, Fenced, Unavailable
from certrenew.state.etcd import EtcdBackend, from_url
from certrenew.state.etcd_client import EtcdClient, Tls, b64
from certrenew.system.runcontext import RunContext
from tests.harness.backend_contract import CONTRACT
from tests.harness.etcd import EtcdCluster, Gateway
from tests.harness.lab import REPO_ROOT, free_ports

TTL = 1.0
"""The shortest lease etcd grants with the harness's election timeout."""


@pytest.fixture
def prefix():
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def backend(cluster, prefix):
    backend = from_url(cluster.url(prefix))
    yield backend
    backend.close()


@pytest.mark.parametrize("check", CONTRACT, ids=[check.__name__ for check in CONTRACT])
def test_backend_contract(cluster, prefix, check):
    """What every backend keeps (tests/harness/backend_contract.py), each client a new connection."""
    opened: list[EtcdBackend] = []

    def connect() -> EtcdBackend:
        opened.append(from_url(cluster.url(prefix)))
        return opened[-1]

    try:
        check(connect)
    finally:
        for backend in opened:
            backend.close()


def test_versions_conflicts_and_create_if_absent(backend):
    first = backend.write({"a/x": b"1"}, expect={"a/x": ABSENT})
    assert backend.get("a/x").version == first
    with pytest.raises(Conflict, match=r"a/x changed meanwhile \(version \d+, expected none\)"):
        backend.write({"a/x": b"2"}, expect={"a/x": ABSENT})
    second = backend.write({"a/x": b"2"}, expect={"a/x": first})
    assert second > first and backend.get("a/x").value == b"2"
    with pytest.raises(Conflict):
        backend.write({"a/x": b"3"}, expect={"a/x": first})
    assert backend.write({"a/x": None}, expect={"a/x": second}) > second
    assert backend.get("a/x") is None


def test_a_write_of_several_keys_is_all_or_nothing(backend):
    version = backend.write({"r/a": b"1", "r/b": b"1"})
    assert {entry.version for entry in backend.list("r/").values()} == {version}
    with pytest.raises(Conflict, match="r/b changed meanwhile"):
        backend.write({"r/a": b"2", "r/b": b"2", "r/c": b"2"}, expect={"r/a": version, "r/b": version - 1})
    assert {key: entry.value for key, entry in backend.list("r/").items()} == {"r/a": b"1", "r/b": b"1"}
    with pytest.raises(UsageError, match="more than the 128 operations of one etcd transaction"):
        backend.write({f"r/{i}": b"" for i in range(129)})


def test_a_list_reads_page_after_page_and_never_shows_locks(cluster, prefix):
    with Gateway(cluster.endpoints[0]) as gateway:
        backend = EtcdBackend(EtcdClient([gateway.endpoint]), prefix, page=7)
        for start in (0, 10):
            backend.write({f"many/{i:02}": str(i).encode() for i in range(start, start + 10)})
        backend.write({"manyother": b"not under many/"})
        with backend.lock("many/00", ttl=TTL, wait=0, holder="test"):
            listed = backend.list("many/")
    assert gateway.calls["/v3/kv/range"] == 3  # 20 keys by 7: read by pages, never one by one
    assert listed.keys() == {f"many/{i:02}" for i in range(20)}
    assert listed["many/13"].value == b"13"


def test_records_are_listed_without_their_bundles_and_read_again_only_once_written(cluster, prefix):
    with Gateway(cluster.endpoints[0]) as gateway:
        backend = EtcdBackend(EtcdClient([gateway.endpoint]), prefix, page=100)
        for start in range(0, 300, 50):
            backend.write({f"certificates/c{i:03}/{file}": f"{file} {i}".encode()
                           for i in range(start, start + 50) for file in ("meta.json", "current.pem")})
        gateway.calls.clear()
        first = backend.list("certificates/", "/meta.json")
        assert dict(gateway.calls) == {"/v3/kv/range": 6, "/v3/kv/txn": 3}  # 600 keys by 100; 300 values by 128
        backend.write({"certificates/c007/meta.json": b"rewritten"})
        backend.write({"certificates/c299/meta.json": None})
        gateway.calls.clear()
        again = backend.list("certificates/", "/meta.json")
        assert dict(gateway.calls) == {"/v3/kv/range": 6, "/v3/kv/txn": 1}  # the one written since, alone
    assert sorted(first) == [f"certificates/c{i:03}/meta.json" for i in range(300)]
    assert first["certificates/c150/meta.json"].value == b"meta.json 150"
    assert again == from_url(cluster.url(prefix)).list("certificates/", "/meta.json")  # as a fresh read sees it
    assert again["certificates/c007/meta.json"].value == b"rewritten" and "certificates/c299/meta.json" not in again


def test_a_lock_an_older_certrenew_holds_is_named_by_its_holder_alone(backend):
    """Before `locks`, a lock key held the holder's name as plain text, not JSON with the time it was taken."""
    lease = backend._client.call("/v3/lease/grant", {"TTL": 30})["ID"]
    backend._client.call("/v3/kv/put", {"key": b64(backend._lock_key("certificates/old")),
                                        "value": b64("certrenew on web9 (pid 42)"), "lease": lease})
    (holder,) = backend.locks("certificates/").values()
    assert (holder.holder, holder.since) == ("certrenew on web9 (pid 42)", None) and 0 < holder.left <= 30
    with pytest.raises(Busy, match=r"^certrenew on web9 \(pid 42\) holds the lock on certificates/old"):
        with backend.lock("certificates/old", ttl=TTL, wait=0, holder="new"):
            pass


def test_the_lock_excludes_other_threads_and_each_token_is_larger(backend):
    inside, overlaps, tokens = [0], [], []

    def work() -> None:
        for _ in range(3):
            with backend.lock("certificates/a", ttl=TTL, wait=20, holder=threading.current_thread().name) as lease:
                inside[0] += 1
                overlaps.append(inside[0])
                tokens.append(lease.token)
                time.sleep(0.05)
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [1] * 12
    assert tokens == sorted(tokens) and len(set(tokens)) == 12


def test_a_waiter_watches_for_the_holder_to_let_go_rather_than_asking_again_and_again(cluster, prefix, backend):
    with Gateway(cluster.endpoints[0]) as gateway:
        waiter = EtcdBackend(EtcdClient([gateway.endpoint]), prefix)
        with backend.lock("cert", ttl=TTL, wait=0, holder="holder") as held:
            def let_go() -> None:
                time.sleep(3)
                held.release()
            threading.Thread(target=let_go).start()
            with waiter.lock("cert", ttl=TTL, wait=10, holder="waiter") as lease:
                assert lease.token > held.token
    assert gateway.calls["/v3/kv/txn"] <= 5 and gateway.calls["/v3/watch"] >= 1, gateway.calls


def test_a_cancelled_run_stops_waiting_for_a_lock(cluster, prefix, backend):
    context = RunContext()
    waiter = from_url(cluster.url(prefix), context=context)
    with backend.lock("cert", ttl=TTL, wait=0, holder="holder"):
        threading.Timer(0.5, context.cancel).start()
        with pytest.raises(Interrupted):
            with waiter.lock("cert", ttl=TTL, wait=30, holder="waiter"):
                pass


def test_the_keepalive_holds_the_lock_past_several_ttls(backend):
    with backend.lock("k", ttl=TTL, wait=0, holder="keeper") as lease:
        time.sleep(4 * TTL)
        lease.check()
        backend.write({"k": b"still mine"}, fence=lease)
        with pytest.raises(Busy, match="keeper holds the lock on k; gave up after 0.5 s"):
            with backend.lock("k", ttl=TTL, wait=0.5, holder="other"):
                pass


def test_a_holder_whose_lease_expired_is_fenced(backend):
    backend.write({"c": b"before"})
    with backend.lock("c", ttl=TTL, wait=0, holder="late") as lease:
        lease.suspend()  # as a holder paused past its TTL: nobody renews the lease
        with backend.lock("c", ttl=TTL, wait=10, holder="successor") as successor:
            assert successor.token > lease.token
            backend.write({"c": b"successor's"}, fence=successor)
        with pytest.raises(Fenced, match=r"the write of c was refused: the lock on c \(token \d+\) is no longer held"):
            backend.write({"c": b"late"}, fence=lease)
        with pytest.raises(Fenced):
            lease.check()
    assert backend.get("c").value == b"successor's"


HOLDER = """
import sys
from certrenew.state.etcd import from_url
from certrenew.state.backend import Fenced
backend = from_url(sys.argv[1])
with backend.lock("cert", ttl=float(sys.argv[2]), wait=30, holder="process " + sys.argv[3]) as lease:
    print(lease.token, flush=True)
    sys.stdin.readline()
    try:
        backend.write({"cert": sys.argv[3].encode()}, fence=lease)
        print("written", flush=True)
    except Fenced as error:
        print(error, flush=True)
"""


def _holder(cluster, prefix: str, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, cluster.url(prefix), str(TTL), name], cwd=REPO_ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_the_lock_excludes_another_process(cluster, prefix, backend):
    first = _holder(cluster, prefix, "one")
    token = int(first.stdout.readline())
    with pytest.raises(Busy, match="process one holds the lock on cert"):
        with backend.lock("cert", ttl=TTL, wait=0, holder="test"):
            pass
    second = _holder(cluster, prefix, "two")
    time.sleep(1)
    assert second.poll() is None  # waiting for the first
    first.stdin.write("\n")
    first.stdin.flush()
    assert first.stdout.readline() == "written\n" and first.wait(10) == 0
    assert int(second.stdout.readline()) > token
    second.stdin.write("\n")
    second.stdin.flush()
    assert second.stdout.readline() == "written\n" and second.wait(10) == 0
    assert backend.get("cert").value == b"two"


def test_a_holder_process_stopped_past_its_ttl_cannot_overwrite_its_successor(cluster, prefix, backend):
    paused = _holder(cluster, prefix, "paused")
    token = int(paused.stdout.readline())
    paused.send_signal(signal.SIGSTOP)
    try:
        with backend.lock("cert", ttl=TTL, wait=10 * TTL, holder="successor") as lease:
            assert lease.token > token
            backend.write({"cert": b"successor's"}, fence=lease)
    finally:
        paused.send_signal(signal.SIGCONT)
    paused.stdin.write("\n")
    paused.stdin.flush()
    assert "no longer held" in paused.stdout.readline()
    assert paused.wait(10) == 0
    assert backend.get("cert").value == b"successor's"


def test_writes_go_on_while_the_leader_is_killed_and_none_is_applied_twice(cluster, prefix, caplog):
    leader = cluster.leader()
    # The leader first, so the writes are going to it when it dies.
    endpoints = [cluster.endpoints[leader]] + [e for i, e in enumerate(cluster.endpoints) if i != leader]
    backend = EtcdBackend(EtcdClient(endpoints), prefix)
    errors: list[Exception] = []
    written = [0]

    def write() -> None:
        try:
            for i in range(300):
                backend.write({f"w/{i:03}": str(i).encode()}, expect={f"w/{i:03}": ABSENT})
                written[0] += 1
        except CertrenewError as error:
            errors.append(error)

    writer = threading.Thread(target=write)
    writer.start()
    while written[0] < 50 and writer.is_alive():
        time.sleep(0.005)
    cluster.kill(leader)
    writer.join()
    try:
        assert cluster.processes[leader].returncode == -signal.SIGKILL
        assert cluster.leader() != leader
        assert errors == []
        listed = backend.list("w/")
        assert len(listed) == 300 and all(entry.value == key[2:].lstrip("0").encode() or key == "w/000"
                                          for key, entry in listed.items())
    finally:
        cluster.restart(leader)


def test_a_lock_outlives_the_death_of_the_leader_its_keepalive_talked_to(cluster, prefix):
    leader = cluster.leader()
    endpoints = [cluster.endpoints[leader]] + [e for i, e in enumerate(cluster.endpoints) if i != leader]
    backend = EtcdBackend(EtcdClient(endpoints), prefix)
    try:
        with backend.lock("cert", ttl=2 * TTL, wait=0, holder="me") as lease:
            cluster.kill(leader)
            time.sleep(6 * TTL)
            lease.check()
            backend.write({"cert": b"mine"}, fence=lease)
            assert cluster.leader() != leader
    finally:
        cluster.restart(leader)
    assert backend.get("cert").value == b"mine"


def test_a_write_applied_whose_answer_was_lost_is_not_sent_again(cluster, prefix):
    with Gateway(cluster.endpoints[0], lose=1) as gateway:
        backend = EtcdBackend(EtcdClient([gateway.endpoint, cluster.endpoints[1]]), prefix)
        version = backend.write({"account": b"created once"}, expect={"account": ABSENT})
    assert gateway.lost == 1
    assert backend.get("account").version == version


def test_a_lock_taken_whose_answer_was_lost_is_held(cluster, prefix):
    with Gateway(cluster.endpoints[0], lose=1) as gateway:
        backend = EtcdBackend(EtcdClient([gateway.endpoint, cluster.endpoints[1]]), prefix)
        with backend.lock("cert", ttl=TTL, wait=0, holder="me") as lease:
            assert gateway.lost == 1
            backend.write({"cert": b"mine"}, fence=lease)


def test_an_unreachable_cluster_is_one_line_naming_the_endpoints():
    endpoints = [f"127.0.0.1:{port}" for port in free_ports(2)]
    backend = EtcdBackend(EtcdClient(endpoints, patience=0.5), "p")
    with pytest.raises(Unavailable) as raised:
        backend.get("x")
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"etcd at {','.join(endpoints)} did not answer")


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """One member with auth on: user `node` may read and write `fleet/` only; tokens last 1 s."""
    with EtcdCluster(tmp_path_factory.mktemp("etcd-auth"), size=1,
                     extra=("--auth-token", "simple", "--auth-token-ttl", "1")) as running:
        running.enable_auth("fleet/")
        yield running


def test_a_user_logs_in_again_when_its_token_expires(secured):
    backend = from_url(secured.url("fleet"), username="node", password="nodepw")
    backend.write({"a": b"1"})
    time.sleep(2.5)  # past the token's TTL (etcd checks it about once a second)
    backend.write({"a": b"2"})
    with backend.lock("a", ttl=TTL, wait=0, holder="node") as lease:
        backend.write({"a": b"3"}, fence=lease)
    assert backend.get("a").value == b"3"


def test_wrong_credentials_and_a_prefix_outside_the_role_are_one_line(secured):
    with pytest.raises(ConfigurationError, match=r"^etcd at 127.0.0.1:\d+ refused user 'node': .*authentication failed"):
        from_url(secured.url("fleet"), username="node", password="wrong").get("a")
    with pytest.raises(ConfigurationError, match=r"refused user 'node': .*permission denied"):
        from_url(secured.url("elsewhere"), username="node", password="nodepw").get("a")
    with pytest.raises(ConfigurationError, match="refused a client without credentials"):
        from_url(secured.url("fleet")).get("a")


def test_tls_with_a_client_certificate_and_a_wrong_ca_refused_in_one_line(tmp_path, monkeypatch):
    with EtcdCluster(tmp_path / "etcd", size=1, tls=True) as secure:
        assert secure.tls is not None
        # The environment's CA bundle must not replace the one given.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "nowhere.pem"))
        backend = from_url(secure.url("tls"), tls=secure.tls)
        with backend.lock("a", ttl=TTL, wait=0, holder="node") as lease:
            backend.write({"a": b"over TLS"}, fence=lease)
        assert backend.get("a").value == b"over TLS"
        trustme.CA().cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
        stranger = Tls(ca=tmp_path / "other-ca.pem", cert=secure.tls.cert)
        with pytest.raises(ConfigurationError, match=r"^TLS with etcd at 127.0.0.1:\d+ failed: .*certificate verify failed"):
            from_url(secure.url("tls"), tls=stranger).get("a")


def test_a_certificate_with_more_state_than_one_transaction_holds_is_archived_whole(backend, monkeypatch):
    """Some seventy bundles set aside (kept, each, before `store.SET_ASIDE_KEPT`: a certificate failing daily for two
    months) are more than one etcd transaction can move (128 operations). `revoke --delete` archives it in
    steps, copies before removals (stopped between, both are there, never neither), not refused for ever."""
    from certrenew.state import store as store_module
    from certrenew.state.store import CertificateRecord, Store

    monkeypatch.setattr(store_module, "SET_ASIDE_KEPT", 100)
    store = Store(backend)
    store.save_pending("a", b"SERVED")
    store.promote_pending(CertificateRecord("a", ["a.example"], "ecdsa-p256"))
    for _ in range(70):
        store.save_pending("a", b"REFUSED")
        store.set_aside("a", "pending")
    kept = {key.split("/", 2)[2]: entry.value for key, entry in backend.list("certificates/a/").items()}
    assert len(kept) > 64  # two operations each: past a transaction
    store.archive("a", "20261205T000000Z")
    assert backend.list("certificates/a/") == {}
    assert {key.split("/", 2)[2]: entry.value
            for key, entry in backend.list("removed/a-20261205T000000Z/").items()} == kept


def test_a_failure_nobody_foresaw_in_a_keepalive_does_not_end_the_lease_s_renewal(backend, monkeypatch):
    """A keepalive thread ended by any failure (an answer it cannot read: a ValueError, a KeyError) would let the
    lease lapse a TTL later, unsaid, while its holder still orders: another node would take the certificate."""
    real, failed = backend._client.call, []

    def call(path, body, **kwargs):
        if path == "/v3/lease/keepalive" and not failed:
            failed.append(path)
            raise ValueError("an answer nobody foresaw")
        return real(path, body, **kwargs)
    monkeypatch.setattr(backend._client, "call", call)
    with backend.lock("certificates/a", ttl=TTL, wait=0, holder="me") as lease:
        time.sleep(4 * TTL)
        assert failed  # the fault happened
        lease.check()
        backend.write({"certificates/a/meta.json": b"{}"}, fence=lease)
