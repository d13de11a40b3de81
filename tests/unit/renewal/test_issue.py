import trustme

from certrenew.config import AcmeSettings, CertificateSpec
from certrenew.renewal.issue import Issuer
from certrenew.state.store import FileStore


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
