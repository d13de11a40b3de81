"""certrenew: an ACME certificate renewer for HAProxy."""

__version__ = "0.1.0"
