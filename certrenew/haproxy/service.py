"""Talking to HAProxy as a program: check its configuration, run the reload command and
see whether it took.

The Runtime API, which changes a running HAProxy without a reload, is in `runtime_api`.
"""

import logging
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from certrenew.errors import CertrenewError, CheckFailed
from certrenew.haproxy.runtime_api import RuntimeApi, RuntimeApiError
from certrenew.system.command import missing_program, run_command, split_command

log = logging.getLogger(__name__)

RELOAD_TIMEOUT = 120
CHECK_TIMEOUT = 60
SYSTEMD_TIMEOUT = 5
SYSTEMCTL_RELOADS = ("reload", "restart", "reload-or-restart", "try-restart", "try-reload-or-restart")
POLL_INTERVAL = 0.2


def reload(command: str, nodes: Sequence[RuntimeApi] = (), grace: float = 0.0) -> bool:
    """Run the reload command (as an operator's command: see `command`); fail on non-zero exit.
    Return whether the reload is known to have taken.

    A command that exits 0 proves little: `kill -USR2` and `systemctl reload` return at
    once, and a master that cannot load the new configuration keeps its old worker, which
    goes on serving the old certificates (HAProxy 2.6 and 3.4 alike). So each of `nodes`,
    whose Runtime API the worker answers, is asked for its worker's pid before and after:
    a new worker loaded the files now in the ssl dir; the same worker `grace` seconds
    after the command is a reload that did not take (CertrenewError). Without nodes nothing
    here can tell (False).
    """
    workers = [(node, worker_pid(node)) for node in nodes]
    _run_reload(command)
    deadline = time.monotonic() + grace
    for node, before in workers:
        now: str | None = before
        while now in (before, None):
            if time.monotonic() >= deadline:
                seen = f"still runs the worker it ran before (pid {before})" if now else "does not answer"
                raise CertrenewError(
                    f"reload command {command!r} exited 0, but HAProxy {node} {seen} {grace:g} s later: the "
                    "reload did not take (a configuration it refuses? see HAProxy's log, or haproxy -c)")
            time.sleep(POLL_INTERVAL)
            now = _answering(node)
    return bool(workers)


def worker_pid(node: RuntimeApi) -> str:
    """The pid of the HAProxy process answering `node` (`show info`, the same in 2.x and 3.x)."""
    answer = node.command("show info")
    pid = next((line.partition(":")[2].strip() for line in answer.splitlines() if line.startswith("Pid:")), "")
    if not pid:
        raise RuntimeApiError(f"{node}: show info gave no Pid")
    return pid


def _answering(node: RuntimeApi) -> str | None:
    """The pid of the worker answering `node`, or None while none does (the socket changing hands)."""
    try:
        return worker_pid(node)
    except RuntimeApiError:
        return None


def _run_reload(command: str) -> None:
    argv = split_command(command)
    log.debug("reloading HAProxy: %s", command)
    try:
        status, said = run_command(argv, RELOAD_TIMEOUT)
    except FileNotFoundError as cause:
        raise CertrenewError(f"reload command not found: {argv[0]!r} (set --reload-command)") from cause
    except OSError as error:
        raise CertrenewError(f"reload command {command!r} could not start: {error.strerror}") from error
    if status is None:
        raise CertrenewError(f"reload command {command!r} did not finish within {RELOAD_TIMEOUT} s and was killed")
    if status != 0:
        said_last = f": {said[-1]}" if said else ""
        raise CertrenewError(f"reload command {command!r} failed with exit status {status}{said_last}")


def reload_problem(command: str) -> str | None:
    """Why the reload command would fail, as far as can be told without running it, or None.

    Its program must exist; and `systemctl reload UNIT` fails on a host whose systemd does not
    answer (a container, a chroot) or has no such unit: found now, that costs no order.
    """
    try:
        problem = missing_program(command)
    except ValueError as error:  # an empty or unparsable command
        return str(error)
    argv = split_command(command)
    words = [arg for arg in argv[1:] if not arg.startswith("-")]
    if problem or Path(argv[0]).name != "systemctl" or not words or words[0] not in SYSTEMCTL_RELOADS:
        return problem
    options = [arg for arg in argv[1:] if arg.startswith("-")]  # --user, say: ask the same systemd
    try:
        status, said = run_command([argv[0], *options, "show", "--property=LoadState", "--value", *words[1:]],
                                   SYSTEMD_TIMEOUT)
    except OSError as error:
        return f"{argv[0]} could not start: {error.strerror}"
    if status != 0:
        return f"{command!r} would fail: systemd does not answer ({said[-1] if said else f'exit status {status}'})"
    missing = [unit for unit, state in zip(words[1:], said) if state == "not-found"]
    if missing:
        return f"{command!r} would fail: systemd has no unit {', '.join(missing)}"
    return None


def check_config(configs: Sequence[Path]) -> None:
    """Run `haproxy -c` on the configuration (all files, as HAProxy would load them); fail with its complaint.

    A reload with a broken configuration leaves the old worker running on the old
    files at best, and a stopped HAProxy at worst. Without `configs` (no --haproxy-config)
    there is nothing to check, and the reload goes ahead unchecked.
    """
    if not configs:
        return
    argv = ["haproxy", "-c"] + [arg for config in configs for arg in ("-f", str(config))]
    log.debug("checking the HAProxy configuration: %s", " ".join(argv))
    result = _run(argv, CHECK_TIMEOUT, "haproxy -c",
                  "haproxy is not on PATH; it is needed to check --haproxy-config before a reload")
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        alerts = [line.split(" : ", 1)[-1] for line in lines if line.startswith("[ALERT]")] or lines
        said = f": {alerts[0]}" if alerts else ""
        names = ", ".join(str(config) for config in configs)
        raise CheckFailed(f"the HAProxy configuration ({names}) does not pass haproxy -c{said}",
                          result.stdout + result.stderr)


def _run(argv: list[str], timeout: float, what: str, not_found: str) -> subprocess.CompletedProcess:
    """Run `argv` without a shell or stdin, bounded by `timeout`; a missing program or a hang is an error."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout,
                              stdin=subprocess.DEVNULL)  # output that is not UTF-8 is still its words
    except FileNotFoundError as cause:
        raise CertrenewError(not_found) from cause
    except subprocess.TimeoutExpired as cause:
        raise CertrenewError(f"{what} did not finish within {timeout} s") from cause
