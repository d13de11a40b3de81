"""The order flow's own decisions, with the CA faked where it answers (the transport's job)."""

import contextlib
import json
import secrets
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import josepy as jose
import pytest
from acme import challenges, messages
from cryptography.hazmat.primitives.asymmetric import ec

from certrenew.acme.account import new_account_key_pem
from certrenew.acme.orders import FIRST_POLL, AcmeClient
from certrenew.acme.transport import Deadline, Transport
from certrenew.challenge import tlsalpn01
from certrenew.cli.metrics import Telemetry
from certrenew.errors import CertrenewError


class FussyCA(AcmeClient):
    """An AcmeClient whose CA (no network) refuses orders naming a replaced certificate, or all orders."""

    def __init__(self, refuse_all=False):
        self.refuse_all = refuse_all
        self.orders = []

    def _new_order(self, domains, csr_pem, replaces, profile):
        self.orders.append(replaces)
        if replaces or self.refuse_all:
            raise CertrenewError("the CA refused to create the order: no, thanks")  # as the transport says it
        return "order"


def test_an_order_refused_for_replaces_is_sent_once_more_without_it():
    client = FussyCA()
    assert client._create_order(["a.example"], b"csr", "AKI.SERIAL", None) == "order"
    assert client.orders == ["AKI.SERIAL", None]


def test_an_order_refused_anyway_fails_after_that_one_retry():
    client = FussyCA(refuse_all=True)
    with pytest.raises(CertrenewError, match="refused to create the order: no, thanks"):
        client._create_order(["a.example"], b"csr", "AKI.SERIAL", None)
    assert client.orders == ["AKI.SERIAL", None]
    with pytest.raises(CertrenewError):
        client._create_order(["a.example"], b"csr", None, None)
    assert client.orders == ["AKI.SERIAL", None, None]


def test_telemetry_counts_every_request_and_every_failed_one():
    answers = [500, 500, 200]

    class FlakyDirectory(BaseHTTPRequestHandler):
        def do_GET(self):
            status = answers.pop(0)
            problem = {"type": "urn:ietf:params:acme:error:serverInternal", "detail": "try again"}
            body = json.dumps({"newNonce": "http://ca/nonce", "newAccount": "http://ca/account",
                               "newOrder": "http://ca/order"} if status == 200 else problem).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if status == 200 else "application/problem+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), FlakyDirectory) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        telemetry = Telemetry()
        try:
            Transport("http://127.0.0.1:%d/dir" % server.server_address[1], new_account_key_pem(),
                      Deadline(30), counter=telemetry)
        finally:
            server.shutdown()
    assert answers == []  # the two server errors were retried
    assert (telemetry.acme_requests, telemetry.acme_errors) == (3, 2)


class Recorder:
    """A challenge solver that only notes what it was asked to publish."""

    challenge_type = "dns-01"

    def __init__(self):
        self.presented = []

    def prepare(self, domains):
        pass

    def present(self, domain, token, validation):
        self.presented.append(domain)

    def wait_ready(self):
        raise CertrenewError(f"published for {', '.join(self.presented)}")  # no CA here to answer

    def cleanup(self, domain, token):
        pass


def test_an_order_asking_to_prove_a_name_not_ordered_publishes_nothing():
    """The names to prove come from the CA's answer; a forged one must not become a TXT record or a hook's argument."""

    class ForgingCA(AcmeClient):
        def __init__(self):
            self.transport = SimpleNamespace(key=jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1())))

        def _check_profile(self, profile):
            pass

        def _create_order(self, domains, csr_pem, replaces, profile):
            authorizations = [messages.AuthorizationResource(uri=f"https://ca/authz/{name}", body=messages.Authorization(
                identifier=messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=name), status=messages.STATUS_PENDING,
                challenges=[messages.ChallengeBody(chall=challenges.DNS01(token=b"t" * 32), uri="https://ca/chall",
                                                   status=messages.STATUS_PENDING)]))
                for name in ("a.example", "victim.example")]
            return messages.OrderResource(body=messages.Order(), uri="https://ca/order", authorizations=authorizations)

    solver = Recorder()
    with pytest.raises(CertrenewError, match="asks for proof of victim.example, which was not ordered"):
        ForgingCA().obtain(["a.example"], b"csr", solver)
    assert solver.presented == []


class ValidatingCA(AcmeClient):
    """An AcmeClient whose CA (no network) lists the authorizations in `listed` order (the names ordered,
    by default), offers one `challenge` in each, and has validated each once asked; `seen` notes the
    answers, waits and authorization fetches in turn."""

    def __init__(self, listed=None, challenge=challenges.DNS01):
        self.listed, self.challenge, self.seen, self._validated_at_first_look = listed, challenge, [], False
        self.transport = SimpleNamespace(
            key=jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1())),
            client=SimpleNamespace(answer_challenge=None), call=lambda what, function, *args: self.seen.append(what),
            fetch=lambda what, url: self.seen.append(url) or Answer({"status": "valid", "identifier": {
                "type": "dns", "value": url.rsplit("/", 1)[1]}, "challenges": []}),
            deadline=SimpleNamespace(remaining=lambda: 30.0, context=SimpleNamespace(sleep=self.seen.append)))

    def _check_profile(self, profile):
        pass

    def _create_order(self, domains, csr_pem, replaces, profile):
        return messages.OrderResource(body=messages.Order(), uri="https://ca/order", csr_pem=csr_pem, authorizations=[
            messages.AuthorizationResource(uri=f"https://ca/authz/{name}", body=messages.Authorization(
                identifier=messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=name),
                status=messages.STATUS_PENDING, challenges=[messages.ChallengeBody(
                    chall=self.challenge(token=secrets.token_bytes(32)), uri="https://ca/chall",
                    status=messages.STATUS_PENDING)]))
            for name in self.listed or domains])

    def _finalize(self, order, answer=None):
        self.seen.append(("finalize", answer.body if answer else "not yet"))
        return "CHAIN"


class Publisher(Recorder):
    def wait_ready(self):
        pass


def test_the_authorizations_are_first_asked_for_a_poll_after_the_challenges_are_answered():
    """Asked at once, a CA that validates once answered only ever said "pending": a request each certificate for nothing."""
    ca = ValidatingCA()
    assert ca.obtain(["a.example", "b.example"], b"csr", Publisher()) == "CHAIN"
    assert ca.seen == ["answer the challenge for a.example", "answer the challenge for b.example", FIRST_POLL,
                       "https://ca/authz/a.example", "https://ca/authz/b.example", ("finalize", "not yet")]


class QuickCA(ValidatingCA):
    """A ValidatingCA that has validated an order only after its first `pending` looks at it: an authorization
    fetched, or a finalize, which it refuses until then (orderNotReady)."""

    def __init__(self):
        super().__init__()
        self.transport.post_if_ready, self.transport.fetch = self._post_if_ready, self._fetch

    def _validated(self):
        self.pending -= 1
        return self.pending < 0

    def _post_if_ready(self, what, url, message):
        self.seen.append(what)
        return Answer({"status": "processing"}) if self._validated() else None

    def _fetch(self, what, url):
        self.seen.append(url)
        return Answer({"status": "valid" if self._validated() else "pending", "identifier": {
            "type": "dns", "value": url.rsplit("/", 1)[1]}, "challenges": []})

    def order(self, csr_pem, pending=0):
        """What one order of a.example did; the caller's `before_finalize` noted as "kept"."""
        self.seen.clear()
        self.pending, kept = pending, []
        self.obtain(["a.example"], csr_pem, Publisher(),
                    before_finalize=lambda url: kept.append(url) or self.seen.append("kept"))
        assert kept == ["https://ca/order"]  # once, before any finalize
        return self.seen


def test_a_ca_that_validated_the_last_order_by_the_first_look_is_sent_finalize_at_that_look(csr_pem):
    """Without asking for the authorizations: one request a certificate fewer (7.2 -> 6.1 against pebble). A
    CA refuses to finalize before they are valid (orderNotReady, RFC 8555 section 7.4) and does nothing."""
    ca = QuickCA()
    answered, look, finalize = "answer the challenge for a.example", "https://ca/authz/a.example", "finalize the order"
    # A client's first order knows nothing of its CA: it looks, as one certificate alone always does.
    assert ca.order(csr_pem) == [answered, FIRST_POLL, look, "kept", ("finalize", "not yet")]
    # Validated by the first look: the next order is finalized at its first look, and the CA's answer kept.
    assert ca.order(csr_pem) == [answered, FIRST_POLL, "kept", finalize, ("finalize", {"status": "processing"})]
    # Refused there (not validated yet): the order is looked at as before, then finalized.
    assert ca.order(csr_pem, pending=2) == [answered, FIRST_POLL, "kept", finalize,
                                            FIRST_POLL, look, FIRST_POLL, look, ("finalize", "not yet")]
    # After a refusal, or a first look that found the order pending, the next order looks first.
    assert finalize not in ca.order(csr_pem, pending=1)
    assert finalize not in ca.order(csr_pem)
    assert finalize in ca.order(csr_pem)  # validated by its first look again


class LaxCA(QuickCA):
    """A QuickCA that takes a finalize before the order is validated without acting on it (its answer: the order,
    still pending), where RFC 8555 wants orderNotReady; and whose issuance fails while `failing`."""

    failing = False

    def _post_if_ready(self, what, url, message):
        return super()._post_if_ready(what, url, message) or Answer({"status": "pending"})

    def _finalize(self, order, answer=None):
        if self.failing:
            self.seen.append("failed")
            raise CertrenewError("the CA did not issue the certificate: order is invalid")
        return super()._finalize(order, answer)


def test_a_finalize_taken_but_not_acted_on_is_sent_again_once_validated(csr_pem):
    """Polling such an order for its certificate would wait out the whole time budget: it never comes."""
    ca = LaxCA()
    answered, look, finalize = "answer the challenge for a.example", "https://ca/authz/a.example", "finalize the order"
    ca.order(csr_pem)
    assert ca.order(csr_pem, pending=2) == [answered, FIRST_POLL, "kept", finalize,
                                            FIRST_POLL, look, FIRST_POLL, look, ("finalize", "not yet")]
    assert finalize not in ca.order(csr_pem)  # and the next order looks first


def test_after_an_order_finalized_early_fails_the_next_order_looks_first(csr_pem):
    ca = LaxCA()
    finalize = "finalize the order"
    ca.order(csr_pem)
    ca.failing = True
    with pytest.raises(CertrenewError, match="order is invalid"):
        ca.order(csr_pem)
    assert ca.seen[-3:] == ["kept", finalize, "failed"]  # finalized early, then the issuance failed
    ca.failing = False
    assert finalize not in ca.order(csr_pem)


def test_the_names_are_presented_and_answered_in_name_order_whatever_order_the_ca_lists_them_in():
    ca, solver = ValidatingCA(listed=["www.site.example", "b.example", "site.example"]), Publisher()
    ca.obtain(["site.example", "www.site.example", "b.example"], b"csr", solver)
    assert solver.presented == ["b.example", "site.example", "www.site.example"]
    assert ca.seen[:3] == [f"answer the challenge for {name}" for name in solver.presented]


def test_two_orders_for_the_same_names_listed_in_opposite_orders_do_not_wait_on_each_other(monkeypatch):
    """A dual certificate's twins order the same names at once, and TLS-ALPN-01 answers a name for one order
    at a time (SNI is all the CA sends). Seen in CI: pebble listed one twin's names backwards, each order held
    the name the other waited for, and both waited WAIT_FOR_NAME. Each order now takes them in name order.

    `Turns` has the first order to present a name wait until the other has presented one too (or half a
    second), so the backward case cannot slip by with one order done before the other starts."""
    monkeypatch.setattr(tlsalpn01, "WAIT_FOR_NAME", 3.0)
    turn = threading.Barrier(2, timeout=0.5)

    class Turns(tlsalpn01.TlsAlpnResponder):
        def present(self, domain, token, validation):
            super().present(domain, token, validation)
            with contextlib.suppress(threading.BrokenBarrierError):
                turn.wait()

    names = ["site.example", "www.site.example"]
    outcomes = {}

    def order(listed):
        try:
            outcomes[tuple(listed)] = ValidatingCA(listed, tlsalpn01.TLSALPN01).obtain(names, b"csr", responder)
        except CertrenewError as error:
            outcomes[tuple(listed)] = str(error)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Turns(f"127.0.0.1:{port}") as responder:
        twins = [threading.Thread(target=order, args=(listed,)) for listed in (names, names[::-1])]
        for twin in twins:
            twin.start()
        for twin in twins:
            twin.join(10)
    assert outcomes == {tuple(names): "CHAIN", tuple(names[::-1]): "CHAIN"}


class Answer:
    """A CA's answer as the transport hands it over."""

    def __init__(self, body, text="", headers=None):
        self.body, self.text, self.headers = body, text, headers or {}

    def json(self):
        return self.body


class IssuingCA(AcmeClient):
    """An AcmeClient whose CA (no network) answers finalize with the order in status `finalized`, and each poll
    of the order with the next of `polls`; `fetched`: the URLs asked for since."""

    def __init__(self, finalized, polls=(), retry_after=None):
        self.fetched, self.polls = [], list(polls)
        issued = {"status": "valid", "certificate": "https://ca/cert/1"}

        def fetch(what, url):
            self.fetched.append(url)
            return Answer(self.polls.pop(0)) if url == "https://ca/order/1" else Answer(issued, "CHAIN")

        def post(what, url, message):
            return Answer({**issued, "status": finalized}, headers={"Retry-After": retry_after} if retry_after else {})
        self.transport = SimpleNamespace(post=post, fetch=fetch, deadline=SimpleNamespace(
            remaining=lambda: 30.0, context=SimpleNamespace(sleep=lambda seconds: self.fetched.append(seconds))))


ORDER_BODY = messages.Order(status=messages.STATUS_READY, finalize="https://ca/order/1/finalize")


@pytest.fixture
def csr_pem():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.example")])).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM)


def test_an_order_the_ca_issued_at_finalize_is_downloaded_without_asking_again(csr_pem):
    """Let's Encrypt answers finalize with the valid order: one request fewer a certificate than polling it."""
    ca = IssuingCA("valid")
    order = messages.OrderResource(body=ORDER_BODY, uri="https://ca/order/1", csr_pem=csr_pem)
    assert ca._finalize(order) == "CHAIN"
    assert ca.fetched == ["https://ca/cert/1"]


@pytest.mark.parametrize("retry_after", [None, "3"])
def test_an_order_still_processing_after_finalize_is_polled_as_the_ca_asks_until_it_is_valid(csr_pem, retry_after):
    """At once (pebble sets no Retry-After), or after the wait finalize's answer asks for (RFC 8555 section 7.4)."""
    ca = IssuingCA("processing", [{"status": "processing"}, {"status": "valid", "certificate": "https://ca/cert/1"}],
                   retry_after)
    order = messages.OrderResource(body=ORDER_BODY, uri="https://ca/order/1", csr_pem=csr_pem)
    assert ca._finalize(order) == "CHAIN"
    first = [3.0] if retry_after else []  # the sleeps, in order with the URLs fetched
    assert ca.fetched == [*first, "https://ca/order/1", 0.01, "https://ca/order/1", "https://ca/cert/1"]
