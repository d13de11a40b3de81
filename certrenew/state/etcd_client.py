"""A small etcd v3 client over etcd's JSON gateway (`POST /v3/...`, keys and values in base64).

Our own, on `requests`, because the libraries measured fall short (issue 22): `etcd3gw` takes one
endpoint, has no login and lets `REQUESTS_CA_BUNDLE` override its CA; the gRPC `etcd3` refuses
every call for 300 s after one failure and fails for good once its auth token expires. This one
rotates over every endpoint, logs in again when the token expires, bounds every wait, and leaves
it to the caller to decide what a write that got no answer did (see `call`'s `recheck`).
"""

import base64
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from certrenew.errors import ConfigurationError
from certrenew.state.backend import Outage, StoreUnreachable
from certrenew.system.runcontext import RunContext

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 5.0
PATIENCE = 15.0
"""How long a call keeps trying the endpoints in turn: longer than a leader election."""
RETRY_PAUSE = 0.2
POOL = 32
"""Connections kept per endpoint: a run works on many certificates at once, each lease has a thread."""
GRACE = 5.0
"""Seconds every request must have failed before the cluster counts as unreachable (`outage`): longer
than a leader election (about a second), so an election is not reported as an outage."""
UNAUTHENTICATED = 16
PERMISSION_DENIED = 7
INVALID_ARGUMENT = 3
NOT_FOUND = 5
FAILED_PRECONDITION = 9
AUTHENTICATE = "/v3/auth/authenticate"


@dataclass(frozen=True)
class Tls:
    """TLS to etcd: the CA that signed its certificates, and this node's client certificate."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


class _Failed(Exception):
    """One endpoint did not answer (or answered that it cannot now): try the next."""


def _reason(error: Exception) -> str:
    """The innermost cause of a failed request, without urllib3's wrappers (`Connection refused`)."""
    reason = getattr(error.args[0], "reason", error) if error.args else error
    text = str(reason).strip("'\") ")
    return text.splitlines()[0][:200] if text else type(error).__name__


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


class EtcdClient:
    """Calls to an etcd cluster at `endpoints` (HOST:PORT each), safe to share between threads."""

    def __init__(self, endpoints: list[str], *, tls: Tls | None = None, username: str | None = None,
                 password: str | None = None, patience: float = PATIENCE, context: RunContext | None = None) -> None:
        scheme = "https" if tls else "http"
        self.context = context or RunContext()
        """The run whose cancellation ends every wait (a retry's pause, a lock's wait)."""
        self.endpoints = endpoints
        self._urls = [f"{scheme}://{endpoint}" for endpoint in endpoints]
        self._current = 0
        self._patience = patience
        self._credentials = (username, password) if username else None
        self._token: str | None = None
        self._mutex = threading.Lock()
        self._failing: Outage | None = None
        """The failures since the last answer: the cluster is unreachable once they last GRACE."""
        self._session = requests.Session()
        # Our CA, not whatever REQUESTS_CA_BUNDLE or a proxy variable in the environment says.
        self._session.trust_env = False
        adapter = HTTPAdapter(pool_maxsize=POOL)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        if tls:
            self._session.verify = str(tls.ca) if tls.ca else True
            if tls.cert:
                self._session.cert = (str(tls.cert), str(tls.key)) if tls.key else str(tls.cert)

    def call(self, path: str, body: dict[str, Any], *, patience: float | None = None,
             recheck: Callable[[], dict[str, Any] | None] | None = None) -> dict[str, Any]:
        """etcd's answer to `body` at `path`, from the first endpoint that gives one.

        A request that got no answer may still have been applied (a leader killed mid-write).
        Reads and idempotent writes are simply sent again; for any other write, `recheck` reads
        what is there and returns the answer to use if the write did apply, else None to resend.
        """
        end = time.monotonic() + (self._patience if patience is None else patience)
        ambiguous, last = False, ""
        while True:
            for _ in self._urls:
                if ambiguous and recheck is not None:
                    settled = recheck()
                    if settled is not None:
                        return settled
                with self._mutex:
                    index = self._current
                try:
                    answer = self._send(index, path, body)
                except _Failed as failure:
                    ambiguous, last = True, f"{self.endpoints[index]}: {failure}"
                    log.debug("etcd %s failed at %s", path, last)
                    self._failed(index, last)
                else:
                    self._answered()
                    return answer
            if time.monotonic() >= end:
                failing = self._failing
                raise StoreUnreachable(f"etcd at {','.join(self.endpoints)} did not answer ({last}); check that "
                                       "etcd runs there and --store names its client endpoints",
                                       failing.since if failing else None)
            self.context.sleep(RETRY_PAUSE)

    @property
    def outage(self) -> Outage | None:
        """Since when every request has failed, once that has lasted GRACE; None while etcd answers."""
        failing = self._failing
        return failing if failing is not None and time.time() - failing.since >= GRACE else None

    def _failed(self, index: int, reason: str) -> None:
        """Endpoint `index` did not answer: the next request tries the next one, and the failure counts."""
        now = time.time()
        with self._mutex:
            if self._current == index:
                self._current = (index + 1) % len(self._urls)
            self._failing = Outage(self._failing.since if self._failing else now, now, reason)

    def _answered(self) -> None:
        if self._failing is not None:  # (read without the lock: the common case costs nothing)
            with self._mutex:
                failing, self._failing = self._failing, None
            if failing is not None and time.time() - failing.since >= GRACE:
                log.info("etcd at %s answers again, after %.0f s", ",".join(self.endpoints), time.time() - failing.since)

    def _send(self, index: int, path: str, body: dict[str, Any], *, login: bool = True,
              fresh: bool = False) -> dict[str, Any]:
        if login and self._credentials and self._token is None:
            self._login(index)
            fresh = True
        headers = {"Authorization": self._token} if self._token and login else {}
        try:
            response = self._session.post(self._urls[index] + path, json=body, headers=headers,
                                          timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
            answer = response.json() if response.content else {}
        except requests.exceptions.SSLError as error:
            if "certificate" not in str(error).lower():  # a handshake cut short: try the next endpoint
                raise _Failed(_reason(error)) from error
            raise ConfigurationError(f"TLS with etcd at {self.endpoints[index]} failed: {_reason(error)} (check the CA "
                          "bundle and the client certificate and key)") from error
        except (requests.RequestException, ValueError) as error:
            raise _Failed(_reason(error)) from error
        if "error" not in answer and response.ok:
            return answer.get("result", answer)  # a stream (keepalive) wraps its one answer
        code, message = answer.get("code"), answer.get("message") or answer.get("error") or response.reason
        if code == UNAUTHENTICATED and login and self._credentials and not fresh:
            self._token = None  # expired: log in again, once
            return self._send(index, path, body)
        # (etcd with auth on answers a client without a token "user name is empty"; a login during
        # an election is refused as any other request then, and tried again.)
        if code in (UNAUTHENTICATED, PERMISSION_DENIED) or "user name is empty" in str(message) or \
                (path == AUTHENTICATE and code in (INVALID_ARGUMENT, FAILED_PRECONDITION)):
            who = f"user {self._credentials[0]!r}" if self._credentials else "a client without credentials"
            raise ConfigurationError(f"etcd at {self.endpoints[index]} refused {who}: {message} (check the etcd user, "
                          "its password and its role's permission on the prefix)")
        if code in (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION):
            raise ConfigurationError(f"etcd at {self.endpoints[index]} refused {path}: {message}")
        raise _Failed(message)

    def watch(self, key: bytes, after: int, timeout: float, *, range_end: bytes | None = None,
              filters: tuple[str, ...] = ()) -> list[dict[str, Any]] | None:
        """The first events on `key` (or on every key up to `range_end`) after revision `after` that come within
        `timeout` seconds, oldest first; None if etcd compacted its history past `after` (read afresh).

        [] too when the watch fails (an endpoint gone, a token expired): the caller looks again with an
        ordinary call, which finds another endpoint or logs in anew, and watches on from the same revision.
        """
        with self._mutex:
            index = self._current
        request: dict[str, Any] = {"key": b64(key), "start_revision": str(after + 1), "filters": list(filters)}
        if range_end is not None:
            request["range_end"] = b64(range_end)
        headers = {"Authorization": self._token} if self._token else {}
        started, answered = time.monotonic(), False
        try:
            with self._session.post(self._urls[index] + "/v3/watch", json={"create_request": request},
                                    headers=headers, stream=True, timeout=(CONNECT_TIMEOUT, timeout)) as response:
                answered = True
                self._answered()
                for line in response.iter_lines():
                    result = json.loads(line).get("result", {})
                    if result.get("compact_revision") and result.get("canceled"):
                        return None
                    if result.get("events"):
                        return result["events"]
        except (requests.RequestException, ValueError) as error:
            if not answered:  # (a stream's read timeout, the usual end, comes as a ConnectionError too)
                self._failed(index, f"{self.endpoints[index]}: {_reason(error)}")
        if time.monotonic() - started < timeout:  # a watch refused or cut short: not straight back
            self.context.sleep(min(RETRY_PAUSE, timeout))
        return []

    def deleted(self, key: bytes, after: int, timeout: float) -> bool:
        """Whether `key` is deleted after revision `after`, watching for up to `timeout` seconds (see `watch`)."""
        return bool(self.watch(key, after, timeout, filters=("NOPUT",)))

    def _login(self, index: int) -> None:
        assert self._credentials
        username, password = self._credentials
        answer = self._send(index, AUTHENTICATE, {"name": username, "password": password}, login=False)
        self._token = answer.get("token")

    def close(self) -> None:
        self._session.close()
