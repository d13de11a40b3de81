"""The order flow with a recording solver in front of the real responder, against real pebble; and what the
flow counts on pebble for.

The issuer gets its solver from the caller; these tests check the calls it makes: the names
prepared before the order exists, every authorization presented, then one wait_ready, then
the answers, and cleanup whatever happens.
"""

import socket

import pytest
from acme import messages
from cryptography import x509

from certrenew.acme.account import new_account_key_pem
from certrenew.acme.orders import AcmeClient
from certrenew.acme.transport import Deadline
from certrenew.challenge.responder import Responder
from certrenew.config import CertificateSpec, build_settings
from certrenew.errors import CertrenewError
from certrenew.pki.keys import generate_key, make_csr
from certrenew.renewal.issue import Issuer
from certrenew.state.store import FileStore

DOMAINS = ("flow.example", "www.flow.example")


class RecordingSolver:
    """The real HTTP-01 responder, with every call recorded; `not_ready` makes wait_ready fail."""

    def __init__(self, responder: Responder, not_ready: bool = False) -> None:
        self.responder, self.not_ready = responder, not_ready
        self.challenge_type = responder.challenge_type
        self.calls: list[tuple[str, ...]] = []

    def prepare(self, domains: list[str]) -> None:
        self.calls.append(("prepare", *domains))

    def present(self, domain: str, token: str, validation: str) -> None:
        self.calls.append(("present", domain))
        self.responder.present(domain, token, validation)

    def wait_ready(self) -> None:
        self.calls.append(("wait_ready",))
        if self.not_ready:
            raise CertrenewError("the validation is not visible yet (injected)")

    def cleanup(self, domain: str, token: str) -> None:
        self.calls.append(("cleanup", domain))
        self.responder.cleanup(domain, token)


def issue_with(lab, solver_of) -> tuple[RecordingSolver, object]:
    settings = build_settings({}, environ=lab.certrenew_env)
    store = FileStore(settings.state_dir)
    with store.lock(timeout=0), Responder(settings.responder.listen) as responder:
        solver = solver_of(responder)
        try:
            result = Issuer(settings.acme, store, {solver.challenge_type: solver}).issue(CertificateSpec(DOMAINS[0], DOMAINS))
        except CertrenewError as error:
            result = error
    with pytest.raises(ConnectionRefusedError):  # the caller's exit closed the port
        socket.create_connection((responder.address.host, responder.address.port), timeout=2)
    return solver, result


def test_every_name_is_presented_then_waited_for_then_withdrawn(lab):
    solver, issued = issue_with(lab, RecordingSolver)
    assert not isinstance(issued, CertrenewError), issued
    assert solver.calls.pop(0) == ("prepare", *DOMAINS)  # before the order exists
    assert sorted(solver.calls[:2]) == [("present", name) for name in DOMAINS]
    assert solver.calls[2:] == [("wait_ready",)] + [("cleanup", domain) for _, domain in solver.calls[:2]]
    assert issued.action == "issued" and b"PRIVATE KEY" in issued.bundle


def test_a_solver_that_is_not_ready_fails_the_order_and_still_cleans_up(lab):
    solver, error = issue_with(lab, lambda responder: RecordingSolver(responder, not_ready=True))
    assert isinstance(error, CertrenewError) and "not visible yet" in str(error)
    assert solver.calls.pop(0) == ("prepare", *DOMAINS)
    presented = [domain for call, *domain in solver.calls if call == "present"]
    assert solver.calls[len(presented):] == [("wait_ready",)] + [("cleanup", *d) for d in presented]
    assert len(presented) == 2
    assert FileStore(lab.state_dir).load_bundle(DOMAINS[0], "pending") is None


def test_pebble_refuses_a_finalize_before_the_names_are_validated_and_changes_nothing(lab, caplog):
    """What finalizing at the first look counts on (RFC 8555 section 7.4): an order not ready yet is refused
    with orderNotReady, which `post_if_ready` makes None, and stays as it was, to be finalized once validated.
    (It makes any other refusal None too, but says so: that line must not come.)"""
    caplog.set_level("INFO", logger="certrenew")
    client = AcmeClient(lab.directory_url, new_account_key_pem(), Deadline(30), str(lab.ca_bundle))
    client.login(None, None, agree_tos=True)
    transport = client.transport
    key = generate_key("ecdsa-p256")
    order = messages.NewOrder(identifiers=(messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=DOMAINS[0]),))
    created = transport.post("create the order", transport.directory["newOrder"], order)
    finalize = messages.CertificateRequest(csr=x509.load_pem_x509_csr(make_csr(key, [DOMAINS[0]])))
    assert transport.post_if_ready("finalize the order", created.json()["finalize"], finalize) is None
    assert "not saying orderNotReady" not in caplog.text
    assert transport.fetch("check the order", created.headers["Location"]).json()["status"] == "pending"
