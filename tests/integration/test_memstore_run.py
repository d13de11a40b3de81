"""The library API over a store that is not the file store: `renew.run`, the Issuer and the Deployer keep everything
in a `Store` over a `MemoryBackend`, and HAProxy serves what they issued.

pebble runs with PEBBLE_VA_ALWAYS_VALID, so it validates nothing: the Issuer test's solver
answers no challenge, and the run's responder is never asked.
"""

import pytest

from certrenew.config import CertificateSpec, Settings
from certrenew.pki.bundle import leaf_info
from certrenew.renewal import renew
from certrenew.renewal.deploy import Deployer
from certrenew.renewal.issue import Issuer
from certrenew.state.memory import MemoryBackend
from certrenew.state.store import Store
from tests.harness.lab import LOOPBACK, Lab

NAME = "memory.example"


pytestmark = pytest.mark.pebble_env({"PEBBLE_VA_ALWAYS_VALID": "1"})


def settings_for(lab: Lab) -> Settings:
    return Settings.of(directory=lab.directory_url, ca_bundle=str(lab.ca_bundle), email="ops@example.com",
                    agree_tos=True, state_dir=lab.state_dir, ssl_dir=lab.ssl_dir, listen=lab.listen,
                    self_check_address=f"{LOOPBACK}:{lab.http_port}", reload_command=lab.reload_command,
                    timeout=60, lock_timeout=5)


class SilentSolver:
    """Answers no challenge at all: only a CA that validates nothing issues for it."""

    challenge_type = "http-01"

    def __init__(self) -> None:
        self.presented: list[str] = []

    def prepare(self, domains: list[str]) -> None:
        pass

    def present(self, domain: str, token: str, validation: str) -> None:
        self.presented.append(domain)

    def wait_ready(self) -> None:
        pass

    def cleanup(self, domain: str, token: str) -> None:
        pass


def assert_kept_and_served(lab: Lab, store: Store, settings: Settings, spec: CertificateSpec,
                           account: bool = True) -> None:
    bundle = store.load_bundle(spec.name)
    assert bundle is not None and store.load_bundle(spec.name, "pending") is None
    info = leaf_info(bundle)
    record = store.load_record(spec.name)
    assert record is not None and (record.serial, record.domains) == (info.serial, list(spec.domains))
    if account:
        kept = store.load_account(settings.acme.directory_url)
        assert kept is not None and kept.uri
    assert (lab.ssl_dir / f"{spec.name}.pem").read_bytes() == bundle
    lab.wait_served_serial(spec.domains[0], info.serial, timeout=30)
    assert list(lab.state_dir.iterdir()) == []  # the file store was never touched


def test_run_keeps_everything_in_the_store_it_is_given(lab):
    settings, store, spec = settings_for(lab), Store(MemoryBackend()), CertificateSpec(NAME, (NAME, f"www.{NAME}"))
    [outcome] = renew.run(settings, [spec], store=store)
    assert outcome.action == "issued", outcome.detail
    assert_kept_and_served(lab, store, settings, spec)
    [again] = renew.run(settings, [spec], store=store)
    assert again.action == "unchanged", again.detail


def test_issuer_with_a_solver_of_its_own(lab):
    settings, store, spec = settings_for(lab), Store(MemoryBackend()), CertificateSpec(NAME, (NAME,))
    solver = SilentSolver()
    issuer = Issuer(settings.acme, store, {spec.solver_key: solver})
    issued = issuer.issue(spec)
    assert issued.action == "issued" and store.load_bundle(NAME, "pending") == issued.bundle
    [installed] = Deployer(settings.haproxy, store, settings.acme.directory_url).deploy([issued])
    assert installed.result.method == "reload"
    assert solver.presented == [NAME]
    assert_kept_and_served(lab, store, settings, spec)


def test_a_node_that_issued_nothing_deploys_the_pending_bundle_the_store_holds(lab):
    """The fleet's case: another node (here a run on a store of its own) issued the certificate and kept it
    pending; this node, with no account, no order and no word with the CA, makes its HAProxy serve it."""
    settings, spec = settings_for(lab), CertificateSpec(NAME, (NAME,))
    issued = Issuer(settings.acme, Store(MemoryBackend()), {spec.solver_key: SilentSolver()}).issue(spec)
    store = Store(MemoryBackend())
    store.save_pending(NAME, issued.bundle, issued.directory)
    deployer = Deployer(settings.haproxy, store, settings.acme.directory_url)
    pending = deployer.pending(spec)
    assert pending is not None and pending.bundle == issued.bundle
    [installed] = deployer.deploy([pending])
    assert installed.unrecorded is None and installed.result.method == "reload"
    assert store.load_account(settings.acme.directory_url) is None  # this node never spoke to the CA
    assert_kept_and_served(lab, store, settings, spec, account=False)
