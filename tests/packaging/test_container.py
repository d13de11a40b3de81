"""The Dockerfile: lint-clean, and the command, environment, user and health check it gives
the container are ones certrenew accepts. No container engine runs here: the image is
linted and read (tests/harness/container.py), not built."""

import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from certrenew.config import build_settings, split_host_port
from tests.harness.container import DOCKERFILE, read_image
from tests.harness.invocation import parse_invocation

HADOLINT = Path(sys.executable).with_name("hadolint")
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True,
                          timeout=60)


def test_hadolint_finds_nothing():
    result = hadolint(DOCKERFILE)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install certrenew\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout, result.stdout


def test_read_image_matches_the_dockerfile():
    image = read_image(parent_env={"PATH": BASE_PATH})
    assert (image.entrypoint, image.cmd) == (["certrenew"], ["daemon"])
    assert (image.uid, image.gid) == (10001, 10001)
    assert image.volumes == ["/var/lib/certrenew", "/etc/haproxy/ssl"]
    assert image.env["PATH"] == f"/opt/certrenew/bin:{BASE_PATH}"
    assert image.env["CERTRENEW_LISTEN"] == "0.0.0.0:49494"
    assert image.env["CERTRENEW_METRICS_LISTEN"] == "0.0.0.0:9797"
    assert image.healthcheck[:2] == ["python", "-c"] and "/healthz" in image.healthcheck[2]


def test_image_environment_puts_volumes_where_the_test_says(tmp_path):
    image = read_image(parent_env={"PATH": BASE_PATH})
    state, ssl = tmp_path / "state", tmp_path / "ssl"
    env = image.environment({"/var/lib/certrenew": state, "/etc/haproxy/ssl": ssl})
    assert (env["CERTRENEW_STATE_DIR"], env["CERTRENEW_SSL_DIR"]) == (str(state), str(ssl))
    with pytest.raises(ValueError):
        image.environment({"/var/lib/certrenew": state})


def test_image_environment_is_valid_certrenew_settings():
    """The volumes are where certrenew keeps its state and writes bundles; the responder is
    reachable from the other containers."""
    image = read_image(parent_env={"PATH": BASE_PATH})
    settings = build_settings({}, None, environ=image.env)
    assert [str(settings.state_dir), str(settings.haproxy.ssl_dir)] == image.volumes
    assert split_host_port(settings.responder.listen) == ("0.0.0.0", 49494)


def test_image_command_is_a_certrenew_command():
    image = read_image()
    assert parse_invocation(image.argv).metrics_listen is None  # the address comes from the environment


def test_the_image_metrics_address_is_moved_by_the_environment_and_the_command_line():
    """The documented precedence: the command line over CERTRENEW_METRICS_LISTEN, compose's `environment:`
    over the image's ENV (the image's address is no command-line flag, which would override both)."""
    image = read_image(parent_env={"PATH": BASE_PATH})

    def metrics_listen(environment, argv=()):
        return build_settings(vars(parse_invocation([*image.argv, *argv])), None,
                              environ={**image.env, **environment}).daemon.metrics_listen

    assert metrics_listen({}) == "0.0.0.0:9797"
    assert metrics_listen({"CERTRENEW_METRICS_LISTEN": "127.0.0.1:9100"}) == "127.0.0.1:9100"
    assert metrics_listen({"CERTRENEW_METRICS_LISTEN": "127.0.0.1:9100"},
                          ["--metrics-listen", "127.0.0.1:9200"]) == "127.0.0.1:9200"


def test_the_build_context_holds_what_the_dockerfile_copies():
    """.dockerignore excludes everything but an allow-list; a COPY of anything else fails the build."""
    ignore = (DOCKERFILE.parent / ".dockerignore").read_text().split()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore
    sources = set()
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources.update(path.rstrip("/") for path in line.split()[1:-1])
    assert sources and sources <= allowed and all((DOCKERFILE.parent / path).exists() for path in sources)


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_healthcheck_fails_unless_healthz_says_200(health_server, host):
    """The HEALTHCHECK as written, with the interpreter this test has, asking the address the daemon
    listens on (CERTRENEW_METRICS_LISTEN as the container has it): the loopback for a wildcard."""
    image = read_image()
    python, flag, code = image.healthcheck
    here = [sys.executable, flag, code]
    env = {**image.env, "CERTRENEW_METRICS_LISTEN": f"{host}:{health_server.server_port}"}

    def exit_code(status):
        _Health.status = status
        return subprocess.run(here, env=env, capture_output=True, timeout=30).returncode

    assert exit_code(200) == 0
    assert exit_code(503) != 0
    health_server.shutdown()
    health_server.server_close()
    assert subprocess.run(here, env=env, capture_output=True, timeout=30).returncode != 0  # nothing listening
