"""Check a shipped command line (a systemd ExecStart, the image's command) with certrenew's own parser."""

import argparse
from pathlib import Path

from certrenew import cli


def parse_invocation(argv: list[str]) -> argparse.Namespace | None:
    """`certrenew SUBCOMMAND ARGS...` as certrenew would parse it; None while certrenew has no
    such subcommand. Raises UsageError on anything certrenew would refuse."""
    program, subcommand, *arguments = argv
    assert Path(program).name == "certrenew", argv
    if subcommand not in cli.COMMANDS:
        return None
    return getattr(cli, f"build_{subcommand.replace('-', '_')}_parser")().parse_args(arguments)
