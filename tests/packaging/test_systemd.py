"""The shipped systemd units: valid for systemd, sandboxed to an exposure of at most 2.0,
and each ExecStart a command line certrenew itself accepts.

systemd is not PID 1 where the tests run, so the units are checked with systemd-analyze
(which needs no running systemd; scripts/setup installs it), not started.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from certrenew.config import DEFAULT_CONFIG
from certrenew.errors import UsageError
from certrenew.system.listen import DEFAULT_LISTEN
from tests.harness.invocation import parse_invocation

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
SERVICES = sorted(SYSTEMD.glob("*.service"))
INSTALLED_BINARY = "/usr/local/bin/certrenew"
MAX_EXPOSURE = 2.0

def unit_settings(path: Path, section: str) -> list[tuple[str, str]]:
    """The KEY=VALUE lines of one section, in order; a key may repeat, as systemd allows."""
    settings, current = [], None
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section and "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            settings.append((key.strip(), value.strip()))
    return settings


def exec_start(path: Path) -> list[str]:
    (command,) = [value for key, value in unit_settings(path, "Service") if key == "ExecStart"]
    return shlex.split(command)


def test_units_are_shipped():
    assert {path.name for path in SYSTEMD.iterdir()} >= {
        "certrenew.service", "certrenew.timer", "certrenew-daemon.service"}


def test_systemd_analyze_verify_is_silent(tmp_path):
    """`verify` warns (exit 0) on an unknown key or a bad value, so any output fails the test.

    It also insists that ExecStart's program exists: the copies point it at the certrenew
    installed for the tests, and nothing else in them changes.
    """
    installed = Path(sys.executable).with_name("certrenew")
    assert installed.exists()
    for path in SYSTEMD.iterdir():
        text = path.read_text()
        if path.suffix == ".service":
            assert exec_start(path)[0] == INSTALLED_BINARY
        (tmp_path / path.name).write_text(text.replace(INSTALLED_BINARY, str(installed)))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *sorted(map(str, tmp_path.iterdir()))],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("unit", SERVICES, ids=lambda path: path.name)
def test_exposure_is_at_most_2(unit):
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_both_services_share_one_sandbox():
    """Two self-contained unit files (one to copy), kept identical from User= on."""
    sandboxes = []
    for unit in SERVICES:
        settings = unit_settings(unit, "Service")
        start = [key for key, _ in settings].index("User")
        sandboxes.append(settings[start:])
    assert len(SERVICES) == 2 and sandboxes[0] == sandboxes[1]
    assert ("ReadWritePaths", "/etc/haproxy/ssl") in sandboxes[0]
    assert ("ReadWritePaths", f"-{os.path.dirname(DEFAULT_LISTEN)}") in sandboxes[0]  # the responder's socket
    assert ("StateDirectory", "certrenew") in sandboxes[0]


@pytest.mark.parametrize("unit", SERVICES, ids=lambda path: path.name)
def test_exec_start_is_a_certrenew_command(unit):
    args = parse_invocation(exec_start(unit))
    assert args.config == DEFAULT_CONFIG


def test_exec_start_check_catches_a_bad_option():
    with pytest.raises(UsageError):
        parse_invocation([INSTALLED_BINARY, "run", "--config", str(DEFAULT_CONFIG), "--no-such-option"])


def test_exec_start_check_catches_a_mistyped_command():
    with pytest.raises(UsageError, match="no 'deamon' command"):
        parse_invocation([INSTALLED_BINARY, "deamon", "--config", str(DEFAULT_CONFIG)])


def test_timer_fires_twice_a_day_spread_and_catching_up():
    timer = dict(unit_settings(SYSTEMD / "certrenew.timer", "Timer"))
    assert timer["Persistent"] == "true"
    assert timer["RandomizedDelaySec"] == "12h"
    result = subprocess.run(["systemd-analyze", "calendar", "--iterations=3", timer["OnCalendar"]],
                            capture_output=True, text=True, timeout=60, check=True, env={"TZ": "UTC"})
    times = re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ \S+ (\d\d:\d\d:\d\d)", result.stdout)
    assert len(times) == 3 and set(times) == {"00:00:00", "12:00:00"}, result.stdout
