"""One run: what is due, the pre-flight probe, issuing, installing, hooks, progress."""
