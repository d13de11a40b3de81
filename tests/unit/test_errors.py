"""The public exceptions live in one module, `certrenew.errors`, and `import certrenew` exports them."""

import importlib
import pkgutil

import certrenew
from certrenew import errors

ELSEWHERE = {
    "certrenew.system.limits.Unfit": "a ValueError of `read_regular`, turned into a UsageError by each caller",
}
"""Exceptions defined outside `errors` on purpose, and why."""


def _exceptions_defined_in_the_package() -> dict[str, type]:
    found = {}
    for module in pkgutil.walk_packages(certrenew.__path__, "certrenew."):
        if module.name == "certrenew.__main__":  # runs the CLI
            continue
        loaded = importlib.import_module(module.name)
        for name, value in vars(loaded).items():
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == module.name:
                found[f"{module.name}.{name}"] = value
    return found


def test_every_public_exception_is_in_errors_and_exported():
    defined = _exceptions_defined_in_the_package()
    astray = [name for name in defined
              if not name.startswith("certrenew.errors.") and name not in ELSEWHERE and "._" not in name]
    assert not astray, f"define these in certrenew.errors: {astray}"
    public = [value for name, value in defined.items() if name.startswith("certrenew.errors.")]
    assert all(getattr(certrenew, error.__name__) is error for error in public)
    assert {error.__name__ for error in public} <= set(certrenew.__all__)


def test_causes_follow_the_chain_and_stop_where_it_was_cut():
    try:
        try:
            try:
                raise ConnectionRefusedError(111, "Connection refused")
            except OSError as refused:
                raise RuntimeError("pool exhausted") from refused
        except RuntimeError:
            raise errors.CertrenewError("cannot reach the CA")  # the implicit context counts too
    except errors.CertrenewError as error:
        assert [type(cause).__name__ for cause in errors.causes(error)] == ["RuntimeError", "ConnectionRefusedError"]
    try:
        raise errors.UsageError("bad") from None
    except errors.UsageError as error:
        assert errors.causes(error) == []


def test_no_raise_drops_its_cause():
    """`raise ... from None` hides what `-v` shows as the error's causes; the package keeps them."""
    import ast
    from pathlib import Path

    package = Path(certrenew.__file__).parent
    dropped = [f"{path.relative_to(package)}:{node.lineno}" for path in sorted(package.rglob("*.py"))
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Raise) and isinstance(node.cause, ast.Constant) and node.cause.value is None]
    assert not dropped, dropped
