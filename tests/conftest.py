"""Fixtures shared by unit and integration tests."""

import resource
import socket
import ssl
import threading

import pytest
import trustme


@pytest.fixture
def open_files():
    """Let the test process hold as many sockets as its hard limit allows (restored after); yields that limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def serving():
    """serving(cert) -> "127.0.0.1:PORT" where a TLS server presents `cert`; handshakes are counted."""
    servers = []

    def start(cert: trustme.LeafCert) -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        listener = socket.create_server(("127.0.0.1", 0))
        server = {"socket": listener, "handshakes": 0}

        def serve() -> None:
            while True:
                try:
                    connection, _ = listener.accept()
                except OSError:
                    return
                try:
                    with context.wrap_socket(connection, server_side=True):
                        server["handshakes"] += 1
                except OSError:
                    connection.close()

        threading.Thread(target=serve, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{listener.getsockname()[1]}"

    start.servers = servers
    yield start
    for server in servers:
        server["socket"].close()
