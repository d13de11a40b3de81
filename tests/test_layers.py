"""Imports go one way: no module imports one above it, so the graph has no cycle."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "certrenew"
LAYERS = [
    "version", "errors", "hints", "limits", "requirements", "signals", "progress", "hostport", "httpd", "keytypes", "domains",
    "atomicfile", "owned", "listen", "keys", "bundle", "runtime_api", "crtlist", "command", "haproxy", "hooks", "verify", "install", "lock",
    "challenge", "store", "policy", "responder", "tlsalpn01", "dns01", "caa", "rfc2136", "dnshook", "config",
    "acme_transport", "acme_account", "acme_ari", "acme_client", "issue", "status", "metrics", "placeholder", "preflight",
    "renew", "daemon", "revoke", "certbot_import",
    "cli", "__main__",
]
"""Bottom to top: the data flow's lower steps first, the run and the command line last."""


def imports(module: str) -> set[str]:
    """The certrenew modules `module` imports at run time (anywhere in it, not for type checking only)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    typing_only = {id(node) for guard in ast.walk(tree)
                   if isinstance(guard, ast.If) and ast.unparse(guard.test) == "TYPE_CHECKING"
                   for statement in guard.body for node in ast.walk(statement)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "certrenew":
            found |= {alias.name for alias in node.names if (PACKAGE / f"{alias.name}.py").exists()}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("certrenew."):
            found.add(node.module.removeprefix("certrenew."))
        elif isinstance(node, ast.Import):
            found |= {alias.name.removeprefix("certrenew.") for alias in node.names
                      if alias.name.startswith("certrenew.")}
    return found


def test_every_module_has_a_layer():
    assert sorted(LAYERS) == sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")


def test_no_module_imports_one_above_it():
    upward = [f"{module} imports {imported}" for module in LAYERS for imported in imports(module)
              if LAYERS.index(imported) >= LAYERS.index(module)]
    assert upward == []
