"""HOST:PORT addresses, as --listen (for TCP), --metrics-listen and --verify-endpoint take them."""


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
