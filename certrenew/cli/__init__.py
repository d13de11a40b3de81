"""The command line: commands, daemon, status, metrics, revoke, certbot import."""
