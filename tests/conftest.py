"""Fixtures shared by unit and integration tests."""

import resource
import shutil
import tempfile
from pathlib import Path

import pytest
from container import install_for_anyone


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
