"""Errors an operator can act on; the CLI prints their message as one line."""


class CertrenewError(Exception):
    """A run failed for a reason the message explains (exit status 1)."""

    exit_code = 1


class UsageError(CertrenewError):
    """Bad usage or bad input, refused before anything was touched (exit status 2)."""

    exit_code = 2
