"""The docs cannot drift from the code: the options table, the command synopsis, the package list,
the README's first commands and set-up lines, and the pages the shipped files point at.
(scripts/test builds the site with `mkdocs build --strict`: a broken link or anchor fails there.)"""

import re
from pathlib import Path

from markdown.extensions.toc import slugify

from certrenew.cli import commands
from certrenew.config import OPTIONS, build_settings, load_config
from scripts.docs_hooks import ERRORS_MARKER, OPTIONS_MARKER, error_lines, options_table

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()


def _page(name: str) -> str:
    return (DOCS / name).read_text()


def _prose(text: str) -> str:
    """Markdown without its code blocks (a `# comment` in one is no heading)."""
    return re.sub(r"^ *```.*?^ *```", "", text, flags=re.M | re.S)


def _section(text: str, heading: str) -> str:
    """The text under `heading` (a whole line, with its #s), up to the next heading of the same level."""
    start = text.index(f"{heading}\n")
    end = text.find(f"\n{heading.split()[0]} ", start + 1)
    return text[start:end if end != -1 else None]


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"^ *```[a-z]*\n(.*?)^ *```", text, re.M | re.S)


def _table(text: str, header: str) -> list[str]:
    """The rows of the table whose header line is `header`."""
    lines = text.splitlines()
    start = lines.index(header)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def _options_rows() -> list[str]:
    """The configuration page's options: the table made from OPTIONS, and the command line's own."""
    return (_table(options_table(), "| option | environment | config file | meaning |")
            + _table(_page("configuration.md"), "| option | environment | default | meaning |"))


def _parser_flags() -> set[str]:
    """Every option string any command's parser accepts (the --no- forms included)."""
    builders = [commands.build_parser, commands.build_run_parser, commands.build_daemon_parser, commands.build_status_parser,
                commands.build_check_parser, commands.build_bootstrap_parser, commands.build_revoke_parser, commands.build_import_parser]
    return {flag for build in builders for flag in build()._option_string_actions}


def test_the_configuration_page_has_the_generated_options_table():
    assert OPTIONS_MARKER in _page("configuration.md")
    rows = _options_rows()
    for option in OPTIONS:
        matching = [row for row in rows if re.search(rf"`{re.escape(option.cli)}`", row)]
        assert matching, f"no row of the options table names {option.cli}"
        assert any(f"`{option.env}`" in row for row in matching), f"the row of {option.cli} lacks `{option.env}`"


def test_no_row_names_an_option_or_variable_that_does_not_exist():
    flags = _parser_flags()
    cli_source = (ROOT / "certrenew" / "cli" / "commands.py").read_text()
    variables = {option.env for option in OPTIONS}
    for row in _options_rows():
        name_cells = "|".join(row.split("|")[1:3])  # the option and environment columns
        for flag in re.findall(r"`(--?[a-z][a-z0-9-]*)", name_cells):
            assert flag in flags, f"the options table names {flag}, which no command takes"
        for variable in re.findall(r"`(CERTRENEW_[A-Z0-9_]+)`", name_cells):
            # The few the CLI reads itself (the config file, -v, -q, --log-format) are named in its source.
            assert variable in variables or f'"{variable}"' in cli_source, \
                f"the options table names {variable}, which certrenew does not read"


def test_the_synopsis_lists_every_command_and_only_those():
    synopsis = _code_blocks(_page("commands.md"))[0].splitlines()
    shown = [line.split()[1] for line in synopsis if line.startswith("certrenew ")]
    assert "[options]" in shown, "the single-domain form (certrenew [options] DOMAIN ...) is not in the synopsis"
    named = set(shown) - {"[options]"}
    assert named == set(commands.COMMANDS), f"synopsis {sorted(named)} != commands {sorted(commands.COMMANDS)}"


def test_the_architecture_list_names_every_package_and_only_those():
    listed = set()
    for line in _section(_page("design.md"), "# Architecture").splitlines():
        match = re.match(r"- ((?:`\w+`(?:, )?)+):", line)
        if match:
            listed.update(re.findall(r"`(\w+)`", match.group(1)))
    package = ROOT / "certrenew"
    names = {path.stem for path in package.glob("*.py")} | {path.parent.name for path in package.glob("*/__init__.py")}
    assert listed == names, f"missing from the list: {sorted(names - listed)}; no such package: {sorted(listed - names)}"


def test_the_readme_is_short_and_its_first_code_block_is_the_demo_and_the_tests():
    first = _code_blocks(README)[0]
    assert "scripts/demo" in first and "scripts/test" in first
    assert len(README.splitlines()) <= 200


def test_the_readmes_haproxy_lines_are_those_of_the_shipped_config():
    """The quick start's excerpt of haproxy.cfg, line by line, as haproxy/haproxy.cfg (which the lab runs) has it."""
    shipped = {line.strip() for line in (ROOT / "haproxy" / "haproxy.cfg").read_text().splitlines()}
    (excerpt,) = [block for block in _code_blocks(README) if "frontend http" in block]
    assert {line.strip() for line in excerpt.splitlines() if line.strip()} - shipped == set()


def _anchors(page: Path) -> set[str]:
    """The ids MkDocs gives a page's headings (Python-Markdown's toc slugify of the heading's text)."""
    return {slugify(heading.replace("`", ""), "-") for heading in re.findall(r"^#+ (.+)$", _prose(page.read_text()), re.M)}


def _check_pointer(source: Path, target: str) -> None:
    """`target` (docs/PAGE.md or docs/PAGE.md#anchor, relative to `source`'s folder) is a page with that heading."""
    path, _, anchor = target.partition("#")
    page = (source.parent / path).resolve()
    assert page.is_file(), f"{source.relative_to(ROOT)}: {target}: no such page"
    assert not anchor or anchor in _anchors(page), f"{source.relative_to(ROOT)}: {target}: the page has no such section"


def test_the_readmes_links_into_the_docs_exist():
    links = re.findall(r"\]\((docs/[\w-]+\.md(?:#[\w-]+)?)\)", README)
    assert len(links) >= 15
    for link in links:
        _check_pointer(ROOT / "README.md", link)
    linked = {link.partition("#")[0] for link in links}
    assert {f"docs/{page.name}" for page in DOCS.glob("*.md")} - linked == set(), "a page the README does not link to"


def test_the_shipped_files_point_at_docs_sections_that_exist():
    """The Dockerfile, the units, HAProxy's config and the examples name a section as docs/PAGE.md#anchor
    (a quoted heading goes stale unseen), and each is one of that page's headings."""
    shipped = [ROOT / "Dockerfile", *(path for folder in ("systemd", "haproxy", "examples")
                                      for path in (ROOT / folder).rglob("*") if path.is_file())]
    pointers = 0
    for path in shipped:
        text = path.read_text()
        vague = re.findall(r".*\bREADME\.md#.*", text)
        assert not vague, f"{path.relative_to(ROOT)}: the README is short now; name a page as docs/PAGE.md#anchor: {vague}"
        for target in re.findall(r"((?:\.\./)?docs/[\w-]+\.md(?:#[\w-]+)?)", text):
            _check_pointer(path if target.startswith("../") else ROOT / "x", target)
            pointers += 1
    assert pointers >= 6  # the Dockerfile, both units (twice each), the compose example


def test_the_units_documentation_is_the_installed_docs():
    """Documentation=file:/usr/local/share/doc/certrenew/PAGE.md: a page the Install commands copy there."""
    for unit in (ROOT / "systemd").glob("*.service"):
        uris = re.findall(r"^Documentation=(.*)$", unit.read_text(), re.M)
        assert uris, unit.name
        for uri in uris[0].split():
            assert uri.startswith("file:/usr/local/share/doc/certrenew/"), uri
            assert (DOCS / Path(uri).name).is_file(), f"{unit.name}: {uri}: docs/ has no such page"
    assert "docs/*.md /usr/local/share/doc/certrenew/" in _page("install.md")


def test_the_certbot_page_answers_each_certbot_word_as_the_cli_does():
    rows = _table(_page("certbot.md"), "| certbot | certrenew |")
    for word, answer in commands.CERTBOT_HABITS.items():
        assert any(f"`certbot {word}" in row and answer.split(" (")[0] in row for row in rows), \
            f"docs/certbot.md has no row answering `certbot {word}` with {answer}"


def test_each_common_error_of_troubleshooting_is_a_line_the_code_writes():
    """The hand-written table's lines (`…` standing for what is filled in) are among those the code
    raises, checks or logs, as the page's generated list has them: a reworded message fails here."""
    written = "\n".join(line for lines in error_lines().values() for line in lines)
    rows = _table(_page("troubleshooting.md"), "| the line says | what to do |")
    assert len(rows) >= 15
    for row in rows:
        said = re.match(r"\| (``?)(.+?)\1 \|", row)
        assert said, row
        pattern = ".*?".join(re.escape(part) for part in said.group(2).strip().split("…"))
        assert re.search(pattern, written), f"no line of the code says {said.group(2)!r}"


def test_the_error_list_has_the_lines_of_every_kind():
    lines = [line for lines in error_lines().values() for line in lines]
    assert len(lines) > 250
    assert any(line.startswith("FAIL ") for line in lines) and any(line.startswith("warning: ") for line in lines)
    assert ERRORS_MARKER in _page("troubleshooting.md")


def test_the_fleet_nodes_config_file_is_one_certrenew_reads(tmp_path):
    """Every setting of the fleet page's node config is an option certrenew takes, with a value it accepts."""
    (block,) = [block for block in _code_blocks(_page("fleet.md")) if block.startswith("# /etc/certrenew/certrenew.toml")]
    for name in re.findall(r'"/etc/certrenew/([^"]+)"', block):  # the files it names must exist, as on a node
        (tmp_path / name).write_text("placeholder\n")
        (tmp_path / name).chmod(0o600)
    config = tmp_path / "certrenew.toml"
    config.write_text(block.replace("/etc/certrenew/", f"{tmp_path}/"))
    settings = build_settings({}, load_config(config))
    assert settings.store and settings.store.startswith("etcd://")
    assert len(settings.responder.http_01_node) == 3
