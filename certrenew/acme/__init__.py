"""Talking to the CA (RFC 8555): transport, account, renewal information (ARI), orders."""
