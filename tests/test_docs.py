"""The documentation that ships in the repository covers what the code accepts, and its links resolve.

Every check takes its list from the code, not from a copy here: the options of every command from the real
click application, the inventory keys from :mod:`edgeopt.devices.inventory`'s own table of accepted keys, the
environment variables from a scan of the package sources. An option, key or variable added without
documentation fails here, naming it. The checkers return lists of problems; the tests at the end feed them
known-bad input, so each check is shown to be able to fail.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# where the edgeopt package's code lives (sdk/ is `edgeopt`, targets/ and converters/ its subpackages)
SOURCE_DIRS = ("sdk", "targets", "converters")
ENV_NAME = re.compile(r"\bEDGEOPT_[A-Z0-9_]+\b")


# ------------------------------------------------------------------------------------------------ helpers

def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def sections(markdown: str, level: int = 2) -> dict[str, str]:
    """{heading text: body} for the headings of exactly ``level`` (deeper headings stay in the body)."""
    marker = "#" * level + " "
    out, title, body = {}, None, []
    for line in markdown.splitlines():
        if line.startswith(marker):
            if title is not None:
                out[title] = "\n".join(body)
            title, body = line[len(marker):].strip(), []
        elif title is not None:
            body.append(line)
    if title is not None:
        out[title] = "\n".join(body)
    return out


def table_rows(text: str) -> list[list[str]]:
    """Cells of every Markdown table row in ``text`` (an escaped ``\\|`` stays inside its cell)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("|") and line.endswith("|"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line[1:-1])])
    return rows


def mentions(text: str, word: str) -> bool:
    """``word`` (an option like ``--runs`` or ``-t``) appears on its own, not inside a longer option."""
    return re.search(r"(?<![\w-])" + re.escape(word) + r"(?![\w-])", text) is not None


def cli_group():
    """The real ``edgeopt`` click group, with every command module registered (as ``edgeopt`` itself does)."""
    import typer

    from edgeopt import cli

    register = getattr(cli, "register_commands", None) or getattr(cli, "_register")
    register()
    return typer.main.get_command(cli.app)


def cli_commands() -> dict:
    """{command name: click command} of the real ``edgeopt`` application."""
    return dict(cli_group().commands)


def root_options() -> list[str]:
    return [o for p in cli_group().params if p.param_type_name == "option" for o in p.opts + p.secondary_opts]


def default_spellings(value) -> set[str]:
    """How a default may be written in the docs' Default column: 600.0 as `600.0` or `600`."""
    if isinstance(value, float):
        return {str(value), f"{value:g}"}
    return {str(value)}


def option_problems(cli_md: str, commands: dict) -> list[str]:
    """Options of ``commands`` missing from their command's section of cli.md, or documented with another
    default. Each command has a ``## edgeopt NAME`` section; each option a table row there whose first cell
    names it and whose second cell shows its default (numbers and strings; flags as on/off)."""
    problems = []
    secs = sections(cli_md)
    for name, command in sorted(commands.items()):
        title = f"edgeopt {name}"
        if title not in secs:
            problems.append(f"{title}: no '## {title}' section in docs/cli.md")
            continue
        rows = table_rows(secs[title])
        for param in command.params:
            if param.param_type_name != "option":
                continue
            names = list(param.opts) + list(param.secondary_opts)
            for opt in names:
                if not any(row and mentions(row[0], opt) for row in rows):
                    problems.append(f"{title}: option {opt} is not in a table row of its section in docs/cli.md")
            row = next((r for r in rows if r and mentions(r[0], names[0])), None)
            if row is None or len(row) < 2:
                continue
            default = param.default
            if param.secondary_opts and isinstance(default, bool):  # --samples/--no-samples
                want = {names[0] if default else param.secondary_opts[0]}
            elif default is None or isinstance(default, bool) or default in ([], ()) or callable(default):
                continue
            else:
                want = default_spellings(default)
            if not any(w in row[1] for w in want):
                problems.append(f"{title}: {names[0]} defaults to {default!r} but docs/cli.md says {row[1]!r}")
    return problems


def key_problems(inventory_md: str, keys) -> list[str]:
    """Inventory keys without their own row (first cell `` `key` ``) in inventory.md's tables."""
    firsts = {row[0] for row in table_rows(inventory_md) if row}
    return [f"inventory key {k!r} is not documented in docs/inventory.md"
            for k in sorted(keys) if f"`{k}`" not in firsts]


def env_names_in_source() -> dict[str, str]:
    """{EDGEOPT_* name: first file using it} in the package sources."""
    found = {}
    for d in SOURCE_DIRS:
        for path in sorted((ROOT / d).rglob("*.py")):
            for name in ENV_NAME.findall(read(path)):
                found.setdefault(name, str(path.relative_to(ROOT)))
    return found


def env_problems(environment_md: str, names) -> list[str]:
    return [f"environment variable {n} is not documented in docs/environment.md"
            for n in sorted(names) if f"`{n}`" not in environment_md]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} +(.+?) *$", strip_code(markdown), re.M)}


def strip_code(markdown: str) -> str:
    """The text without fenced code blocks (links in code are not links)."""
    return re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)


def links(markdown: str) -> list[str]:
    """Targets of the inline links and images, outside code blocks and code spans."""
    text = re.sub(r"`[^`\n]*`", "code", strip_code(markdown))
    return [m.group(1).strip() for m in re.finditer(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)]


def link_problems(path: Path, markdown: str, root: Path = ROOT) -> list[str]:
    """Links of ``path`` that leave the repository (other than http/https URLs) or point at nothing."""
    problems = []
    where = path.relative_to(root) if path.is_relative_to(root) else path
    for target in links(markdown):
        if re.match(r"https?://", target):
            continue
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("/", "//")):
            problems.append(f"{where}: link {target!r} leaves the repository")
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not dest.is_relative_to(root.resolve()):
            problems.append(f"{where}: link {target!r} points outside the repository")
            continue
        if not dest.is_file():
            problems.append(f"{where}: link {target!r}: no such file in the repository")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(read(dest)):
            problems.append(f"{where}: link {target!r}: no heading #{anchor} in {dest.relative_to(root.resolve())}")
    return problems


def doc_files() -> list[Path]:
    return [ROOT / "README.md"] + sorted(DOCS.glob("*.md"))


# -------------------------------------------------------------------------------------------------- tests

def test_every_doc_page_exists_and_is_linked_from_the_index():
    index = read(DOCS / "README.md")
    pages = ["cli.md", "inventory.md", "manifest.md", "environment.md", "python-api.md", "architecture.md"]
    for page in pages:
        assert (DOCS / page).is_file(), page
    for page in sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md"):
        assert f"]({page})" in index, f"docs/README.md does not link {page}"
    assert "](docs/README.md)" in read(ROOT / "README.md")


def test_every_cli_option_of_every_command_is_documented_under_its_command():
    commands = cli_commands()
    assert {"convert", "bench", "deploy", "devices", "bundle"} <= set(commands)  # the app was really loaded
    assert option_problems(read(DOCS / "cli.md"), commands) == []


def test_root_options_and_exit_codes_are_documented():
    cli_md = read(DOCS / "cli.md")
    for opt in root_options():
        assert mentions(cli_md, opt), opt
    codes = {row[0] for row in table_rows(sections(cli_md)["Conventions"])}
    assert {"0", "1", "2", "3", "130"} <= codes


def test_every_inventory_key_is_documented():
    from edgeopt.devices import inventory

    keys = set(inventory._KEYS)  # the keys the inventory parser accepts (anything else is refused)
    assert {"host", "port", "user", "target"} <= keys
    assert key_problems(read(DOCS / "inventory.md"), keys) == []


def test_every_environment_variable_in_the_source_is_documented():
    names = env_names_in_source()
    assert "EDGEOPT_INVENTORY" in names and "EDGEOPT_HISTORY" in names  # the scan really read the sources
    environment_md = read(DOCS / "environment.md")
    assert env_problems(environment_md, names) == []
    assert "`SOURCE_DATE_EPOCH`" in environment_md


def parameter_problems(python_api_md: str, functions: dict) -> list[str]:
    """Parameters of the public functions missing from their ``## title`` section of python-api.md."""
    import inspect

    problems = []
    secs = sections(python_api_md)
    for title, fn in functions.items():
        body = secs.get(title)
        if body is None:
            problems.append(f"{title}: no '## {title}' section in docs/python-api.md")
            continue
        for name in inspect.signature(fn).parameters:
            if not re.search(r"(?<![\w.])" + re.escape(name) + r"(?!\w)", body):
                problems.append(f"{title}: parameter {name!r} is not documented in docs/python-api.md")
    return problems


def public_functions() -> dict:
    import edgeopt
    import edgeopt.runtime

    return {"edgeopt.convert": edgeopt.convert, "edgeopt.bench": edgeopt.bench, "edgeopt.deploy": edgeopt.deploy,
            "edgeopt.runtime": edgeopt.runtime.load}


def test_every_parameter_of_the_public_functions_is_documented():
    assert parameter_problems(read(DOCS / "python-api.md"), public_functions()) == []


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_stay_in_the_repository_and_resolve(path):
    assert link_problems(path, read(path)) == []


# ------------------------------------------------------------------- the checks can fail (known-bad input)

def test_option_check_reports_a_missing_option_and_a_wrong_default():
    commands = {"bench": cli_commands()["bench"]}
    section = sections(read(DOCS / "cli.md"))["edgeopt bench"]
    without_runs = "\n".join(ln for ln in section.splitlines() if "`--runs" not in ln)
    problems = option_problems("## edgeopt bench\n" + without_runs, commands)
    assert problems == ["edgeopt bench: option --runs is not in a table row of its section in docs/cli.md"]
    wrong = section.replace("| `--warmup N` | `10` |", "| `--warmup N` | `5` |")
    assert wrong != section
    assert option_problems("## edgeopt bench\n" + wrong, commands) == [
        "edgeopt bench: --warmup defaults to 10 but docs/cli.md says '`5`'"]
    assert option_problems("## edgeopt bench\n| `--all` | off | |\n", commands)  # options of another section
    assert option_problems("", commands) == ["edgeopt bench: no '## edgeopt bench' section in docs/cli.md"]


def test_parameter_check_reports_a_missing_parameter():
    def convert(model, target, *, calib=None, new_knob=False):
        """A stand-in with one parameter the page does not have."""

    page = "## edgeopt.convert\n\n```python\nedgeopt.convert(model, target, *, calib=None)\n```\n"
    assert parameter_problems(page, {"edgeopt.convert": convert}) == [
        "edgeopt.convert: parameter 'new_knob' is not documented in docs/python-api.md"]


def test_key_and_env_checks_report_what_is_missing():
    assert key_problems("| `host` | string | | |\n", {"host", "proxy_jump"}) == [
        "inventory key 'proxy_jump' is not documented in docs/inventory.md"]
    assert env_problems("`EDGEOPT_CACHE`", {"EDGEOPT_CACHE", "EDGEOPT_NEW"}) == [
        "environment variable EDGEOPT_NEW is not documented in docs/environment.md"]


def test_link_check_reports_links_out_of_the_repository():
    readme = ROOT / "README.md"
    text = ("[spec](../shared/spec/interface.md) [abs](/etc/passwd) [f](file:///etc/passwd) "
            "[gone](docs/nothing.md) [anchor](docs/cli.md#no-such-heading) [ok](docs/cli.md#edgeopt-bench) "
            "[web](https://example.org/x) `[code](../not-a-link.md)`\n```\n[fenced](../nor-this.md)\n```\n")
    assert link_problems(readme, text) == [
        "README.md: link '../shared/spec/interface.md' points outside the repository",
        "README.md: link '/etc/passwd' leaves the repository",
        "README.md: link 'file:///etc/passwd' leaves the repository",
        "README.md: link 'docs/nothing.md': no such file in the repository",
        "README.md: link 'docs/cli.md#no-such-heading': no heading #no-such-heading in docs/cli.md",
    ]
