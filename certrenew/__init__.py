"""certrenew: an ACME certificate renewer for HAProxy.

The library API: `run(settings, specs)` brings every `CertificateSpec` up to date under
`Settings` and returns a `Report`: an `Outcome` per certificate, and the hooks that failed.
Its state lives in a `Store`, by default a `FileStore` in `settings.state_dir`. A `RunContext` passed as
`context=` cancels the run (`cancel()`; it then raises `Interrupted`), apart from any other run in the process.
Every exception certrenew raises on purpose is here (from `certrenew.errors`); the other names load on first
use, so `import certrenew` (and a run with nothing due) stays free of the ACME stack.
"""

import importlib
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from certrenew.errors import (
    AccountUnknown,
    Blocked,
    Busy,
    CertrenewError,
    CheckFailed,
    ConfigurationError,
    Conflict,
    Fenced,
    Forbidden,
    Interrupted,
    NotServed,
    OverBudget,
    PortBusy,
    Refused,
    Rejected,
    RuntimeApiError,
    StoreUnreachable,
    TransactionOpen,
    Unavailable,
    Unsupported,
    UsageError,
)
from certrenew.version import __version__

__all__ = ["AccountUnknown", "Action", "Blocked", "Busy", "CertificateSpec", "CertrenewError", "CheckFailed",
           "ConfigurationError", "Conflict", "Fenced", "FileStore", "Forbidden", "Interrupted", "NotServed",
           "Outcome", "OverBudget",
           "PortBusy", "Refused", "Rejected", "Report", "RunContext", "RuntimeApiError", "Settings", "Store",
           "StoreUnreachable",
           "TransactionOpen", "Unavailable", "Unsupported", "UsageError", "__version__", "run"]

_HOMES = MappingProxyType({"CertificateSpec": "certrenew.config", "Settings": "certrenew.config",
                           "Outcome": "certrenew.renewal.renew", "Report": "certrenew.renewal.renew",
                           "run": "certrenew.renewal.renew", "FileStore": "certrenew.state.store",
                           "Store": "certrenew.state.store", "Action": "certrenew.renewal.policy",
                           "RunContext": "certrenew.system.runcontext"})

if TYPE_CHECKING:
    from certrenew.config import CertificateSpec, Settings
    from certrenew.renewal.policy import Action
    from certrenew.renewal.renew import Outcome, Report, run
    from certrenew.state.store import FileStore, Store
    from certrenew.system.runcontext import RunContext


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'certrenew' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
