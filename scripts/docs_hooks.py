"""MkDocs hook: the tables that would drift if written by hand are made from the code when the site
is built: the options (certrenew.config.OPTIONS, whose help `--help` shows) on the configuration page,
and every error line certrenew raises on the troubleshooting page."""

import ast
import html
import re
from pathlib import Path

from certrenew.config import CLI_ONLY, OPTIONS

OPTIONS_MARKER = "<!-- options table -->"
ERRORS_MARKER = "<!-- error lines -->"
PACKAGE = Path(__file__).resolve().parents[1] / "certrenew"
ERRORS = {"CertrenewError", "ConfigurationError", "UsageError", "Refused", "OverBudget", "ValueError",
          "RuntimeApiError", "Blocked", "Unsupported", "Unfit", "Rejected", "NotServed", "Forbidden",
          "CheckFailed", "TransactionOpen"}
"""The exceptions whose message an operator reads: certrenew's own, and the ValueError of a setting's check."""
FILLED = "…"
"""What stands for a value the line fills in (a path, a name, the CA's answer)."""


def _cell(text: str) -> str:
    """Help text as one table cell: argparse's %% unescaped, and no | or <name> read as markup."""
    return text.replace("%%", "%").replace("|", "\\|").replace("<", "&lt;")


def options_table() -> str:
    """One row per option: its flag (and --no- form for a switch), variable, config-file key and help."""
    rows = ["| option | environment | config file | meaning |", "|---|---|---|---|"]
    for option in OPTIONS:
        if option.kind is bool:
            flag = f"`{option.cli}`, `--no-{option.cli[2:]}`"
        else:
            flag = f"`{option.cli}` {_cell(option.metavar or 'VALUE')}"
        key = "(none: command line and environment only)" if option.name in CLI_ONLY else f"`{option.name}`"
        meaning = option.help + ("; repeat for several" if option.repeated and "repeat" not in option.help else "")
        rows.append(f"| {flag} | `{option.env}` | {key} | {_cell(meaning)} |")
    return "\n".join(rows) + "\n"


def _text(node: ast.expr, names: dict[str, ast.expr]) -> str | None:
    """A message as the operator reads it, each value filled in at run time shown as FILLED
    (`names`: the function's assignments, for a message built before it is raised)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.sub(r"%[-+ #0-9.]*[sdrfgx]", FILLED, node.value) if node.value else node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(str(part.value) if isinstance(part, ast.Constant) else FILLED for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left, names), _text(node.right, names)
        return None if left is None and right is None else (left or FILLED) + (right or FILLED)
    if isinstance(node, ast.Name) and node.id in names:
        return _text(names.pop(node.id), names)  # popped: a name assigned from itself ends here
    return None


def _lines(function: ast.AST) -> list[str]:
    """The operator's lines written in one function: raised errors' messages,
    `certrenew check`'s FAIL and warn lines, and logged warnings and errors."""
    names = {target.id: node.value for node in ast.walk(function) if isinstance(node, ast.Assign)
             for target in node.targets if isinstance(target, ast.Name)}
    found = []
    for node in ast.walk(function):
        call = node.exc if isinstance(node, ast.Raise) else node
        if not isinstance(call, ast.Call) or not call.args:
            continue
        called = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")
        if isinstance(node, ast.Raise) and called in ERRORS:
            line = _text(call.args[0], dict(names))
        elif called == "Check" and len(call.args) == 3 and getattr(call.args[0], "id", "") in ("FAIL", "WARN"):
            what, detail = _text(call.args[1], dict(names)) or FILLED, _text(call.args[2], dict(names))
            line = detail and f"{call.args[0].id.replace('WARN', 'warn')} {what}: {detail}"
        elif called in ("warning", "error") and getattr(call.func, "value", None) and \
                getattr(call.func.value, "id", "") == "log":
            line = _text(call.args[0], dict(names))
            line = line and f"{called}: {line}"
        else:
            continue
        if line and line.strip(FILLED + " :"):
            found.append(" ".join(line.split()))
    return found


def error_lines() -> dict[str, list[str]]:
    """Per module (certrenew/acme/orders.py as acme/orders.py), each line of an operator's error or
    warning written there, once, in the order of the source."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        lines = [line for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for line in _lines(node)]  # a nested function's twice: once is kept
        if lines:
            found[str(path.relative_to(PACKAGE))] = list(dict.fromkeys(lines))
    return found


def error_list() -> str:
    """The error lines as Markdown: a heading per module, one line each."""
    parts = []
    for module, lines in error_lines().items():
        parts.append(f"### `{module}`\n")
        parts += [f"- <code>{html.escape(line)}</code>" for line in lines]
        parts.append("")
    return "\n".join(parts)


def on_page_markdown(markdown: str, **_) -> str:
    return markdown.replace(OPTIONS_MARKER, options_table()).replace(ERRORS_MARKER, error_list())
