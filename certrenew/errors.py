"""Every public exception of certrenew, in one module below all others (exported by `certrenew`).

Each message is one line an operator can act on; the CLI prints it, and with -v the chain of
causes under it (`causes`): the failure certrenew met underneath (a refused connection, a
missing file) is kept with `raise ... from error`, never dropped.
"""

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


def causes(error: BaseException) -> list[BaseException]:
    """What led to `error`, nearest first: each `__cause__`, or the exception being handled when it
    was raised (`__context__`) unless `from None` hid it."""
    chain: list[BaseException] = []
    below: BaseException | None = error
    while below is not None:
        below = below.__cause__ or (None if below.__suppress_context__ else below.__context__)
        if below is None or below in chain:
            break
        chain.append(below)
    return chain


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


class Blocked(Refused):
    """Certificates whose place in the ssl dir holds what no bundle can be read from or put back
    into: the operator's mistake, not the bundle's nor the CA's. They fail without a back-off and
    stay pending for the run after the fix; the others are installed."""

    backoff = False
    set_aside = False


class NotServed(Refused):
    """Certificates a verify endpoint does not serve once installed, each with its own reason:
    HAProxy took them, so what it serves instead (another bundle claiming their names, say) is
    at fault, not they. They stay pending and the batch is put back; the run installs the
    others without them, so one shadowed name fails alone."""

    set_aside = False


class RuntimeApiError(CertrenewError):
    """A Runtime API command failed; the message names the node and HAProxy's answer."""


class Rejected(RuntimeApiError):
    """HAProxy answered that it will not take this certificate (`set`/`commit ssl cert`, `add ssl crt-list`):
    the bundle is at fault."""


class TransactionOpen(RuntimeApiError):
    """HAProxy holds a certificate transaction for another file, and only one at a time: whoever opened it
    must end it. Neither the bundle nor this node's configuration is at fault."""

    def __init__(self, node: object, path: str, aborted: bool = False) -> None:
        fix = (f"HAProxy put this certificate into it, so it was aborted: whoever opened it must set {path} again"
               if aborted else f"end it with 'abort ssl cert {path}' and run again")
        super().__init__(f"{node}: a certificate transaction for {path} is open (another tool's, or an "
                         f"interrupted run's); {fix}")


class Forbidden(RuntimeApiError):
    """This user may not connect to the socket; the message names the user and the fix."""


class Unsupported(RuntimeApiError):
    """This HAProxy cannot do the change at runtime; a reload has to."""


class CheckFailed(CertrenewError):
    """`haproxy -c` refused the configuration; `output` is all it said (which files it could not load)."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


class PortBusy(CertrenewError):
    """Another process holds the address (and serves none of this store's answers)."""


class AccountUnknown(CertrenewError):
    """The CA does not know the account certrenew stored."""


class Conflict(CertrenewError):
    """A conditional write found another version than it expected: someone wrote first."""


class Fenced(CertrenewError):
    """A write made under a lock that is no longer held (its lease expired or another holder took
    it over): refused, so that a late writer never undoes what its successor did."""


class Busy(CertrenewError):
    """The lock is held by another holder (named in the message) for longer than the caller waits."""


class Unavailable(CertrenewError):
    """The backend cannot be reached or read (etcd down, a directory gone): nothing was changed."""


class StoreUnreachable(Unavailable):
    """No member of the shared store's cluster answered: a condition of the whole store, not a failure of
    any certificate (no back-off, nothing recorded); the work waits for the store (see `Backend.outage`)."""

    def __init__(self, message: str, since: float | None = None) -> None:
        super().__init__(message)
        self.since = since
        """Since when (a Unix time) every request of this process to the store has failed."""
