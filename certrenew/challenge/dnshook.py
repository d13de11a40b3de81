"""Publishing DNS-01 records through an operator's command, for every DNS provider without RFC 2136.

The contract is certbot's manual hooks and acme.sh's DNS scripts in one command line:
`CMD add <record-name> <value>` before validation, `CMD remove <record-name> <value>` after,
with the same in CERTRENEW_DOMAIN, CERTRENEW_DNS_RECORD and CERTRENEW_DNS_VALUE. The
command is split like a shell would split it but run without one (an operator who needs
a shell writes `sh -c '...'`), with no stdin, and killed if it outlives its timeout. It
only publishes: certrenew itself then waits until the zone's name servers answer the value.
"""

from __future__ import annotations

import logging
import shlex

from certrenew.challenge.dns01 import TxtRecord
from certrenew.config.dns import split_dns_hook
from certrenew.errors import CertrenewError
from certrenew.system.command import run_command

log = logging.getLogger(__name__)

HOOK_TIMEOUT = 120.0


class DnsHook:
    """A `RecordPublisher` that runs `command add|remove <record-name> <value>`."""

    def __init__(self, command: str, timeout: float = HOOK_TIMEOUT) -> None:
        self.argv = split_dns_hook(command)
        self.command = command
        self.timeout = timeout

    def check(self, zone: str) -> None:
        """Nothing to check: the contract has no dry run, and a failing `add` fails the certificate."""

    def add(self, record: TxtRecord) -> None:
        self._run("add", record)

    def remove(self, record: TxtRecord) -> None:
        self._run("remove", record)

    def _run(self, action: str, record: TxtRecord) -> None:
        argv = [*self.argv, action, record.name, record.value]
        env = {"CERTRENEW_DOMAIN": record.domain, "CERTRENEW_DNS_RECORD": record.name,
               "CERTRENEW_DNS_VALUE": record.value}
        what = f"DNS hook {self.argv[0]} {action} {record.name}"
        log.debug("running %s", shlex.join(argv))
        try:
            status, said = run_command(argv, self.timeout, env)
        except FileNotFoundError as cause:
            raise CertrenewError(f"DNS hook not found: {self.argv[0]!r} (set --dns-hook)") from cause
        except PermissionError as cause:
            raise CertrenewError(f"DNS hook {self.argv[0]!r} is not executable") from cause
        except OSError as error:
            raise CertrenewError(f"DNS hook {self.argv[0]!r} could not start: {error.strerror}") from error
        for line in said:
            log.debug("%s: %s", what, line)
        if status is None:
            raise CertrenewError(f"{what} did not finish within {self.timeout:g} s")
        if status != 0:
            raise CertrenewError(f"{what} failed with exit status {status}" + (f": {said[-1]}" if said else ""))
