"""Installing bundles: write them into HAProxy's ssl dir and make HAProxy serve them.

All bundles of a run are installed as one batch with one reload, however many there
are: a reload per certificate would make HAProxy re-read every certificate each time,
and reload signals sent back to back can be lost. The bundles that were there before
are kept in memory and put back byte for byte if anything fails, so a failed install
leaves HAProxy's files as they were.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from certrenew import haproxy
from certrenew.atomicfile import fsync_directory, write_atomic
from certrenew.errors import CertrenewError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstallResult:
    name: str
    path: Path
    method: str


class Installer:
    """Puts bundles into `ssl_dir` as `<name>.pem` and reloads HAProxy once."""

    def __init__(self, ssl_dir: Path, reload_command: str) -> None:
        self.ssl_dir = ssl_dir
        self.reload_command = reload_command

    def install(self, bundles: Mapping[str, bytes]) -> list[InstallResult]:
        """Install every bundle, or none: on failure all files are restored and the error raised."""
        previous: dict[Path, bytes | None] = {}
        try:
            for name, bundle in bundles.items():
                path = self.ssl_dir / f"{name}.pem"
                previous[path] = path.read_bytes() if path.exists() else None
                try:
                    write_atomic(path, bundle)
                except OSError as error:
                    raise CertrenewError(f"cannot write {path}: {error.strerror}") from None
            haproxy.reload(self.reload_command)
        except BaseException:
            self._restore(previous)
            raise
        return [InstallResult(name, self.ssl_dir / f"{name}.pem", "reload") for name in bundles]

    @staticmethod
    def _restore(previous: Mapping[Path, bytes | None]) -> None:
        for path, content in previous.items():
            log.warning("restoring the previous contents of %s", path)
            if content is None:
                path.unlink(missing_ok=True)
                fsync_directory(path.parent)
            else:
                write_atomic(path, content)
