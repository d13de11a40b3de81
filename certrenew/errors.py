"""Errors an operator can act on; the CLI prints their message as one line."""

import datetime
import signal


class CertrenewError(Exception):
    """A run failed for a reason the message explains (exit status 1)."""

    exit_code = 1
    backoff = True
    """Whether the failure starts the back-off (see `policy.backoff`): the CA or a validation
    failing should not be hammered; a mistake on our side is retried as soon as it is fixed."""


class ConfigurationError(CertrenewError):
    """A mistake on our side that the message names the fix for (exit status 1, no back-off):
    no --agree-tos, a contact or profile the CA refuses, a path to the responder that does not
    work, a CA certificate not trusted, an HAProxy socket or reload command that cannot work."""

    backoff = False


class UsageError(CertrenewError):
    """Bad usage or bad input, refused before anything was touched (exit status 2)."""

    exit_code = 2
    backoff = False


class Refused(CertrenewError):
    """HAProxy refused some bundles themselves (an error answer to `set`/`commit ssl cert` or
    `add ssl crt-list`, or `haproxy -c` naming their files): those bundles, not HAProxy, are at fault."""

    set_aside = True
    """Whether the bundles are at fault, so set aside and ordered anew; else they stay pending
    for the run after the operator's fix (a subclass says why)."""

    def __init__(self, message: str, which: list[str], each: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.which = which
        """The certificates refused: their files where the installer raises it, their names after."""
        self.each = each or {}
        """Each one's own reason where it has one, so no certificate is blamed for another's fault."""

    def reason(self, which: str) -> str:
        return self.each.get(which, str(self))


class OverBudget(CertrenewError):
    """The certificate had its `policy.ORDER_BUDGET` of certificates within a day: no order before `until`."""

    def __init__(self, message: str, until: datetime.datetime) -> None:
        super().__init__(message)
        self.until = until


class Interrupted(BaseException):
    """A signal (or a library host's `RunContext.cancel`) asked the run to stop: a BaseException, so
    that `except Exception` does not swallow it and every `finally` on the way out runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process killed by it (130, 143)."""
        return 128 + self.signum
