"""What a release needs: one version, a licence, a changelog."""

from importlib import metadata
from pathlib import Path

import certrenew

REPO = Path(__file__).resolve().parents[2]


def test_the_version_has_one_source():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'version = {attr = "certrenew.version.__version__"}' in pyproject
    assert metadata.version("certrenew") == certrenew.__version__


def test_licence_and_changelog_are_shipped():
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n\nCopyright (c) 2026 the certrenew authors\n")
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and certrenew.__version__ in changelog
