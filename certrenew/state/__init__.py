"""What certrenew remembers between runs: records, bundles, orders, and the locks that guard them."""
