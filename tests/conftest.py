"""Fixtures shared by unit and integration tests."""

import os
import resource
import shutil
import subprocess

import pytest


def pytest_report_header() -> str:
    """Which HAProxy this run tests (scripts/test runs the suite once per HAProxy line, first on PATH)."""
    path = shutil.which("haproxy")
    if path is None:
        return "haproxy: none on PATH"
    said = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=30).stdout.splitlines()
    return f"haproxy: {' '.join(said[0].split()[:3]) if said else 'no version'} ({os.path.realpath(path)})"


@pytest.fixture
def open_files():
    """Let the test process hold as many sockets as its hard limit allows (restored after); yields that limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
