"""The order flow (RFC 8555 section 7.4): order, prove control, finalize, download.

`obtain` reads top to bottom like acme-tiny's get_crt. Talking to the CA (signing,
retries, the time budget) is `acme_transport`'s job, the account `acme_account`'s, the
renewal window `acme_ari`'s; publishing the proofs is the challenge solver's.
Polls start at 10 ms and back off, honouring Retry-After, instead of the library's
fixed one-second sleeps. A CA that validated the client's last order by its first look
is sent finalize at that look, without being asked for the authorizations first.
"""

import logging
from collections.abc import Callable, Mapping
from typing import Any

import josepy as jose
import requests
from acme import messages
from cryptography import x509

from certrenew.acme.account import ExternalAccount, register, use_account
from certrenew.acme.solver import ChallengeSolver
from certrenew.acme.transport import (
    AccountUnknown,
    Deadline,
    RequestCounter,
    Transport,
    problem_code,
    retry_after_seconds,
)
from certrenew.errors import CertrenewError, ConfigurationError
from certrenew.pki.domains import is_ip_address
from certrenew.system.hints import validation_hint

log = logging.getLogger(__name__)

FIRST_POLL = 0.01
"""A CA that validates fast (pebble, a CA near by) has answered within a few ms; one that
takes a second costs two more polls than a start at 50 ms would. Also the wait between the
answers to the challenges and the first look at their authorizations."""
MAX_POLL = 2.0


class _NewOrder(messages.NewOrder):
    """A newOrder that can name the certificate it replaces (RFC 9773 section 5)."""

    replaces: str | None = jose.field("replaces", omitempty=True)


class AcmeClient:
    """Orders certificates from one CA as one account."""

    def __init__(self, directory_url: str, account_key_pem: bytes, deadline: Deadline,
                 ca_bundle: str | None = None, counter: RequestCounter | None = None) -> None:
        self.transport = Transport(directory_url, account_key_pem, deadline, ca_bundle, counter)
        self._validated_at_first_look = False
        """Whether the CA had validated this client's last order by the first look: the next is finalized then."""

    def login(self, uri: str | None, email: str | None, agree_tos: bool, eab: ExternalAccount | None = None) -> str:
        """Act as the account at `uri`, or register the key (bound by `eab` if given) when there is
        none; return the URI.

        A known account costs no round trip. Should the CA have forgotten it (a test CA
        restarted, an account deactivated), the first order registers the key again.
        """
        self._email, self._agree_tos, self._eab = email, agree_tos, eab
        if uri is None:
            uri = register(self.transport, email, agree_tos, eab)
        use_account(self.transport, uri)
        return uri

    @property
    def account_uri(self) -> str:
        account = self.transport.net.account
        return account.uri if account is not None else "(none)"

    def obtain(self, domains: list[str], csr_pem: bytes, solver: ChallengeSolver,
               replaces: str | None = None, profile: str | None = None,
               before_finalize: Callable[[str], None] = lambda order_url: None) -> str:
        """Order a certificate for `domains`, prove control through `solver`, return the full chain PEM.

        `replaces` names the certificate this one renews (ARI); `profile` the CA profile to ask for.
        `before_finalize(order_url)` runs once, before the order is finalized, so the caller can
        save what `finish` needs should the run end before the download: once the names are
        validated, or at the first look when the order is finalized then (should the CA refuse that
        and the validation fail, a later `finish` finds the order invalid and orders anew).
        """
        self._check_profile(profile)
        solver.prepare(domains)
        order = self._create_order(domains, csr_pem, replaces, profile)
        # The names to prove come from the CA's answer: publish nothing (a TXT record in our zones, an
        # argument to the operator's DNS hook) for a name that was not ordered.
        unordered = sorted({_ordered_name(authzr).lower() for authzr in order.authorizations} - set(domains))
        if unordered:
            raise CertrenewError(f"the CA's order asks for proof of {', '.join(unordered)}, which was not ordered")
        key = self.transport.key
        # In name order, whatever order the CA lists them in (it owes none; pebble lists a dual certificate's
        # twins' names either way round): a solver that answers a name for one order at a time (TLS-ALPN-01)
        # then makes two orders sharing names wait for them in the same order, so neither holds one the other
        # waits for while it waits for one the other holds.
        challenges = sorted(((_ordered_name(authzr), self._pick_challenge(authzr, solver.challenge_type))
                             for authzr in order.authorizations if authzr.body.status != messages.STATUS_VALID),
                            key=lambda challenge: challenge[0])
        early = bool(challenges) and self._validated_at_first_look  # finalized at the first look
        published = []
        try:
            for name, challb in challenges:
                solver.present(name, challb.chall.encode("token"), challb.response_and_validation(key)[1])
                published.append((name, challb.chall.encode("token")))
            solver.wait_ready()
            for name, challb in challenges:
                self.transport.call(f"answer the challenge for {name}", self.transport.client.answer_challenge,
                                    challb, challb.response(key))
            finalized = self._finalize_at_first_look(order, before_finalize) if early else None
            if finalized is None:
                at_first_look = self._wait_authorizations(order.authorizations, answered=bool(challenges))
                self._validated_at_first_look = bool(challenges) and at_first_look  # not from authorizations reused
        finally:
            for name, token in published:
                solver.cleanup(name, token)
        if not early:
            before_finalize(order.uri)
        try:
            return self._finalize(order, finalized)
        except CertrenewError:
            self._validated_at_first_look = False  # whatever failed, the next order looks first
            raise

    def revoke(self, cert: x509.Certificate, reason: int) -> bool:
        """Revoke `cert` (RFC 8555 section 7.6), signed with the account key; False if the CA
        had revoked it already, which leaves the operator where they wanted to be."""

        def post() -> bool:
            try:
                self.transport.client.revoke(cert, reason)
            except messages.Error as error:
                if error.code == "alreadyRevoked":
                    return False
                raise
            return True

        return self.transport.call("revoke the certificate", post)

    def finish(self, order_url: str, csr_pem: bytes) -> str | None:
        """The full chain of an order an earlier run validated, finalizing it if need be.

        None when the CA no longer has the order or it cannot be completed any more
        (expired, invalid): then only a new order helps.
        """
        response = self.transport.fetch_if_known("check the saved order", order_url)
        if response is None:
            return None
        body = messages.Order.from_json(response.json())
        if body.status not in (messages.STATUS_READY, messages.STATUS_PROCESSING, messages.STATUS_VALID):
            return None
        return self._finalize(messages.OrderResource(body=body, uri=order_url, csr_pem=csr_pem))

    def _check_profile(self, profile: str | None) -> None:
        problem = profile_problem(profile, self.transport.directory.meta.profiles)
        if problem is not None:
            raise ConfigurationError(problem)

    def _create_order(self, domains: list[str], csr_pem: bytes, replaces: str | None,
                      profile: str | None) -> messages.OrderResource:
        """newOrder; once again without `replaces` if the CA refuses it, once again after re-registering."""
        try:
            return self._new_order(domains, csr_pem, replaces, profile)
        except AccountUnknown:
            log.warning("the CA does not know account %s; registering the key again", self.account_uri)
            use_account(self.transport, register(self.transport, self._email, self._agree_tos, self._eab))
        except CertrenewError as error:
            if replaces is None:
                raise
            log.warning("%s; ordering again without naming the replaced certificate", error)
        return self._new_order(domains, csr_pem, None, profile)

    def _new_order(self, domains: list[str], csr_pem: bytes, replaces: str | None,
                   profile: str | None) -> messages.OrderResource:
        identifiers = tuple(messages.Identifier(typ=messages.IDENTIFIER_IP if is_ip_address(d) else messages.IDENTIFIER_FQDN,
                                                value=d) for d in domains)
        new_order = _NewOrder(identifiers=identifiers, replaces=replaces, profile=profile)
        response = self.transport.post("create the order", self.transport.directory["newOrder"], new_order)
        body = messages.Order.from_json(response.json())
        authorizations = [self._fetch_authorization(url) for url in body.authorizations]
        return messages.OrderResource(body=body, uri=response.headers.get("Location"),
                                      authorizations=authorizations, csr_pem=csr_pem)

    def _fetch_authorization(self, url: str) -> messages.AuthorizationResource:
        response = self.transport.fetch("create the order", url)
        return messages.AuthorizationResource(body=messages.Authorization.from_json(response.json()), uri=url)

    @staticmethod
    def _pick_challenge(authzr: messages.AuthorizationResource, challenge_type: str) -> messages.ChallengeBody:
        for challb in authzr.body.challenges:
            if challb.chall.typ == challenge_type:
                return challb
        offered = ", ".join(c.chall.typ for c in authzr.body.challenges) or "none"
        raise CertrenewError(
            f"{authzr.body.identifier.value}: the CA offers no {challenge_type} challenge (offered: {offered})"
        )

    def _finalize_at_first_look(self, order: messages.OrderResource,
                                before_finalize: Callable[[str], None]) -> requests.Response | None:
        """Finalize at the first look, without asking for the authorizations: the CA's answer, or None if it
        refused, as it must while they are not all valid yet (then nothing was done, and the next order is
        not finalized early). One request a certificate fewer (7.2 -> 6.1 in a batch against pebble); a CA
        that takes longer to validate (Let's Encrypt: a second or more) never gets here."""
        self.transport.deadline.context.sleep(FIRST_POLL)
        before_finalize(order.uri)
        answer = self.transport.post_if_ready("finalize the order", order.body.finalize, _certificate_request(order))
        body = answer.json() if answer is not None else None
        status = body.get("status") if isinstance(body, dict) else None
        if status in ("pending", "ready"):  # taken, not acted on (RFC 8555 wants orderNotReady): as a refusal
            log.info("the CA took finalize while the order was %s, without acting on it; asking again once its "
                     "authorizations are valid", status)
            answer = None
        self._validated_at_first_look = answer is not None
        return answer

    def _wait_authorizations(self, authorizations: list[messages.AuthorizationResource], answered: bool) -> bool:
        """Until each authorization is valid; after challenges were `answered`, the first look comes a poll
        later: the CA validates once answered, and asked at once it only ever said "pending". Whether each
        was valid at the first look."""
        if answered:
            self.transport.deadline.context.sleep(FIRST_POLL)
        at_first_look = [self._wait_authorization(authzr) for authzr in authorizations]  # each, whatever the others
        return all(at_first_look)

    def _wait_authorization(self, authzr: messages.AuthorizationResource) -> bool:
        """Until `authzr` is valid; whether it was at the first look."""
        domain = _ordered_name(authzr)
        final, looks = self._poll(f"validation of {domain}", authzr.uri, lambda body: body["status"] != "pending")
        body = messages.Authorization.from_json(final.json())
        if body.status != messages.STATUS_VALID:
            failed = [(c.chall.typ, c.error) for c in body.challenges if c.error is not None]
            detail = "; ".join(str(error.detail or error) for _, error in failed) or f"authorization is {body.status.name}"
            hints = {hint for typ, error in failed
                     if (hint := validation_hint(problem_code(error), error.detail or "", domain, typ))}
            raise CertrenewError(f"{domain}: validation failed: {detail}" + "".join(f"; {hint}" for hint in sorted(hints)))
        return looks == 1

    def _finalize(self, order: messages.OrderResource, answer: requests.Response | None = None) -> str:
        """Finalize the order (unless `answer` is the CA's answer to that already) and download its certificate.
        A CA that issues at once (Let's Encrypt) answers finalize with the order already valid: no request is
        made to ask again."""
        if answer is None and order.body.status not in (messages.STATUS_PROCESSING, messages.STATUS_VALID):
            answer = self.transport.post("finalize the order", order.body.finalize, _certificate_request(order))
        if answer is None or not _order_ended(answer.json()):
            answer, _ = self._poll("issuance", order.uri, _order_ended, answer)
        body = messages.Order.from_json(answer.json())
        if body.status != messages.STATUS_VALID or not body.certificate:
            reason = str(body.error.detail or body.error) if body.error else f"order is {body.status.name}"
            raise CertrenewError(f"the CA did not issue the certificate: {reason}")
        return self.transport.fetch("download the certificate", body.certificate).text

    def _poll(self, what: str, url: str, finished: Callable[[Any], bool],
              unfinished: requests.Response | None = None) -> tuple[requests.Response, int]:
        """Fetch until `finished`, sleeping 10 ms, then twice as long each time, or as long as Retry-After asks;
        the first fetch at once, unless `unfinished` (an answer in hand, a finalize still processing) asks to wait.
        The finished answer, and how many fetches it took."""
        delay = FIRST_POLL
        wait = retry_after_seconds(unfinished) if unfinished is not None else None
        looks = 0
        while True:
            if wait:
                if wait >= self.transport.deadline.remaining():
                    raise CertrenewError(f"gave up waiting for the {what}: the time budget (--timeout) ran out")
                self.transport.deadline.context.sleep(wait)
            response = self.transport.fetch(f"check the {what}", url)
            looks += 1
            if finished(response.json()):
                return response, looks
            wait = retry_after_seconds(response) or delay
            delay = min(delay * 2, MAX_POLL)


def _certificate_request(order: messages.OrderResource) -> messages.CertificateRequest:
    return messages.CertificateRequest(csr=x509.load_pem_x509_csr(order.csr_pem))


def _order_ended(body: Any) -> bool:
    """Whether an order is past issuing: valid (its certificate ready) or invalid."""
    return body["status"] not in ("processing", "ready", "pending")


def _ordered_name(authzr: messages.AuthorizationResource) -> str:
    """The name as ordered: a wildcard's authorization carries the base name and a flag."""
    name = authzr.body.identifier.value
    return f"*.{name}" if authzr.body.wildcard else name


def profile_problem(profile: str | None, offered: Mapping[str, Any] | None) -> str | None:
    """Why a CA whose directory lists `offered` (its meta.profiles; None: it lists none) cannot
    issue `profile`, or None when it can; `certrenew check` asks the same before any order."""
    if profile is None or profile in (offered or {}):
        return None
    return f"the CA does not offer the profile {profile!r} " + (
        f"(it offers: {', '.join(sorted(offered))})" if offered else "(its directory lists no profiles)")
