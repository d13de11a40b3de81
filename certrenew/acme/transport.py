"""Talking to the CA: signed requests, bounded in time, retried when worth it.

Built on the `acme` library's `ClientNetwork` and `ClientV2`. What certrenew changes:
every request is retried within bounds when the CA answers badNonce, drops the
connection or fails with a 5xx; a rate limit (429, `rateLimited`) or a 503 with
Retry-After is waited out when it fits the time budget; and every call is bounded by
the run's `Deadline`. The library's private `ClientV2._post` and `_post_as_get` are
used here and nowhere else (hence `acme` is pinned below its next major version). Every
request, to a URL the CA handed out or a redirect, goes only to the directory's scheme (https).
"""

import datetime
import email.utils
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import josepy as jose
import requests
import tenacity
from acme import client, errors, messages
from cryptography.hazmat.primitives.asymmetric import rsa
from requests.adapters import HTTPAdapter

from certrenew.errors import AccountUnknown, CertrenewError, ConfigurationError
from certrenew.pki.keys import load_key
from certrenew.system.hints import untrusted_ca
from certrenew.system.runcontext import RunContext
from certrenew.version import __version__

log = logging.getLogger(__name__)

MAX_CALL_TIMEOUT = 30.0
TRANSIENT_ATTEMPTS = 5
BAD_NONCE_ATTEMPTS = 20
"""A rejected nonce costs one quick round trip, and a CA may reject many (pebble: half, if asked)."""
MAX_RESPONSE = 1024 * 1024
"""Bytes read of any answer from the CA: a certificate chain or an ACME object is a few KiB."""
OUR_MISTAKES = frozenset({"invalidContact", "invalidEmail", "unsupportedContact", "invalidProfile",
                          "externalAccountRequired", "userActionRequired"})
"""Problem types (RFC 8555 section 6.7) that a change of our settings fixes, not a later retry:
they fail without starting the back-off."""


class Deadline:
    """The end of a run's time budget; every wait and network call is bounded by it, and by
    `context`'s cancellation."""

    def __init__(self, seconds: float, context: RunContext | None = None) -> None:
        self.seconds = seconds
        self.context = context or RunContext()
        self._end = time.monotonic() + seconds
        self._cuts: list[weakref.WeakMethod] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._watchdog: threading.Thread | None = None

    def at_end(self, cut: Callable[[], None]) -> None:
        """Call `cut` (a bound method, held weakly) from a watchdog thread once the budget is spent.

        One thread per deadline, started at the first call, not a timer per request: a
        run of 100 certificates sends about a thousand, and a thread start each was a
        tenth of its CPU time.
        """
        with self._lock:
            self._cuts.append(weakref.WeakMethod(cut))
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="certrenew-deadline", daemon=True)
                self._watchdog.start()

    def close(self) -> None:
        """The run is over: stop the watchdog without cutting anything."""
        self._closed.set()

    def _watch(self) -> None:
        if self._closed.wait(max(0.0, self._end - time.monotonic())):
            return
        with self._lock:
            cuts = [ref() for ref in self._cuts]
        for cut in cuts:
            if cut is not None:
                cut()

    def remaining(self) -> float:
        """Seconds left; raises once they are spent, or once the run is cancelled."""
        self.context.check()
        left = self._end - time.monotonic()
        if left <= 0:
            raise CertrenewError(f"gave up after the time budget of {self.seconds:g} s (--timeout)")
        return left


class RequestCounter(Protocol):
    """Counts requests to the CA (a `metrics.Telemetry`), for the metrics of a run or a daemon."""

    def count_acme_request(self, failed: bool) -> None: ...


class Transport:
    """One CA directory, one account key: every ACME exchange certrenew makes goes through here.

    Each method names what it does (`what`), so a refusal reads "the CA refused to
    <what>: <the CA's words>" rather than a bare HTTP status.
    """

    def __init__(self, directory_url: str, account_key_pem: bytes, deadline: Deadline,
                 ca_bundle: str | None = None, counter: RequestCounter | None = None) -> None:
        self.deadline = deadline
        private = load_key(account_key_pem)
        is_rsa = isinstance(private, rsa.RSAPrivateKey)  # certrenew makes ECDSA keys; one from certbot is RSA
        self.key = jose.JWKRSA(key=private) if is_rsa else jose.JWKEC(key=private)
        self.net = _Network(deadline, counter, urlsplit(directory_url).scheme, key=self.key,
                            alg=jose.RS256 if is_rsa else jose.ES256,
                            verify_ssl=(ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE")
                                        or os.environ.get("CURL_CA_BUNDLE") or True),
                            user_agent=f"certrenew/{__version__}")
        try:
            answer = self.net.get(directory_url)
            directory = messages.Directory.from_json(answer.json())
        except (requests.RequestException, errors.Error, ValueError) as error:
            if untrusted(error):
                raise ConfigurationError(untrusted_ca(directory_url, str(error))) from error
            raise CertrenewError(f"cannot reach the ACME directory {directory_url}: {describe(error)}") from error
        except _RetryLater as later:  # a 429, or a 503 with Retry-After, past the retries or the time budget
            raise CertrenewError(f"the ACME directory {directory_url} answers {later}; a later run will try again") from later
        self.client = client.ClientV2(directory, self.net)
        self.ca_clock_ahead = clock_ahead(answer)
        """How far the CA's clock is ahead of this host's (None: its answer had no Date header)."""

    @property
    def directory(self) -> messages.Directory:
        return self.client.directory

    def post(self, what: str, url: str, message: jose.JSONDeSerializable) -> requests.Response:
        """A signed POST of `message` to `url`."""
        return self.call(what, self.client._post, url, message)

    def post_if_ready(self, what: str, url: str, message: jose.JSONDeSerializable) -> requests.Response | None:
        """`post`, but None when the CA refuses it: RFC 8555 section 7.4 has a CA refuse to finalize an order
        before all its authorizations are valid (orderNotReady), and change nothing. A CA may name that
        refusal otherwise: any refusal is None, for the caller to wait for the authorizations and post
        again, when a lasting refusal (a bad CSR, say) comes again and is reported."""
        def post() -> requests.Response | None:
            try:
                return self.client._post(url, message)
            except messages.Error as error:
                if problem_code(error) != "orderNotReady":
                    log.info("the CA refused to %s before its authorizations were seen valid, not saying "
                             "orderNotReady but: %s; asking again once they are", what, error.detail or error)
                return None
        return self.call(what, post)

    def fetch(self, what: str, url: str) -> requests.Response:
        """A signed POST-as-GET of `url` (an order, an authorization, the certificate)."""
        return self.call(what, self.client._post_as_get, url)

    def fetch_if_known(self, what: str, url: str) -> requests.Response | None:
        """`fetch`, but None when the CA answers that it has no such resource (e.g. a restarted CA)."""
        def fetch() -> requests.Response | None:
            try:
                return self.client._post_as_get(url)
            except messages.Error as error:
                log.info("the CA no longer has %s: %s", url, error.detail or error)
                return None
        return self.call(what, fetch)

    def get(self, what: str, url: str) -> requests.Response:
        """An unsigned GET (renewal information)."""
        return self.call(what, self.net.get, url)

    def call(self, what: str, function: Callable[..., Any], *args: Any) -> Any:
        """Run one ACME exchange; turn the CA's refusal into an error that says what failed."""
        try:
            return function(*args)
        except _RetryLater as later:
            outcome = ("which is beyond the time budget (--timeout)" if later.beyond_deadline
                       else f"and still refused after {TRANSIENT_ATTEMPTS} attempts")
            raise CertrenewError(f"the CA refused to {what}: {later} {outcome}; a later run will try again") from later
        except messages.Error as error:
            kind = {"accountDoesNotExist": AccountUnknown}.get(error.code or "", CertrenewError)
            if problem_code(error) in OUR_MISTAKES:
                kind = ConfigurationError
            raise kind(f"the CA refused to {what}: {error.detail or error}") from error
        except errors.ConflictError as error:
            raise CertrenewError(f"the CA refused to {what}: conflict ({error})") from error
        except (requests.RequestException, errors.ClientError) as error:
            raise CertrenewError(f"cannot {what}: {describe(error)}") from error


class _Network(client.ClientNetwork):
    """`ClientNetwork` with bounded retries, answers bounded in size, and no request outliving the deadline.

    requests' timeout bounds each read, not the answer: a CA dripping one byte a second
    would hold a run for ever. So when the time budget runs out, the deadline's watchdog
    cuts every connection, whatever phase a request on it is in.

    `counter` counts every request sent (retries and nonce requests included) and every
    one that got no answer or an HTTP error status.

    Only URLs of `scheme`, the directory's (https:// as the config requires), are followed.
    """

    def __init__(self, deadline: Deadline, counter: RequestCounter | None = None, scheme: str = "https",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deadline = deadline
        self.counter = counter
        self._sockets: weakref.WeakSet = weakref.WeakSet()
        # requests reads the environment (proxy variables, REQUESTS_CA_BUNDLE, ~/.netrc) again for every
        # request, a tenth of a millisecond each, about ten requests a certificate: it is read once
        # per CA host instead (`_environment`; the CA bundle in `Transport`), to the same effect.
        self.session.trust_env = False
        self._environments: dict[tuple[str, str], dict[str, Any]] = {}
        adapter = _WatchedAdapter(self._sockets, scheme)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        deadline.at_end(self._cut)

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        remaining = self.deadline.remaining()
        # A silent CA is cut by the deadline, not timed out a moment before it: one message for both.
        kwargs["timeout"] = min(MAX_CALL_TIMEOUT, remaining + 1)
        kwargs["hooks"] = {"response": _read_bounded}
        kwargs.update(self._environment(url))
        failed = True
        try:
            response = super()._send_request(method, url, *args, **kwargs)
            failed = response.status_code >= 400
            return response
        except requests.RequestException:
            self.deadline.remaining()  # raises when the deadline is what cut it
            raise
        finally:
            if self.counter is not None:
                self.counter.count_acme_request(failed)

    def _environment(self, url: str) -> dict[str, Any]:
        """The proxies and the ~/.netrc credentials requests would take from the environment for `url`."""
        parts = urlsplit(url)
        origin = (parts.scheme, parts.netloc)
        if origin not in self._environments:
            found: dict[str, Any] = {"proxies": requests.utils.get_environ_proxies(url)}
            auth = requests.utils.get_netrc_auth(url)
            if auth:
                found["auth"] = auth
            self._environments[origin] = found
        return self._environments[origin]

    def _cut(self) -> None:
        """Shut down every connection (the budget is spent): a read blocked on one ends at once."""
        for sock in list(self._sockets):
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: no TLS goodbye
            except OSError:
                pass

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        # Each attempt signs with a fresh nonce, so a badNonce is simply tried again.
        return self._retrying(self._post_once, *args, **kwargs)

    def get(self, *args: Any, **kwargs: Any) -> requests.Response:
        return self._retrying(super().get, *args, **kwargs)

    @classmethod
    def _check_response(cls, response: requests.Response, content_type: str | None = None) -> requests.Response:
        """The library's check, with "come back later" answers told apart from other failures."""
        try:
            return super()._check_response(response, content_type=content_type)
        except (messages.Error, errors.ClientError) as error:
            seconds = retry_after_seconds(response)
            limited = response.status_code == 429 or getattr(error, "code", None) == "rateLimited"
            if limited or (response.status_code == 503 and seconds is not None):
                raise _RetryLater(error, seconds) from error
            raise

    def _retrying(self, function: Callable[..., requests.Response], *args: Any, **kwargs: Any) -> requests.Response:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(self._worth_retrying),
            stop=tenacity.stop_after_delay(max(self.deadline.remaining() - 1, 0)) | _AttemptsSpent(),
            wait=_transient_wait,
            sleep=self.deadline.context.sleep,
            before_sleep=lambda state: log.debug("retrying after %s", _error_of(state)),
            reraise=True,
        )
        return retrying(function, *args, **kwargs)

    def _worth_retrying(self, error: BaseException) -> bool:
        if isinstance(error, _RetryLater):
            # A wait past the deadline is not worth starting: fail now and say why.
            error.beyond_deadline = error.seconds is not None and error.seconds >= self.deadline.remaining()
            return not error.beyond_deadline
        return _is_transient(error)

class _WatchedAdapter(HTTPAdapter):
    """An adapter that sends only to URLs of the directory's scheme, and remembers each socket it
    connects, so that the deadline can cut it mid-read.

    Every request passes here, a redirect's included: the URLs the CA hands out (an order, an
    authorization, a challenge, finalize, the certificate, renewal information) are followed
    only over TLS. Over plain HTTP anyone on the path could hand back a chain of their own, and
    the checks of an issued bundle prove its key, names and signatures, not its trust root.
    """

    def __init__(self, sockets: weakref.WeakSet, scheme: str) -> None:
        self._sockets = sockets
        self._scheme = scheme
        super().__init__()

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        if urlsplit(request.url or "").scheme != self._scheme:
            raise CertrenewError(f"refusing {request.url} from the CA: not an {self._scheme}:// URL as its "
                                 "directory is")
        return super().send(request, *args, **kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        pools = self.poolmanager.pool_classes_by_scheme
        self.poolmanager.pool_classes_by_scheme = {scheme: _remembering(pool, self._sockets)
                                                   for scheme, pool in pools.items()}


def _remembering(pool_class: type, sockets: weakref.WeakSet) -> type:
    """`pool_class` whose connections add their socket to `sockets` once connected."""
    class Connection(pool_class.ConnectionCls):  # type: ignore[name-defined]
        def connect(self) -> None:
            super().connect()
            sockets.add(self.sock)
    return type(pool_class.__name__, (pool_class,), {"ConnectionCls": Connection})


def _read_bounded(response: requests.Response, **kwargs: Any) -> requests.Response:
    """Read the body (a response hook, before requests would), refusing one over MAX_RESPONSE bytes."""
    declared = response.headers.get("Content-Length", "")
    size = int(declared) if declared.isdigit() else 0
    chunks = []
    if size <= MAX_RESPONSE:
        size = 0
        for chunk in response.iter_content(64 * 1024):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_RESPONSE:
                break
    if size > MAX_RESPONSE:
        response.close()
        raise requests.RequestException(f"the answer from {response.url} is larger than "
                                        f"{MAX_RESPONSE // 1024} KiB", response=response)
    response._content = b"".join(chunks)
    return response


class _RetryLater(Exception):
    """The CA asked to come back later: a rate limit (429, rateLimited) or a 503 with Retry-After."""

    def __init__(self, error: Exception, seconds: float | None) -> None:
        detail = getattr(error, "detail", None) or describe(error)
        when = f"it asks to retry in {seconds:.0f} s" if seconds is not None else "without a Retry-After"
        super().__init__(f"rate limited or busy ({detail}); {when}")
        self.seconds = seconds
        self.beyond_deadline = False


def _is_transient(error: BaseException) -> bool:
    """Worth the same request again: a stale nonce, a dropped connection, a server error."""
    if isinstance(error, messages.Error):
        return error.code in ("badNonce", "serverInternal")
    if isinstance(error, requests.exceptions.SSLError):
        return False  # an untrusted certificate stays untrusted: say so at once
    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        return True
    if isinstance(error, errors.ClientError) and error.args and isinstance(error.args[0], requests.Response):
        return error.args[0].status_code >= 500
    return False


def _error_of(state: tenacity.RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


class _AttemptsSpent(tenacity.stop.stop_base):
    """Stop after a few attempts, more of them for a rejected nonce."""

    def __call__(self, state: tenacity.RetryCallState) -> bool:
        error = _error_of(state)
        bad_nonce = isinstance(error, messages.Error) and error.code == "badNonce"
        return state.attempt_number >= (BAD_NONCE_ATTEMPTS if bad_nonce else TRANSIENT_ATTEMPTS)


_exponential = tenacity.wait_exponential(multiplier=0.25, max=4) + tenacity.wait_random(0, 0.25)


def _transient_wait(state: tenacity.RetryCallState) -> float:
    error = _error_of(state)
    if isinstance(error, messages.Error) and error.code == "badNonce":
        return 0
    if isinstance(error, _RetryLater) and error.seconds is not None:
        return error.seconds
    return _exponential(state)


def problem_code(error: messages.Error) -> str:
    """The problem type's last part ("dns", "invalidProfile"), also for types newer than the `acme`
    library (whose `code` is None for those)."""
    return str(error.typ).rsplit(":", 1)[-1]


def retry_after_seconds(response: requests.Response) -> float | None:
    """The wait a Retry-After header asks for, in seconds; None without one, or with one that is
    neither a number of seconds nor an HTTP-date (RFC 9110 section 10.2.3).

    An HTTP-date is measured from the answer's own Date when it has one, so neither a host
    clock that is off nor a local timezone changes the wait.
    """
    value = response.headers.get("Retry-After", "").strip()
    if value.isascii() and value.isdigit():
        return float(value)
    when = _http_date(value)
    if when is None:
        return None
    sent = _http_date(response.headers.get("Date", "")) or datetime.datetime.now(datetime.timezone.utc)
    return max((when - sent).total_seconds(), 0.0)


def clock_ahead(response: requests.Response) -> datetime.timedelta | None:
    """How far the clock of the server that sent `response` is ahead of this host's, by its Date header."""
    sent = _http_date(response.headers.get("Date", ""))
    return None if sent is None else sent - datetime.datetime.now(datetime.timezone.utc)


def _http_date(text: str) -> datetime.datetime | None:
    """An HTTP-date (RFC 9110 section 5.6.7, always GMT) as an aware time; None if it is not one."""
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.timezone.utc)


def describe(error: BaseException) -> str:
    """A network failure in words an operator can act on."""
    if isinstance(error, requests.exceptions.SSLError):
        return f"TLS failed ({error}); if the CA's certificate is not trusted, pass --ca-bundle"
    if isinstance(error, requests.ConnectionError):
        return "connection failed (is the CA reachable?)"
    if isinstance(error, requests.Timeout):
        return "the request timed out"
    if isinstance(error, errors.ClientError) and error.args and isinstance(error.args[0], requests.Response):
        response = error.args[0]
        return f"HTTP {response.status_code} from {response.url}"
    return str(error) or type(error).__name__


def untrusted(error: BaseException) -> bool:
    """Whether `error` is a server certificate that does not verify (not a network failure)."""
    return isinstance(error, requests.exceptions.SSLError) and "certificate verify failed" in str(error)
