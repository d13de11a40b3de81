"""What to check when a CA cannot reach certrenew: the fix named, from what was seen.

Shared by the pre-flight self-check (which sees HAProxy's answer itself) and the CA's
own validation errors (which arrive as RFC 8555 problem documents), so both say the
same thing about the same mistake. Pure functions: no network, no ACME stack.
"""

ROUTE = ("check the letsencrypt-request ACL (path_beg /.well-known/acme-challenge/) and the backend's "
         "server address, which must be certrenew's --listen address (a unix socket's path as seen inside "
         "HAProxy's chroot)")
"""The usual first-run mistake: HAProxy answers, but not with the responder's answer."""
TLS_ROUTE = ("check that HAProxy's port-443 TCP frontend sends { req.ssl_alpn acme-tls/1 } to the "
             "certrenew_tls_alpn backend, whose server must be certrenew's --tls-alpn-listen address (see "
             "haproxy/tls-alpn-01.cfg)")
"""The same mistake for TLS-ALPN-01, whose route is the ClientHello's ALPN, not a path."""
TLS_ALPN_01 = "tls-alpn-01"


def no_listener(name: str, port: int = 80) -> str:
    return (f"nothing accepted a connection on port {port} for {name}: check that HAProxy binds :{port} and "
            "the firewall")


def no_answer(name: str, port: int = 80) -> str:
    return (f"port {port} of {name} did not answer in time: check the firewall, and that the name's A/AAAA "
            "record points at this HAProxy")


def dns_record(name: str) -> str:
    return f"check the A/AAAA record of {name}: it must point at this HAProxy"


def untrusted_ca(url: str, error: str) -> str:
    """An ACME server whose TLS certificate does not verify (`error`: the TLS library's words):
    a local setting, not an outage."""
    start = error.find("certificate verify failed")
    reason = error[start:].split(" (_ssl.c")[0].rstrip(")'\"") if start >= 0 else error
    return (f"the TLS certificate of the ACME server {url} is not trusted ({reason}): pass --ca-bundle "
            "with the CA that signed it, or fix the system's trust store")


def validation_hint(code: str | None, detail: str, name: str, challenge: str = "http-01") -> str | None:
    """The fix for a failed validation of `name`, from the CA's problem type (`code`, e.g. "dns",
    the last part of its URN) and its detail text; None when there is nothing better to say.
    `challenge`: the type that failed (TLS-ALPN-01 goes to port 443, routed by ALPN)."""
    port, route = (443, TLS_ROUTE) if challenge == TLS_ALPN_01 else (80, ROUTE)
    text = detail.lower()
    if code == "dns" or "dns problem" in text or "no valid a records" in text:
        return dns_record(name)
    if code == "connection" or ("fetching" in text and "timeout" in text):
        if "refused" in text:
            return no_listener(name, port)
        if "timeout" in text or "timed out" in text or "deadline exceeded" in text:
            return no_answer(name, port)
        return None
    if code in ("unauthorized", "incorrectResponse") or "invalid response" in text or "non-200" in text:
        return route
    return None
