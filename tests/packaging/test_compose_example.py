"""examples/compose: the containers are wired to each other as the image and haproxy.cfg expect,
and HAProxy accepts the config. No container engine runs here, so nothing is started."""

import os
import re
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from certrenew.config import DEFAULT_CONFIG, build_settings, load_config, split_host_port
from certrenew.pki.placeholder import write_placeholder
from tests.harness.container import as_image_user, read_image

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "compose"
SERVER_OPTIONS = "check resolvers docker init-addr last,libc,none"
TESTED_LINES = ("2.6", "3.4")
"""The HAProxy lines scripts/test runs the suite against."""


def haproxy_cfg() -> str:
    return (EXAMPLE / "haproxy.cfg").read_text()


def mounts(service: dict) -> dict[str, str]:
    """A service's volumes as {path in the container: volume name or host path}."""
    return {spec.split(":")[1]: spec.split(":")[0] for spec in service["volumes"]}


def compose_services() -> dict:
    return yaml.safe_load((EXAMPLE / "compose.yaml").read_text())["services"]


def test_the_containers_meet_where_the_configs_say():
    services = compose_services()
    certrenew, haproxy, bootstrap = services["certrenew"], services["haproxy"], services["ssl-bootstrap"]
    image = read_image()
    cfg = haproxy_cfg()
    admin_socket = re.search(r"^\s*stats socket (\S+)", cfg, re.M)[1]
    crt_dir = re.search(r"\bcrt (\S+)", cfg)[1].rstrip("/")
    host, port = re.search(r"^\s*server certrenew (\S+) ", cfg, re.M)[1].split(":")

    assert haproxy["user"] == f"{image.uid}:{image.gid}"  # reads the 0600 bundles, owns the socket
    socket_dir = str(Path(admin_socket).parent)
    assert mounts(certrenew)[socket_dir] == mounts(haproxy)[socket_dir] == mounts(bootstrap)[socket_dir]
    ssl_dir = image.env["CERTRENEW_SSL_DIR"]
    assert mounts(haproxy)[crt_dir] == mounts(certrenew)[ssl_dir] == mounts(bootstrap)[ssl_dir]
    assert set(image.volumes) <= set(mounts(certrenew))  # no anonymous volume: the state outlives the container
    assert mounts(certrenew)[str(DEFAULT_CONFIG)] == "./certrenew.toml"
    assert bootstrap["command"] == ["bootstrap-ssl-dir"]

    config = load_config(EXAMPLE / "certrenew.toml")
    settings = build_settings({}, config, environ={**image.env, **certrenew["environment"]})
    assert config.certificates and settings.acme.agree_tos and settings.acme.email
    assert settings.haproxy.haproxy_socket == (admin_socket,)
    assert host in services and int(port) == split_host_port(settings.responder.listen)[1]


def test_the_haproxy_image_is_of_a_tested_line():
    name, _, tag = compose_services()["haproxy"]["image"].partition(":")
    assert name == "haproxy" and tag in TESTED_LINES


@pytest.fixture
def local_cfg(tmp_path) -> Path:
    """The example's haproxy.cfg with its socket dir and crt dir moved to temporary directories."""
    write_placeholder(tmp_path / "ssl")
    (tmp_path / "run").mkdir()
    text = haproxy_cfg().replace("/var/run/haproxy/", f"{tmp_path}/run/").replace("/etc/haproxy/ssl/",
                                                                                   f"{tmp_path}/ssl/")
    assert text.count(str(tmp_path)) == 2
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    return path


def haproxy_check(path: Path) -> subprocess.CompletedProcess:
    """`haproxy -c`, verbose: 3.x says "Configuration file is valid" only with -V (2.6 always did)."""
    return subprocess.run(["haproxy", "-c", "-V", "-f", str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.haproxy
def test_haproxy_accepts_the_example_config(local_cfg):
    result = haproxy_check(local_cfg)
    said = result.stdout + result.stderr
    assert result.returncode == 0 and "Configuration file is valid" in result.stdout, said
    assert "deprecated" not in said  # e.g. `master-worker` in global, deprecated since 3.3 (use -W)


@pytest.mark.haproxy
def test_the_check_passes_only_thanks_to_init_addr(local_cfg):
    """Outside compose the name `certrenew` does not resolve; without init-addr and resolvers
    HAProxy refuses to start on that, so the example would fail `haproxy -c` everywhere but there."""
    try:
        socket.getaddrinfo("certrenew", 49494)
        pytest.skip("the name certrenew resolves on this machine")
    except socket.gaierror:
        pass
    text = local_cfg.read_text()
    assert SERVER_OPTIONS in text
    local_cfg.write_text(text.replace(SERVER_OPTIONS, "check"))
    result = haproxy_check(local_cfg)
    assert result.returncode != 0 and "could not resolve address 'certrenew'" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run a command as the image's user")
def test_ssl_bootstrap_runs_as_the_image_runs_it(site_for_anyone):
    """The compose init step: the image's entrypoint with the service's command, its environment,
    its unprivileged user, and the volume as a directory owned by that user."""
    image = read_image()
    with tempfile.TemporaryDirectory() as top:  # not pytest's tmp_path: its parents are closed to other users
        Path(top).chmod(0o755)
        volumes = {volume: Path(top, Path(volume).name) for volume in image.volumes}
        for directory in volumes.values():
            directory.mkdir()
            os.chown(directory, image.uid, image.gid)
        argv, env = as_image_user(image, image.entrypoint + compose_services()["ssl-bootstrap"]["command"], volumes,
                                  site_for_anyone)
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        (placeholder,) = volumes["/etc/haproxy/ssl"].iterdir()
        assert (placeholder.stat().st_uid, placeholder.stat().st_mode & 0o777) == (image.uid, 0o600)
        assert f"placeholder: {placeholder}" in result.stdout
