"""Making HAProxy serve a bundle: Runtime API, crt-list, reload, install with rollback, verify."""
