"""Fixtures shared by unit and integration tests."""

import resource

import pytest


@pytest.fixture
def open_files():
    """Let the test process hold as many sockets as its hard limit allows (restored after); yields that limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
