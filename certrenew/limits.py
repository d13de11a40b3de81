"""Limits: the process limits a run needs raised before it starts, and the sizes it refuses beyond."""

import resource

MAX_BUNDLE = 2 * 1024 * 1024
"""The largest bundle certrenew reads from the ssl dir, in bytes. The chain a CA sends is at
most 1 MiB (`acme_transport.MAX_RESPONSE`) and a key a few KiB; twice that leaves room for
what an operator adds (DH parameters, a longer chain), while a link to /dev/zero or a
runaway file is refused instead of read until memory runs out."""


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard one (often 1024 and far more).

    A run holds the responder's connections, its CA connections, the state and HAProxy's
    sockets at once; the soft limit is a default, not a choice, and a flood must not be
    what makes a write fail with "Too many open files".
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # a hard limit the kernel will not grant (above nr_open)
            pass  # the run goes on with the soft limit
