"""The test lab and its fakes: pebble, HAProxy, BIND, proxies that inject faults, shared by tests and scripts."""
