"""certrenew: an ACME certificate renewer for HAProxy.

The library API: `run(settings, specs)` brings every `CertificateSpec` up to date under
`Settings` and returns a `Report`: an `Outcome` per certificate, and the hooks that failed.
Its state lives in a `Store`, by default a `FileStore` in `settings.state_dir`. The names load on first use, so
`import certrenew` (and a run with nothing due) stays free of the ACME stack.
"""

import importlib
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from certrenew.version import __version__

__all__ = ["CertificateSpec", "FileStore", "Outcome", "Report", "Settings", "Store", "__version__", "run"]

_HOMES = MappingProxyType({"CertificateSpec": "certrenew.config", "Settings": "certrenew.config",
          "Outcome": "certrenew.renewal.renew", "Report": "certrenew.renewal.renew", "run": "certrenew.renewal.renew",
          "FileStore": "certrenew.state.store", "Store": "certrenew.state.store"})

if TYPE_CHECKING:
    from certrenew.config import CertificateSpec, Settings
    from certrenew.renewal.renew import Outcome, Report, run
    from certrenew.state.store import FileStore, Store


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'certrenew' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
