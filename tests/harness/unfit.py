"""What may stand where certrenew reads a file of the operator's (a config, a key file): each must be
refused unread, in one line, never waited on (a FIFO) nor read until memory runs out (/dev/zero)."""

import os
from pathlib import Path

UNFIT = ("fifo", "device", "directory", "large")
COMPLAINTS = {"fifo": "a named pipe (FIFO), not a regular file", "device": "a character device, not a regular file",
              "directory": "a directory, not a regular file", "large": "larger than"}
"""What the refusal of each says."""


def place(path: Path, what: str, limit: int) -> Path:
    """Put at `path` a thing of kind `what` (one of UNFIT; "large" is a comment line over `limit` bytes)."""
    if what == "fifo":
        os.mkfifo(path, 0o600)
    elif what == "device":
        path.symlink_to("/dev/zero")
    elif what == "directory":
        path.mkdir(0o700)
    elif what == "large":
        path.write_text("#" * (limit + 1) + "\n")
        path.chmod(0o600)
    else:
        raise ValueError(what)
    return path
