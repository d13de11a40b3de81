"""Talking to HAProxy: the reload command."""

import logging
import shlex
import subprocess

from certrenew.errors import CertrenewError

log = logging.getLogger(__name__)

RELOAD_TIMEOUT = 120


def reload(command: str) -> None:
    """Run the reload command (split like a shell would, run without one); fail on non-zero exit.

    An operator who needs a shell writes one: `sh -c '...'`.
    """
    argv = shlex.split(command)
    if not argv:
        raise CertrenewError("the reload command is empty")
    log.debug("reloading HAProxy: %s", command)
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=RELOAD_TIMEOUT, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise CertrenewError(f"reload command not found: {argv[0]!r} (set --reload-command)") from None
    except subprocess.TimeoutExpired:
        raise CertrenewError(f"reload command {command!r} did not finish within {RELOAD_TIMEOUT} s") from None
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip().splitlines()
        said = f": {output[-1]}" if output else ""
        raise CertrenewError(f"reload command {command!r} failed with exit status {result.returncode}{said}")
