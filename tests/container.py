"""The image as the Dockerfile defines it, for tests that run certrenew the way the image does.

No container engine runs where the tests run, so a test takes the image's command,
environment, user and volumes from here and runs them as a subprocess instead.
"""

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dockerfile_parse import DockerfileParser

DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile"


@dataclass(frozen=True)
class Image:
    """What the final stage of the Dockerfile sets for the container's main process."""

    argv: list[str]
    """ENTRYPOINT followed by CMD."""
    env: dict[str, str]
    """ENV, with `$VAR` expanded against the parent environment given to `read_image`."""
    uid: int
    gid: int
    volumes: list[str]
    healthcheck: list[str]

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
        argv=_exec_form("ENTRYPOINT", values["ENTRYPOINT"]) + _exec_form("CMD", values["CMD"]),
        env=parser.envs,
        uid=int(user),
        gid=int(group or user),
        volumes=_exec_form("VOLUME", values["VOLUME"]),
        healthcheck=_exec_form("HEALTHCHECK", command.strip()),
    )

