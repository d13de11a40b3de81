"""Fixtures shared by unit and integration tests."""

import os
import resource
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
import trustme

from tests.harness.container import install_for_anyone


def pytest_report_header() -> str:
    """Which HAProxy this run tests (scripts/test runs the suite once per HAProxy line, first on PATH)."""
    path = shutil.which("haproxy")
    if path is None:
        return "haproxy: none on PATH"
    said = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=30).stdout.splitlines()
    return f"haproxy: {' '.join(said[0].split()[:3]) if said else 'no version'} ({os.path.realpath(path)})"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `haproxy` every test that runs HAProxy through the lab (the others are marked by hand):
    scripts/test runs only those again on each further HAProxy line."""
    for item in items:
        if "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.haproxy)


@pytest.fixture(scope="session")
def no_haproxy(tmp_path_factory) -> str:
    """A directory whose `haproxy` fails, naming the marker a test that runs HAProxy must carry."""
    directory = tmp_path_factory.mktemp("no-haproxy")
    program = directory / "haproxy"
    program.write_text("#!/bin/sh\necho 'this test runs haproxy: mark it @pytest.mark.haproxy, or the runs on "
                       "other HAProxy lines (scripts/test) skip it' >&2\nexit 97\n")
    program.chmod(0o755)
    return str(directory)


@pytest.fixture(autouse=True)
def haproxy_only_if_marked(request, monkeypatch, no_haproxy):
    """A test not marked `haproxy` finds no HAProxy on PATH, so the marker cannot be forgotten: the
    runs on further HAProxy lines select by it."""
    if request.node.get_closest_marker("haproxy") is None:
        monkeypatch.setenv("PATH", f"{no_haproxy}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.fixture
def open_files():
    """Let the test process hold as many sockets as its hard limit allows (restored after); yields that limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="session")
def site_for_anyone():
    """certrenew installed where the image's user (10001) can import it, wherever this checkout lies:
    a directory under /tmp opened to every user (pytest's own temp dirs are closed to them)."""
    top = Path(tempfile.mkdtemp(prefix="certrenew-site-"))
    try:
        top.chmod(0o755)
        yield install_for_anyone(top)
    finally:
        shutil.rmtree(top)


@pytest.fixture
def serving():
    """serving(cert) -> "127.0.0.1:PORT" where a TLS server presents `cert`; handshakes are counted."""
    servers = []

    def start(cert: trustme.LeafCert) -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        listener = socket.create_server(("127.0.0.1", 0))
        server = {"socket": listener, "handshakes": 0, "sni": []}
        context.sni_callback = lambda tls, name, context: server["sni"].append(name)

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
