"""A fake HAProxy Runtime API: a unix socket that answers like HAProxy 2.6 does, for unit tests."""

import socket
import threading
from collections.abc import Callable
from pathlib import Path


class FakeHAProxy:
    """A unix socket answering each command (one per connection) from `answers` (a string, or a function
    for an answer that changes), recording what it got."""

    def __init__(self, path: Path, answers: dict[str, str | Callable[[], str]]):
        self.answers = answers
        self.requests: list[bytes] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                data = b""
                # A command ends at its newline; one with a payload at the first blank line.
                while not (data.endswith(b"\n") and (b"<<\n" not in data or data.endswith(b"\n\n"))):
                    data += conn.recv(65536)
                self.requests.append(data)
                verb = " ".join(data.decode().split()[:3])
                answer = self.answers.get(verb, "Unknown command, but maybe...\n")
                conn.sendall((answer() if callable(answer) else answer).encode() + b"\n")

    def commands(self) -> list[str]:
        return [" ".join(request.decode().split("\n")[0].split()[:3]) for request in self.requests]

    def close(self):
        """Stop answering, the thread first: closed while it waits in accept, the socket's descriptor could be
        reused by the next test's fake and that test's commands answered from these answers."""
        self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept, which a close alone does not
        self.thread.join(5)
        self.server.close()
