"""A byte relay that counts what passes: a TCP port or a unix socket in front of a lab server.

Each connection is passed through both ways unchanged, and the first line the client
sends (a request line, a Runtime API command) is recorded, in order, in `seen`: a test
can then count the probes that reached HAProxy, or the commands certrenew gave it, and
tell what came before what. A list given as `seen` is shared, so the requests a
`FaultProxy` saw can go in the same sequence.
"""

from __future__ import annotations

import selectors
import socket
import socketserver
import threading
from pathlib import Path

LOOPBACK = "127.0.0.1"


class Relay:
    """Relays `listen` (a unix socket path, or None for a free loopback port) to `upstream`
    (a unix socket path, or (host, port)), recording ("<tag>", first line) per connection."""

    def __init__(self, tag: str, upstream: str | tuple[str, int], listen: Path | None = None,
                 seen: list[tuple[str, str]] | None = None) -> None:
        self.tag, self.upstream = tag, upstream
        self.seen = seen if seen is not None else []
        relay = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                relay._relay(self.request)

        if listen is None:
            self._server: socketserver.BaseServer = socketserver.ThreadingTCPServer((LOOPBACK, 0), Handler)
        else:
            self._server = socketserver.ThreadingUnixStreamServer(str(listen), Handler)
        self._server.daemon_threads = True
        self.address = self._server.server_address
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()

    def lines(self) -> list[str]:
        """The first line of every connection relayed, in order."""
        return [line for tag, line in self.seen if tag == self.tag]

    def _relay(self, client: socket.socket) -> None:
        if isinstance(self.upstream, str):
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.upstream)
        else:
            server = socket.create_connection(self.upstream)
        first = b""
        with server, selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, server)
            selector.register(server, selectors.EVENT_READ, client)
            while True:
                for key, _ in selector.select():
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:  # either side closed: so does the relay
                        return
                    if key.fileobj is client and b"\n" not in first:
                        first += data
                        if b"\n" in first:
                            self.seen.append((self.tag, first.split(b"\n", 1)[0].decode().strip()))
                    key.data.sendall(data)
