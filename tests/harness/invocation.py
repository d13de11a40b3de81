"""Check a shipped command line (a systemd ExecStart, the image's command) with certrenew's own parser."""

import argparse
from pathlib import Path

from certrenew.cli import commands
from certrenew.errors import UsageError


def parse_invocation(argv: list[str]) -> argparse.Namespace:
    """`certrenew SUBCOMMAND ARGS...` as certrenew would parse it. Raises UsageError on anything
    certrenew would refuse, a subcommand it does not have included."""
    program, subcommand, *arguments = argv
    assert Path(program).name == "certrenew", argv
    if subcommand not in commands.COMMANDS:
        raise UsageError(f"certrenew has no {subcommand!r} command (it has {', '.join(commands.COMMANDS)})")
    return getattr(commands, f"build_{subcommand.replace('-', '_')}_parser")().parse_args(arguments)
