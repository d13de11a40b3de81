import pytest
import trustme

from certrenew.config import AcmeSettings, CertificateSpec
from certrenew.errors import CertrenewError
from certrenew.renewal.issue import Issuer
from certrenew.renewal.policy import Action
from certrenew.state.store import FileStore, PendingOrder


def test_a_pending_certificate_with_its_names_in_another_order_is_installed_not_ordered_again(tmp_path):
    """A CA may list the names in its own order (Boulder sorts them); that is no reason to order anew."""
    issued = trustme.CA().issue_cert("b.example", "a.example")
    bundle = b"".join(blob.bytes() for blob in issued.cert_chain_pems) + issued.private_key_pem.bytes()
    store = FileStore(tmp_path / "state")
    store.save_pending("a.example", bundle)
    issuer = Issuer(AcmeSettings(), store, solvers={})
    issuer.issue = lambda spec: (_ for _ in ()).throw(AssertionError("ordered again"))
    issuer._window = lambda name, bundle, directory: None  # no CA here to ask for a renewal window
    resumed = issuer.resume(CertificateSpec("a.example", ("a.example", "b.example")))
    assert resumed.action == "installed" and resumed.bundle == bundle


def test_a_certificate_issued_is_kept_pending_and_counted_against_its_budget_in_one_write(tmp_path, monkeypatch):
    """Each write of a batch's certificates waits its turn at the state dir's mutex and fsyncs: the
    count and the pending certificate go together, in the one write that keeps it."""
    issued = trustme.CA().issue_cert("a.example")
    fullchain = b"".join(blob.bytes() for blob in issued.cert_chain_pems).decode()
    store = FileStore(tmp_path / "state")
    writes = []
    real = store.backend.write
    monkeypatch.setattr(store.backend, "write", lambda changes, **kwargs: writes.append(sorted(changes)) or
                        real(changes, **kwargs))
    issuer = Issuer(AcmeSettings(), store, solvers={})
    issuer._window = lambda name, bundle, directory: None  # no CA here to ask for a renewal window
    spec = CertificateSpec("a.example", ("a.example",))
    issuer._keep(spec, fullchain, issued.private_key_pem.bytes(), Action.ISSUED, "https://ca.example/dir")
    assert writes == [[f"certificates/a.example/{file}" for file in
                       ("meta.json", "order.json", "pending.json", "pending.pem")]]
    assert len(store.load_record("a.example").recent_issues) == 1
    assert store.load_bundle("a.example", "pending") is not None


def test_a_certificate_refused_still_counts_against_its_budget_and_its_order_is_dropped(tmp_path):
    issued = trustme.CA().issue_cert("other.example")
    fullchain = b"".join(blob.bytes() for blob in issued.cert_chain_pems).decode()
    store = FileStore(tmp_path / "state")
    store.save_order("a.example", PendingOrder("https://ca.example/order/1", ["a.example"], "ecdsa-p256", b"KEY"))
    issuer = Issuer(AcmeSettings(), store, solvers={})
    with pytest.raises(CertrenewError, match="not the ordered a.example"):
        issuer._keep(CertificateSpec("a.example", ("a.example",)), fullchain, issued.private_key_pem.bytes(),
                     Action.ISSUED, "https://ca.example/dir")
    assert len(store.load_record("a.example").recent_issues) == 1
    assert store.load_order("a.example") is None and store.load_bundle("a.example", "pending") is None
