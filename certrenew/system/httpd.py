"""A small HTTP server that no client can exhaust: the HTTP-01 responder's, and the daemon's /metrics and /healthz.

It answers GET (and HEAD), one request per connection: the request
head is read within REQUEST_TIMEOUT and at most MAX_HEAD bytes, answered, and the
connection closed, so nothing lingers after the server stops. It is asyncio in one
thread: thousands of idle or slow connections cost memory, not threads, and a request
that arrives whole is answered while they wait out their time. At most MAX_CONNECTIONS
are open; taking one beyond closes the oldest, so the bound holds however fast a burst
comes, and a fresh connection (the CA's, a health check's) is never the one left out.

The stdlib's `http.server` it replaces for /metrics read up to 100 headers of 64 KiB
each per request, in a thread per connection: 16 such requests took the daemon to
600 MB, and 16 idle clients left no thread for /healthz.
"""

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0
"""Seconds a client has to send its whole request head, and then to take the answer."""
MAX_HEAD = 8192
"""Bytes of request line and headers accepted (so a few hundred headers at most); a CA's
validation, a scraper or a health check sends a few hundred."""
MAX_CONNECTIONS = 512
"""Open connections at once: with MAX_HEAD, what bounds the memory a flood can take."""
ACCEPT_RETRY = 0.1
"""Seconds to wait before accepting again when the system refuses (out of file descriptors)."""


@dataclass(frozen=True)
class Request:
    """A request head as the handler sees it: the method is GET or HEAD, header names are lower case."""

    method: str
    target: str
    headers: dict[str, str]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass(frozen=True)
class Response:
    status: HTTPStatus
    body: bytes
    content_type: str = "text/plain"


Handler = Callable[[Request], Response]


def parse(head: bytes) -> Request | Response:
    """The request in `head` (request line and headers, up to the blank line), or the error answer to it."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return Response(HTTPStatus.BAD_REQUEST, b"bad request\n")
    method, target, _ = parts
    if method not in ("GET", "HEAD"):
        return Response(HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return Request(method, target, headers)


def encode(response: Response, send_body: bool = True) -> bytes:
    """`response` as HTTP/1.1 that closes the connection; the Allow header goes with a 405.
    The Server header names certrenew and no version of anything."""
    headers = [f"HTTP/1.1 {response.status.value} {response.status.phrase}", "Server: certrenew",
               f"Content-Type: {response.content_type}", f"Content-Length: {len(response.body)}", "Connection: close"]
    if response.status is HTTPStatus.METHOD_NOT_ALLOWED:
        headers.append("Allow: GET, HEAD")
    return ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + (response.body if send_body else b"")


class Server:
    """Serves `handler`'s answers on a bound, listening socket, in a thread of its own.

    Use it as a context manager: serving starts on entry; on exit every connection is
    closed and the socket with them. The handler runs in a worker thread, so one that
    reads files (the status rows behind /metrics) never holds up the other connections.
    """

    def __init__(self, listener: socket.socket, handler: Handler, name: str) -> None:
        self.listener = listener
        self.handler = handler
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._connections: dict[asyncio.Task, asyncio.StreamWriter] = {}
        """Open connections, oldest first."""

    def __enter__(self) -> "Server":
        started = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(started),), daemon=True, name=self.name)
        self._thread.start()
        started.wait()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._thread is not None and self._loop is not None and self._stop is not None, "entered"
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()

    async def _serve(self, started: threading.Event) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        started.set()
        with self.listener:
            self.listener.setblocking(False)
            accepting = asyncio.create_task(self._accept())
            await self._stop.wait()
            for task in [accepting, *self._connections]:
                task.cancel()
            await asyncio.gather(accepting, *self._connections, return_exceptions=True)

    async def _accept(self) -> None:
        """Take connections one by one, making room first when at the cap (asyncio's own server
        takes a hundred at a time before any of them is looked at)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(self.listener)
            except OSError as error:  # e.g. EMFILE: wait for file descriptors to be freed
                log.debug("%s: cannot accept: %s", self.name, error)
                await asyncio.sleep(ACCEPT_RETRY)
                continue
            if len(self._connections) >= MAX_CONNECTIONS:
                task, oldest = next(iter(self._connections.items()))
                del self._connections[task]
                oldest.transport.abort()
                task.cancel()
                await asyncio.sleep(0)  # the aborted socket closes before another is opened
            try:
                reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_HEAD)
            except OSError:  # gone already
                sock.close()
                continue
            self._connections[asyncio.create_task(self._connection(reader, writer))] = writer

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a connection handler runs as a task
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            except asyncio.LimitOverrunError:
                request: Request | Response = Response(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, b"too large\n")
            else:
                request = parse(head)
            response = request if isinstance(request, Response) else await asyncio.to_thread(self.handler, request)
            log.debug("%s: %s %s", self.name, writer.get_extra_info("peername"), response.status.value)
            writer.write(encode(response, send_body=not isinstance(request, Request) or request.method == "GET"))
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
            writer.close()  # after the answer is written, so it is sent, not dropped
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # a slow, silent or vanished client, or one evicted or shut down: just drop it
        finally:
            self._connections.pop(task, None)
            if not writer.is_closing():
                writer.transport.abort()
