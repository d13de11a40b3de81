"""Keys, names and bundles: what a certificate is made of, checked before anything serves it."""
