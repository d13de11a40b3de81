"""Fixtures for tests that run certrenew against a real pebble and HAProxy (see tests/harness/lab.py)."""

from pathlib import Path

import pytest

from tests.harness.ari import AriEndpoint
from tests.harness.bind import Bind
from tests.harness.etcd import EtcdCluster
from tests.harness.faultproxy import FaultProxy
from tests.harness.faults import FAST, Guard
from tests.harness.lab import Lab


@pytest.fixture(scope="module")
def bind(tmp_path_factory):
    """One BIND for a module (TSIG updates, CAA records): each test uses names of its own or leaves the
    zone as it found it."""
    with Bind(tmp_path_factory.mktemp("bind")) as running:
        yield running


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One 3-member etcd cluster for a module: each test works under a prefix of its own."""
    with EtcdCluster(tmp_path_factory.mktemp("etcd")) as running:
        yield running


@pytest.fixture
def lab(request, tmp_path: Path):
    """A fresh lab per test, so no test sees another's accounts, orders or certificates.

    A test (or a module, through `pytestmark`) marked `pebble_env({...})` gets a pebble
    started with those PEBBLE_* knobs; one marked `dns_at_bind` a pebble that resolves every
    name and looks up every record at the module's BIND (`bind`).
    """
    marker = request.node.get_closest_marker("pebble_env")
    dns = request.getfixturevalue("bind").address if request.node.get_closest_marker("dns_at_bind") else None
    with Lab(tmp_path / "lab", pebble_env=marker.args[0] if marker else None, dns_server=dns) as running:
        yield running


@pytest.fixture
def ari(lab):
    """An ARI endpoint in front of the lab's pebble; point --directory at `ari.url + "/dir"`."""
    endpoint = AriEndpoint(lab)
    yield endpoint
    endpoint.server.shutdown()
    endpoint.server.server_close()


@pytest.fixture
def guard_for(request, lab):
    """guard_for(case, proxy=None) -> a Guard (fault tests) whose ledger line is written when the test ends."""
    guards = []

    def make(case: str, proxy: FaultProxy | None = None) -> Guard:
        guard = Guard(lab, case, {**FAST, **(proxy.env if proxy else {})})
        guards.append(guard)
        return guard

    yield make
    report = getattr(request.node, "rep_call", None)
    for guard in guards:
        guard.record(passed=report is not None and report.passed)


@pytest.fixture
def proxy(lab):
    with FaultProxy(lab) as running:
        yield running


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so a fixture can tell whether the test passed."""
    outcome = yield
    setattr(item, f"rep_{call.when}", outcome.get_result())
