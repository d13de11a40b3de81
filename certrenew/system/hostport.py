"""HOST:PORT addresses, as --listen (for TCP), --metrics-listen, --verify-endpoint and --haproxy-socket take them."""

import re

RUNTIME_API_TCP = re.compile(r"^ipv4@(?P<host>[^:\s]+):(?P<port>\d{1,5})$")
"""A Runtime API over TCP, as HAProxy's `stats socket ipv4@HOST:PORT` names it."""


def split_host_port(address: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) as a host and a port number."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address}: expected HOST:PORT, e.g. 127.0.0.1:49494")
    return host, int(port)


def check_host_port(address: str) -> str:
    """`address` itself if it parses: the check of an option that keeps the text."""
    split_host_port(address)
    return address


def check_address(address: str) -> str:
    """A Runtime API address: `ipv4@HOST:PORT`, or a unix socket path (optionally `unix@PATH`)."""
    match = RUNTIME_API_TCP.match(address)
    if match:
        if not 0 < int(match["port"]) < 65536:
            raise ValueError(f"{address}: port out of range")
    elif not address.removeprefix("unix@").startswith("/"):
        raise ValueError(f"{address}: give an absolute unix socket path or ipv4@HOST:PORT")
    return address
