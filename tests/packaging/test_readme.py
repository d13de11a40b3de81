"""The README cannot drift from the code: its options table, command synopsis, module list and first commands,
and the sections the shipped files point at."""

import re
from pathlib import Path

from certrenew.cli import commands
from certrenew.config import OPTIONS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _section(heading: str) -> str:
    """The text under `## heading`, up to the next heading of the same level."""
    start = README.index(f"\n## {heading}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S)


def _options_table() -> list[str]:
    """The rows of the options table: the one whose header starts `| option | environment |`."""
    lines = README.splitlines()
    start = lines.index("| option | environment | default | meaning |")
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def _parser_flags() -> set[str]:
    """Every option string any command's parser accepts (the --no- forms included)."""
    builders = [commands.build_parser, commands.build_run_parser, commands.build_daemon_parser, commands.build_status_parser,
                commands.build_check_parser, commands.build_bootstrap_parser, commands.build_revoke_parser, commands.build_import_parser]
    return {flag for build in builders for flag in build()._option_string_actions}


def test_every_option_has_a_row_with_its_flag_and_variable():
    rows = _options_table()
    for option in OPTIONS:
        matching = [row for row in rows if re.search(rf"`{re.escape(option.cli)}[ `]", row)]
        assert matching, f"no row of the README's options table names {option.cli}"
        assert any(f"`{option.env}`" in row for row in matching), f"the row of {option.cli} lacks `{option.env}`"


def test_no_row_names_an_option_or_variable_that_does_not_exist():
    flags = _parser_flags()
    cli_source = (ROOT / "certrenew" / "cli" / "commands.py").read_text()
    variables = {option.env for option in OPTIONS}
    for row in _options_table():
        name_cells = "|".join(row.split("|")[1:3])  # the option and environment columns
        for flag in re.findall(r"`(--?[a-z][a-z0-9-]*)", name_cells):
            assert flag in flags, f"the README's options table names {flag}, which no command takes"
        for variable in re.findall(r"`(CERTRENEW_[A-Z0-9_]+)`", name_cells):
            # The few the CLI reads itself (the config file, -v, -q, --log-format) are named in its source.
            assert variable in variables or f'"{variable}"' in cli_source, \
                f"the README's options table names {variable}, which certrenew does not read"


def test_the_synopsis_lists_every_command_and_only_those():
    synopsis = _code_blocks(_section("Commands"))[0].splitlines()
    shown = [line.split()[1] for line in synopsis if line.startswith("certrenew ")]
    assert "[options]" in shown, "the single-domain form (certrenew [options] DOMAIN ...) is not in the synopsis"
    named = set(shown) - {"[options]"}
    assert named == set(commands.COMMANDS), f"synopsis {sorted(named)} != commands {sorted(commands.COMMANDS)}"


def test_the_architecture_list_names_every_package_and_only_those():
    listed = set()
    for line in _section("Architecture").splitlines():
        match = re.match(r"- ((?:`\w+`(?:, )?)+):", line)
        if match:
            listed.update(re.findall(r"`(\w+)`", match.group(1)))
    package = ROOT / "certrenew"
    names = {path.stem for path in package.glob("*.py")} | {path.parent.name for path in package.glob("*/__init__.py")}
    assert listed == names, f"missing from the list: {sorted(names - listed)}; no such package: {sorted(listed - names)}"


def test_the_first_code_block_is_the_demo_and_the_tests():
    first = _code_blocks(README)[0]
    assert "scripts/demo" in first and "scripts/test" in first


def _anchors() -> set[str]:
    """The ids GitHub gives the README's headings: lower case, punctuation dropped, spaces to hyphens."""
    prose = re.sub(r"^```.*?^```", "", README, flags=re.M | re.S)  # a `# comment` in a code block is no heading
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.+)$", prose, re.M)}


def test_the_shipped_files_point_at_readme_sections_that_exist():
    """The Dockerfile, the units, HAProxy's config and the examples name a section as README.md#anchor
    (a quoted heading goes stale unseen), and each anchor is one of the README's headings."""
    anchors = _anchors()
    shipped = [ROOT / "Dockerfile", *(path for folder in ("systemd", "haproxy", "examples")
                                      for path in (ROOT / folder).rglob("*") if path.is_file())]
    pointers = 0
    for path in shipped:
        text = path.read_text()
        vague = re.findall(r".*\bREADME\b(?!\.md).*", text)
        assert not vague, f"{path.relative_to(ROOT)}: name the README's section as README.md#anchor: {vague}"
        for anchor in re.findall(r"README\.md#([\w-]+)", text):
            assert anchor in anchors, f"{path.relative_to(ROOT)}: README.md#{anchor}: the README has no such section"
            pointers += 1
    assert pointers >= 4  # the Dockerfile, both units, the compose example
