"""No process-wide mutable state in the package: two runs in one process share nothing by accident.

Every module-level assignment must hold an immutable value (a constant, a tuple, a frozenset,
a MappingProxyType, a compiled pattern, a type alias...); a dict, list or set literal, a call
that builds a mutable object, or a `global` statement anywhere fails this test. What is
deliberately shared is listed in ALLOWED, each with why.
"""

import ast
from pathlib import Path

import certrenew

PACKAGE = Path(certrenew.__file__).parent

IMMUTABLE_CALLS = frozenset({
    "MappingProxyType", "frozenset", "tuple", "compile", "timedelta", "Path", "TypeVar", "ObjectIdentifier",
    "bit_length", "int", "float", "str", "bytes",
})
"""Calls (by their last name: `re.compile`) that build values nobody can change."""

ALLOWED = {
    "logging.getLogger": "loggers: configured once by the host, as logging intends; they hold no run's state",
    "json.JSONDecoder": "store._DECODER: a decoder with fixed options; decoding keeps no state between calls",
    "tenacity.wait_exponential": "transport._exponential: a wait strategy, a pure function of the attempt",
    "tenacity.wait_random": "transport._exponential: the same wait strategy's jitter, a pure function too",
}
"""Calls, by the name the module calls them with, whose results are shared on purpose, and why."""

MUTABLE_NODES = (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)


def _module_level(body: list[ast.stmt]):
    """The statements run at import: the module's, and those of its top-level `if` and `try` blocks."""
    for node in body:
        if isinstance(node, (ast.If, ast.Try)):
            yield from _module_level(node.body + node.orelse + getattr(node, "finalbody", []))
            for handler in getattr(node, "handlers", []):
                yield from _module_level(handler.body)
        else:
            yield node


def _problem(value: ast.expr) -> str | None:
    """Why `value` may be mutable, or None."""
    if isinstance(value, MUTABLE_NODES):
        return f"a {type(value).__name__.lower()} (make it a tuple, a frozenset or a MappingProxyType)"
    if isinstance(value, ast.Call):
        called = ast.unparse(value.func)
        if called.rsplit(".", 1)[-1] not in IMMUTABLE_CALLS and called not in ALLOWED:
            return f"a call to {called} (mutable? add it to IMMUTABLE_CALLS or ALLOWED, saying why)"
    if isinstance(value, ast.BinOp):
        return _problem(value.left) or _problem(value.right)
    return None


def module_state_problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    problems = [f"{path}:{node.lineno}: a `global` statement" for node in ast.walk(tree) if isinstance(node, ast.Global)]
    for node in _module_level(tree.body):
        if isinstance(node, ast.AugAssign):
            problems.append(f"{path}:{node.lineno}: changed at import ({ast.unparse(node.target)})")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            names = [ast.unparse(target) for target in getattr(node, "targets", [getattr(node, "target", None)])]
            problem = None if names == ["__all__"] else _problem(node.value)  # __all__ is read by `import *` only
            if problem:
                problems.append(f"{path}:{node.lineno}: {', '.join(names)} is {problem}")
    return problems


def test_the_package_has_no_module_level_mutable_state():
    problems = [problem for path in sorted(PACKAGE.rglob("*.py")) for problem in module_state_problems(path)]
    assert not problems, "\n".join(problems)


def test_the_scan_finds_what_it_forbids(tmp_path):
    module = tmp_path / "shared.py"
    module.write_text("import threading\nSEEN = {}\nNAMES = ['a']\nEVENT = threading.Event()\n"
                      "WORDS = ('a',) + tuple([])\nCOUNT = 0\ndef bump():\n    global COUNT\n    COUNT += 1\n")
    found = "\n".join(module_state_problems(module))
    assert "SEEN is a dict" in found and "NAMES is a list" in found and "threading.Event" in found
    assert "`global` statement" in found and "WORDS" not in found
