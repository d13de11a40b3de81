"""MkDocs hook: the configuration page's options table is made from the code's option declarations
(certrenew.config.OPTIONS, whose help `--help` shows) when the site is built, so it cannot drift."""

from certrenew.config import CLI_ONLY, OPTIONS

MARKER = "<!-- options table -->"


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


def on_page_markdown(markdown: str, **_) -> str:
    return markdown.replace(MARKER, options_table())
