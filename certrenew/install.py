"""Installing a bundle: write it into HAProxy's ssl dir and make HAProxy serve it.

The bundle that was there before is kept in memory and put back byte for byte if
anything after the write fails, so a failed install leaves HAProxy's files as they were.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

from certrenew import haproxy
from certrenew.atomicfile import fsync_directory, write_atomic
from certrenew.errors import CertrenewError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstallResult:
    path: Path
    method: str


class Installer:
    """Puts bundles into `ssl_dir` as `<name>.pem` and reloads HAProxy."""

    def __init__(self, ssl_dir: Path, reload_command: str) -> None:
        self.ssl_dir = ssl_dir
        self.reload_command = reload_command

    def install(self, name: str, bundle: bytes) -> InstallResult:
        path = self.ssl_dir / f"{name}.pem"
        previous = path.read_bytes() if path.exists() else None
        try:
            write_atomic(path, bundle)
        except OSError as error:
            raise CertrenewError(f"cannot write {path}: {error.strerror}") from None
        try:
            haproxy.reload(self.reload_command)
        except BaseException:
            self._restore(path, previous)
            raise
        return InstallResult(path, "reload")

    @staticmethod
    def _restore(path: Path, previous: bytes | None) -> None:
        log.warning("restoring the previous contents of %s", path)
        if previous is None:
            path.unlink(missing_ok=True)
            fsync_directory(path.parent)
        else:
            write_atomic(path, previous)
