"""certrenew: an ACME certificate renewer for HAProxy.

The library API: `run(settings, specs)` brings every `CertificateSpec` up to date under
`Settings` and returns a `Report`: an `Outcome` per certificate, and the hooks that failed. The names load on first use, so
`import certrenew` (and a run with nothing due) stays free of the ACME stack.
"""

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["CertificateSpec", "Outcome", "Report", "Settings", "run"]

_HOMES = {"CertificateSpec": "certrenew.config", "Settings": "certrenew.config",
          "Outcome": "certrenew.renew", "Report": "certrenew.renew", "run": "certrenew.renew"}

if TYPE_CHECKING:
    from certrenew.config import CertificateSpec, Settings
    from certrenew.renew import Outcome, Report, run


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'certrenew' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
