"""The installed ACME libraries are new enough, checked before the ACME stack is imported.

A distribution's packages can be older than what certrenew is written against (Debian
bookworm's python3-acme is 2.1). Such a version imports fine and then fails deep in an
order with an AttributeError; this check turns it into one line naming the fix.
"""

import re
from importlib import metadata
from types import MappingProxyType

from certrenew.errors import CertrenewError

MINIMUM = MappingProxyType({"acme": "5.0", "josepy": "2.0"})
"""Keep in step with pyproject.toml's dependencies."""


def check_acme_stack() -> None:
    """Raise CertrenewError if a package of `MINIMUM` is missing or older than its minimum."""
    for package, minimum in MINIMUM.items():
        try:
            installed = metadata.version(package)
        except metadata.PackageNotFoundError as cause:
            raise CertrenewError(f"{package} is not installed: certrenew needs {package} >= {minimum}; "
                                 "install with pip") from cause
        if _release(installed) < _release(minimum):
            raise CertrenewError(f"{package} {installed} is too old: certrenew needs {package} >= {minimum}; "
                                 "install with pip")


def _release(version: str) -> tuple[int, ...]:
    """The release numbers of a version string, to compare: "2.1rc1" -> (2, 1, 0)."""
    match = re.match(r"\d+(\.\d+)*", version)
    numbers = [int(part) for part in match.group().split(".")] if match else []
    return tuple(numbers + [0] * (3 - len(numbers)))
