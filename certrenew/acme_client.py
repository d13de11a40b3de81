"""The ACME conversation (RFC 8555): account, order, challenges, finalization, download.

Built on the `acme` library's messages and `ClientV2`. What certrenew changes is
waiting: polls start at 10 ms and back off, honouring Retry-After, instead of the
library's fixed one-second sleeps; every request is retried within bounds when
the CA answers badNonce, drops the connection or fails with a 5xx; and a rate limit
(429, `rateLimited`) is waited out when its Retry-After fits the time budget.
"""

import base64
import datetime
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import josepy as jose
import requests
import tenacity
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from acme import challenges, client, errors, messages

from certrenew import __version__, signals
from certrenew.challenge import ChallengeSolver
from certrenew.errors import CertrenewError, UsageError
from certrenew.keys import generate_key, key_to_pem, load_key

log = logging.getLogger(__name__)

ARI_DEFAULT_RETRY = datetime.timedelta(hours=6)
ARI_MAX_RETRY = datetime.timedelta(days=1)
FIRST_POLL = 0.01
"""A CA that validates fast (pebble, a CA near by) has answered within a few ms; one that
takes a second costs two more polls than a start at 50 ms would."""
MAX_POLL = 2.0
MAX_CALL_TIMEOUT = 30.0
TRANSIENT_ATTEMPTS = 5
BAD_NONCE_ATTEMPTS = 20
"""A rejected nonce costs one quick round trip, and a CA may reject many (pebble: half, if asked)."""


class Deadline:
    """The end of a run's time budget; every wait and network call is bounded by it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left; raises once they are spent, or once a signal cancelled the run."""
        signals.check()
        left = self._end - time.monotonic()
        if left <= 0:
            raise CertrenewError(f"gave up after the time budget of {self.seconds:g} s (--timeout)")
        return left


@dataclass(frozen=True)
class RenewalWindow:
    """The CA's suggested renewal window for a certificate (RFC 9773) and when to ask again."""

    start: datetime.datetime
    end: datetime.datetime
    next_check: datetime.datetime

    def pick(self) -> datetime.datetime:
        """A uniformly random time in the window, so a fleet does not renew all at once."""
        return self.start + (self.end - self.start) * random.random()


def ari_cert_id(cert: x509.Certificate) -> str:
    """The certificate's ARI identifier: base64url(authority key id) "." base64url(serial)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    serial = cert.serial_number.to_bytes((cert.serial_number.bit_length() + 8) // 8, "big", signed=True)
    return f"{_b64url(aki)}.{_b64url(serial)}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


class _NewOrder(messages.NewOrder):
    """A newOrder that can name the certificate it replaces (RFC 9773 section 5)."""

    replaces: str | None = jose.field("replaces", omitempty=True)


def new_account_key_pem() -> bytes:
    """An ECDSA P-256 account key: ES256 signatures are small and fast to make."""
    return key_to_pem(generate_key("ecdsa-p256"))


class AcmeClient:
    """An ACME client bound to one directory and one account key."""

    def __init__(self, directory_url: str, account_key_pem: bytes, deadline: Deadline,
                 ca_bundle: str | None = None) -> None:
        self.deadline = deadline
        private = load_key(account_key_pem)
        is_rsa = isinstance(private, rsa.RSAPrivateKey)  # certrenew makes ECDSA keys; one from certbot is RSA
        key = jose.JWKRSA(key=private) if is_rsa else jose.JWKEC(key=private)
        self.net = _Network(deadline, key=key, alg=jose.RS256 if is_rsa else jose.ES256, verify_ssl=ca_bundle or True,
                            user_agent=f"certrenew/{__version__}")
        try:
            directory = messages.Directory.from_json(self.net.get(directory_url).json())
        except (requests.RequestException, errors.Error, ValueError) as error:
            raise CertrenewError(f"cannot reach the ACME directory {directory_url}: {_describe(error)}") from None
        self.client = client.ClientV2(directory, self.net)

    @property
    def terms_of_service(self) -> str | None:
        return self.client.directory.meta.terms_of_service

    @property
    def supports_ari(self) -> bool:
        try:
            self.client.directory["renewalInfo"]
        except KeyError:
            return False
        return True

    def renewal_window(self, cert: x509.Certificate) -> RenewalWindow:
        """Ask the CA when to renew `cert` (call only when `supports_ari`)."""
        url = f"{self.client.directory['renewalInfo'].rstrip('/')}/{ari_cert_id(cert)}"
        response = self._call("send renewal information", self.net.get, url)
        try:
            window = messages.RenewalInfo.from_json(response.json()).suggested_window
        except (ValueError, jose.DeserializationError) as error:
            raise CertrenewError(f"malformed renewal information from {url}: {error}") from None
        if window.start is None or window.end is None or window.end < window.start:
            raise CertrenewError(f"malformed renewal window from {url}: {window.start} to {window.end}")
        retry = _retry_after_seconds(response)
        wait = ARI_DEFAULT_RETRY if retry is None else min(datetime.timedelta(seconds=retry), ARI_MAX_RETRY)
        return RenewalWindow(window.start, window.end, datetime.datetime.now(datetime.timezone.utc) + wait)

    def login(self, uri: str | None, email: str | None, agree_tos: bool) -> str:
        """Act as the account at `uri`, or register the key when there is none; return the URI.

        A known account costs no round trip. Should the CA have forgotten it (a test CA
        restarted, an account deactivated), the first order registers the key again.
        """
        self._email, self._agree_tos = email, agree_tos
        if uri is None:
            uri = self._register()
        self._use_account(uri)
        return uri

    @property
    def account_uri(self) -> str:
        return self.net.account.uri

    def _use_account(self, uri: str) -> None:
        self.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())

    def _register(self) -> str:
        if not self._agree_tos:
            terms = self.terms_of_service
            raise UsageError(
                "registering an ACME account requires agreeing to the CA's terms of service"
                + (f" ({terms})" if terms else "") + ": pass --agree-tos"
            )
        registration = messages.NewRegistration.from_data(email=self._email, terms_of_service_agreed=True)
        self.net.account = None
        try:
            return self._call("register the account", self.client.new_account, registration).uri
        except errors.ConflictError as conflict:
            return conflict.location

    def obtain(self, domains: list[str], csr_pem: bytes, solver: ChallengeSolver,
               replaces: str | None = None, profile: str | None = None,
               before_finalize: Callable[[str], None] = lambda order_url: None) -> str:
        """Order a certificate for `domains`, prove control through `solver`, return the full chain PEM.

        `replaces` names the certificate this one renews (ARI); `profile` the CA profile to ask for.
        `before_finalize(order_url)` runs once the names are validated, so the caller can
        save what `finish` needs should the run end before the download.
        """
        self._check_profile(profile)
        order = self._create_order(domains, csr_pem, replaces, profile)
        published = []
        try:
            for authzr in order.authorizations:
                if authzr.body.status == messages.STATUS_VALID:
                    continue
                domain = authzr.body.identifier.value
                challb = self._pick_challenge(authzr, solver.challenge_type)
                response, validation = challb.response_and_validation(self.net.key)
                solver.present(domain, challb.chall.encode("token"), validation)
                published.append((domain, challb.chall.encode("token")))
                self._call(f"answer the challenge for {domain}", self.client.answer_challenge, challb, response)
            for authzr in order.authorizations:
                self._wait_authorization(authzr)
        finally:
            for domain, token in published:
                solver.cleanup(domain, token)
        before_finalize(order.uri)
        return self._finalize(order)

    def finish(self, order_url: str, csr_pem: bytes) -> str | None:
        """The full chain of an order an earlier run validated, finalizing it if need be.

        None when the CA no longer has the order or it cannot be completed any more
        (expired, invalid): then only a new order helps.
        """
        response = self._call("check the saved order", self._saved_order, order_url)
        if response is None:
            return None
        body = messages.Order.from_json(response.json())
        if body.status not in (messages.STATUS_READY, messages.STATUS_PROCESSING, messages.STATUS_VALID):
            return None
        return self._finalize(messages.OrderResource(body=body, uri=order_url, csr_pem=csr_pem))

    def _saved_order(self, order_url: str) -> requests.Response | None:
        try:
            return self.client._post_as_get(order_url)
        except messages.Error as error:  # e.g. a restarted CA: the order is gone
            log.info("the CA no longer has order %s: %s", order_url, error.detail or error)
            return None

    def _check_profile(self, profile: str | None) -> None:
        offered = self.client.directory.meta.profiles or {}
        if profile is not None and profile not in offered:
            raise CertrenewError(
                f"the CA does not offer the profile {profile!r} "
                + (f"(it offers: {', '.join(sorted(offered))})" if offered else "(its directory lists no profiles)")
            )

    def _create_order(self, domains: list[str], csr_pem: bytes, replaces: str | None,
                      profile: str | None) -> messages.OrderResource:
        """newOrder; once again without `replaces` if the CA refuses it, once again after re-registering."""
        try:
            return self._call("create the order", self._new_order, domains, csr_pem, replaces, profile)
        except _AccountUnknown:
            log.warning("the CA does not know account %s; registering the key again", self.account_uri)
            self._use_account(self._register())
        except CertrenewError as error:
            if replaces is None:
                raise
            log.warning("%s; ordering again without naming the replaced certificate", error)
        return self._call("create the order", self._new_order, domains, csr_pem, None, profile)

    def _new_order(self, domains: list[str], csr_pem: bytes, replaces: str | None,
                   profile: str | None) -> messages.OrderResource:
        identifiers = tuple(messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=d) for d in domains)
        new_order = _NewOrder(identifiers=identifiers, replaces=replaces, profile=profile)
        response = self.client._post(self.client.directory["newOrder"], new_order)
        body = messages.Order.from_json(response.json())
        authorizations = [self._fetch_authorization(url) for url in body.authorizations]
        return messages.OrderResource(body=body, uri=response.headers.get("Location"),
                                      authorizations=authorizations, csr_pem=csr_pem)

    def _fetch_authorization(self, url: str) -> messages.AuthorizationResource:
        response = self.client._post_as_get(url)
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

    def _wait_authorization(self, authzr: messages.AuthorizationResource) -> None:
        domain = authzr.body.identifier.value
        final = self._poll(f"validation of {domain}", lambda: self.client._post_as_get(authzr.uri),
                           lambda body: body["status"] != "pending")
        body = messages.Authorization.from_json(final.json())
        if body.status != messages.STATUS_VALID:
            problems = [str(c.error.detail or c.error) for c in body.challenges if c.error is not None]
            detail = "; ".join(problems) or f"authorization is {body.status.name}"
            raise CertrenewError(f"{domain}: validation failed: {detail}")

    def _finalize(self, order: messages.OrderResource) -> str:
        if order.body.status not in (messages.STATUS_PROCESSING, messages.STATUS_VALID):
            finalize = messages.CertificateRequest(csr=x509.load_pem_x509_csr(order.csr_pem))
            self._call("finalize the order", self.client._post, order.body.finalize, finalize)
        final = self._poll("issuance", lambda: self.client._post_as_get(order.uri),
                           lambda body: body["status"] not in ("processing", "ready", "pending"))
        body = messages.Order.from_json(final.json())
        if body.status != messages.STATUS_VALID or not body.certificate:
            reason = str(body.error.detail or body.error) if body.error else f"order is {body.status.name}"
            raise CertrenewError(f"the CA did not issue the certificate: {reason}")
        return self._call("download the certificate", self.client._post_as_get, body.certificate).text

    def _poll(self, what: str, fetch: Callable[[], requests.Response],
              finished: Callable[[dict], bool]) -> requests.Response:
        """Fetch until `finished`, sleeping 10 ms, then twice as long each time, or as long as Retry-After asks."""
        delay = FIRST_POLL
        while True:
            response = self._call(f"check the {what}", fetch)
            if finished(response.json()):
                return response
            wait = _retry_after_seconds(response) or delay
            if wait >= self.deadline.remaining():
                raise CertrenewError(f"gave up waiting for the {what}: the time budget (--timeout) ran out")
            signals.sleep(wait)
            delay = min(delay * 2, MAX_POLL)

    def _call(self, what: str, function: Callable, *args):
        """Run one ACME exchange; turn the CA's refusal into an error that says what failed."""
        try:
            return function(*args)
        except _RetryLater as later:
            outcome = ("which is beyond the time budget (--timeout)" if later.beyond_deadline
                       else f"and still refused after {TRANSIENT_ATTEMPTS} attempts")
            raise CertrenewError(f"the CA refused to {what}: {later} {outcome}; a later run will try again") from None
        except messages.Error as error:
            unknown = _AccountUnknown if error.code == "accountDoesNotExist" else CertrenewError
            raise unknown(f"the CA refused to {what}: {error.detail or error}") from None
        except errors.ConflictError as error:
            raise CertrenewError(f"the CA refused to {what}: conflict ({error})") from None
        except (requests.RequestException, errors.ClientError) as error:
            raise CertrenewError(f"cannot {what}: {_describe(error)}") from None


class _AccountUnknown(CertrenewError):
    """The CA does not know the account certrenew stored."""


class _Network(client.ClientNetwork):
    """`ClientNetwork` with bounded retries and per-call timeouts taken from the deadline."""

    def __init__(self, deadline: Deadline, **kwargs) -> None:
        super().__init__(**kwargs)
        self.deadline = deadline

    def _send_request(self, method: str, url: str, *args, **kwargs) -> requests.Response:
        kwargs["timeout"] = min(MAX_CALL_TIMEOUT, self.deadline.remaining())
        return super()._send_request(method, url, *args, **kwargs)

    def post(self, *args, **kwargs) -> requests.Response:
        # Each attempt signs with a fresh nonce, so a badNonce is simply tried again.
        return self._retrying(self._post_once, *args, **kwargs)

    def get(self, *args, **kwargs) -> requests.Response:
        return self._retrying(super().get, *args, **kwargs)

    def _check_response(self, response: requests.Response, content_type: str | None = None) -> requests.Response:
        """The library's check, with "come back later" answers told apart from other failures."""
        try:
            return super()._check_response(response, content_type=content_type)
        except (messages.Error, errors.ClientError) as error:
            seconds = _retry_after_seconds(response)
            limited = response.status_code == 429 or getattr(error, "code", None) == "rateLimited"
            if limited or (response.status_code == 503 and seconds is not None):
                raise _RetryLater(error, seconds) from None
            raise

    def _retrying(self, function: Callable, *args, **kwargs):
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(self._worth_retrying),
            stop=tenacity.stop_after_delay(max(self.deadline.remaining() - 1, 0)) | _attempts_spent,
            wait=_transient_wait,
            sleep=signals.sleep,
            before_sleep=lambda state: log.debug("retrying after %s", state.outcome.exception()),
            reraise=True,
        )
        return retrying(function, *args, **kwargs)

    def _worth_retrying(self, error: BaseException) -> bool:
        if isinstance(error, _RetryLater):
            # A wait past the deadline is not worth starting: fail now and say why.
            error.beyond_deadline = error.seconds is not None and error.seconds >= self.deadline.remaining()
            return not error.beyond_deadline
        return _is_transient(error)


class _RetryLater(Exception):
    """The CA asked to come back later: a rate limit (429, rateLimited) or a 503 with Retry-After."""

    def __init__(self, error: Exception, seconds: float | None) -> None:
        detail = getattr(error, "detail", None) or _describe(error)
        when = f"it asks to retry in {seconds:.0f} s" if seconds is not None else "without a Retry-After"
        super().__init__(f"rate limited or busy ({detail}); {when}")
        self.seconds = seconds
        self.beyond_deadline = False


def _is_transient(error: BaseException) -> bool:
    """Worth the same request again: a stale nonce, a dropped connection, a server error."""
    if isinstance(error, messages.Error):
        return error.code in ("badNonce", "serverInternal")
    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        return True
    if isinstance(error, errors.ClientError) and error.args and isinstance(error.args[0], requests.Response):
        return error.args[0].status_code >= 500
    return False


def _attempts_spent(state: tenacity.RetryCallState) -> bool:
    error = state.outcome.exception()
    bad_nonce = isinstance(error, messages.Error) and error.code == "badNonce"
    return state.attempt_number >= (BAD_NONCE_ATTEMPTS if bad_nonce else TRANSIENT_ATTEMPTS)


_exponential = tenacity.wait_exponential(multiplier=0.25, max=4) + tenacity.wait_random(0, 0.25)


def _transient_wait(state: tenacity.RetryCallState) -> float:
    error = state.outcome.exception()
    if isinstance(error, messages.Error) and error.code == "badNonce":
        return 0
    if isinstance(error, _RetryLater) and error.seconds is not None:
        return error.seconds
    return _exponential(state)


def _retry_after_seconds(response: requests.Response) -> float | None:
    if "Retry-After" not in response.headers:
        return None
    when = client.ClientV2.retry_after(response, 0)
    return max((when - datetime.datetime.now()).total_seconds(), 0.0)


def _describe(error: BaseException) -> str:
    if isinstance(error, requests.ConnectionError):
        return "connection failed (is the CA reachable?)"
    if isinstance(error, requests.Timeout):
        return "the request timed out"
    if isinstance(error, errors.ClientError) and error.args and isinstance(error.args[0], requests.Response):
        response = error.args[0]
        return f"HTTP {response.status_code} from {response.url}"
    return str(error) or type(error).__name__
