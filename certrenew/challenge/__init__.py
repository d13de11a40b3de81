"""Proving control of a name to the CA: HTTP-01 responder, TLS-ALPN-01, DNS-01 (RFC 2136, hook), CAA."""
