"""`scripts/demo` end to end: what it prints can be copied and run as it was."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.haproxy
def test_the_demo_prints_each_command_whole_with_its_environment():
    result = subprocess.run([sys.executable, "-m", "scripts.demo"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout.replace(" \\\n", " ")  # a shell reads a backslash-newline as a space
    commands = [shlex.split(line[2:]) for line in text.splitlines() if line.startswith("$ ")]
    assert len(commands) == 2, result.stdout
    for words in commands:
        settings = dict(word.split("=", 1) for word in words if "=" in word and word.startswith("CERTRENEW_"))
        program = words[len(settings)]
        assert program == ".venv/bin/certrenew" and "demo.example" in words, words
        # Copied, it targets the lab that ran it, not Let's Encrypt's production CA and /var/lib/certrenew.
        assert settings["CERTRENEW_DIRECTORY"].startswith("https://127.0.0.1:"), settings
        assert "certrenew-demo-" in settings["CERTRENEW_STATE_DIR"]
        assert {"CERTRENEW_CA_BUNDLE", "CERTRENEW_SSL_DIR", "CERTRENEW_LISTEN"} <= settings.keys()
