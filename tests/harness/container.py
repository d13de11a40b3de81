"""The image as the Dockerfile defines it, for tests that run certrenew the way the image does.

No container engine runs where the tests run, so a test takes the image's command,
environment, user and volumes from here and runs them as a subprocess instead.
"""

import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


@dataclass(frozen=True)
class Image:
    """What the final stage of the Dockerfile sets for the container's main process."""

    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    """ENV, with `$VAR` expanded against the parent environment given to `read_image`."""
    uid: int
    gid: int
    volumes: list[str]
    healthcheck: list[str]

    @property
    def argv(self) -> list[str]:
        """The container's main process when run without a command (compose's `command` replaces `cmd`)."""
        return self.entrypoint + self.cmd

    def environment(self, volumes: Mapping[str, Path]) -> dict[str, str]:
        """`env` with each volume's path (and paths under it) replaced by the directory standing in for it."""
        if set(volumes) != set(self.volumes):
            raise ValueError(f"map every volume of the image: {self.volumes}")
        env = dict(self.env)
        for key, value in env.items():
            for volume, directory in volumes.items():
                if value == volume or value.startswith(volume + "/"):
                    env[key] = str(directory) + value[len(volume):]
        return env


def _exec_form(instruction: str, value: str) -> list[str]:
    try:
        argv = json.loads(value)
    except json.JSONDecodeError:
        raise ValueError(f"{instruction} must be in exec form (a JSON list), not {value!r}") from None
    return argv


def read_image(dockerfile: Path = DOCKERFILE, parent_env: Mapping[str, str] | None = None) -> Image:
    """Parse the last stage of `dockerfile`; `parent_env` stands for the base image's environment."""
    parser = DockerfileParser(str(dockerfile), env_replace=True,
                              parent_env=dict(parent_env if parent_env is not None else os.environ))
    last_stage = []
    for item in parser.structure:
        last_stage = [] if item["instruction"] == "FROM" else last_stage + [item]
    values = {item["instruction"]: item["value"] for item in last_stage}  # the last of each wins, as in Docker
    user, _, group = values["USER"].partition(":")
    options, _, command = values["HEALTHCHECK"].partition("CMD")
    return Image(
        entrypoint=_exec_form("ENTRYPOINT", values["ENTRYPOINT"]),
        cmd=_exec_form("CMD", values["CMD"]),
        env=parser.envs,
        uid=int(user),
        gid=int(group or user),
        volumes=_exec_form("VOLUME", values["VOLUME"]),
        healthcheck=_exec_form("HEALTHCHECK", command.strip()),
    )



def _runnable_by_anyone(path: Path) -> bool:
    return path.exists() and all(part.stat().st_mode & 0o001 for part in (path, *path.parents))


def install_for_anyone(top: Path) -> Path:
    """Install certrenew and what it needs at run time into `top`/site-packages, for the image's user.

    The checkout and its virtualenv may lie where no other user can enter (a clone under
    root's home, or under `mktemp -d`, mode 0700), so the user the image runs as could not
    import them from there. This copies the checkout's package (not the editable install's
    pointer back to it) and every file of the distributions it requires, found through their
    metadata, as pip installed them; `top` and its parents must be open to every user.
    """
    if not _runnable_by_anyone(top):
        raise PermissionError(f"{top} or a directory above it is closed to other users")
    site = top / "site-packages"
    shutil.copytree(DOCKERFILE.parent / "certrenew", site / "certrenew", ignore=shutil.ignore_patterns("__pycache__"))
    for distribution in _requirements(metadata.distribution("certrenew")):
        for file in distribution.files or []:
            if ".." not in file.parts and "__pycache__" not in file.parts:  # not its scripts in bin/
                (site / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(distribution.locate_file(file), site / file)
    return site


def _requirements(distribution: metadata.Distribution) -> list[metadata.Distribution]:
    """Every distribution `distribution` needs at run time, directly or not (no extras)."""
    found: dict[str, metadata.Distribution] = {}
    waiting = [distribution]
    while waiting:
        for line in waiting.pop().requires or []:
            requirement = Requirement(line)
            name = canonicalize_name(requirement.name)
            if name not in found and (requirement.marker is None or requirement.marker.evaluate({"extra": ""})):
                found[name] = metadata.distribution(name)
                waiting.append(found[name])
    return list(found.values())


def as_image_user(image: Image, argv: list[str], volumes: Mapping[str, Path],
                  site: Path) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run the image's `argv` as its user here (root only).

    `certrenew` becomes `python -m certrenew` on `site` (made by `install_for_anyone`), with an
    interpreter of the same version that the image's user may execute: the virtualenv's
    own may live under a home directory closed to other users.
    """
    if argv[0] != "certrenew":
        raise ValueError(f"not a certrenew command: {argv}")
    env = image.environment(volumes)
    env["PYTHONPATH"] = str(site)
    setpriv = ["setpriv", f"--reuid={image.uid}", f"--regid={image.gid}", "--clear-groups"]
    return [*setpriv, str(python_for_anyone()), "-m", "certrenew", *argv[1:]], env


def python_for_anyone() -> Path:
    """An interpreter of this one's version that any user may run (with `install_for_anyone`'s site):
    the virtualenv's own may live under a home directory closed to other users."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    interpreters = [Path(os.path.realpath(sys.executable)), Path(f"/usr/bin/python{version}")]
    python = next((path for path in interpreters if _runnable_by_anyone(path)), None)
    if python is None:
        raise LookupError(f"no Python {version} that an unprivileged user may run")
    return python
