"""README.md and docs/*.md stay true to the repository: every `make` target they name is in
the Makefile, every `cluster-spark` subcommand and flag is in the CLI, every relative link
and `#anchor` resolves, and every repository path the README names exists.

Pure Python on the files' text: no Spark, no import of the package."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
CLI = ROOT / "src" / "cluster_spark" / "cli.py"
MAKEFILE = ROOT / "Makefile"

#: Paths the README names that a user creates, not the repository: the config of "Your own
#: data" and the placeholder of "Command line".
USER_PATHS = {"conf/pricing_page.yaml", "conf/x.yaml"}

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
SPAN = re.compile(r"`([^`]+)`")


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def fenced_blocks(text: str) -> list[str]:
    return [m.group(0) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text without its fenced code blocks (code spans stay)."""
    return FENCE.sub("", text)


def code_snippets(text: str) -> list[str]:
    """Each command of every fenced block (comments cut, `\\` continuations joined) and
    every inline code span (which may run over a line break)."""
    out = []
    for block in fenced_blocks(text):
        body = "\n".join(block.splitlines()[1:-1])
        for line in re.sub(r"\\\n", " ", body).splitlines():
            out.append(re.sub(r"\s#.*$", "", line))
    out += [m.group(1) for m in SPAN.finditer(prose(text))]
    return out


# --- (1) make targets ------------------------------------------------------------------


def makefile_targets(text: str) -> set[str]:
    """Rule targets of the Makefile (`name:` and `a b:`), not variable assignments (`:=`)
    nor pattern or path targets."""
    rule = re.compile(r"^([A-Za-z][\w.-]*(?:[ \t]+[A-Za-z][\w.-]*)*)[ \t]*:(?![=:])", re.M)
    targets = set()
    for m in rule.finditer(text):
        targets.update(m.group(1).split())
    return targets


def make_mentions(text: str) -> set[str]:
    found = set()
    for snippet in code_snippets(text):
        for m in re.finditer(r"(?:^|[\s;&|(])make\s+([A-Za-z][\w-]*)", snippet):
            found.add(m.group(1))
    return found


def test_makefile_targets_are_parsed():
    targets = makefile_targets(MAKEFILE.read_text())
    assert {"setup", "demo", "test", "help"} <= targets
    assert "SHELL" not in targets and "PYTHON" not in targets  # assignments


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_make_targets_exist(page):
    targets = makefile_targets(MAKEFILE.read_text())
    missing = sorted(make_mentions(page.read_text()) - targets)
    assert not missing, f"{rel(page)} names make targets the Makefile lacks: {missing}"


def test_readme_names_the_two_commands():
    assert {"demo", "test"} <= make_mentions(README.read_text())


# --- (2) and (3) CLI subcommands and flags --------------------------------------------


def cli_subcommands(source: str) -> set[str]:
    """`add_parser("name", …)` calls, and the names of the loop that calls
    `add_parser(name, …)` over `(name, help)` pairs."""
    names = set(re.findall(r"add_parser\(\s*\"([^\"]+)\"", source))
    loop = re.search(
        r"for\s+name\s*,\s*\w+\s+in\s+\((.*?)\):\s*\n\s*\w+\s*=\s*\w+\.add_parser\(\s*name\b",
        source,
        re.S,
    )
    if loop:
        names |= set(re.findall(r"\(\s*\"([a-z][\w-]*)\"\s*,", loop.group(1)))
    return names


def invocations(text: str) -> list[tuple[str | None, str]]:
    """(subcommand or None, the rest of the snippet) for every `cluster-spark …` command in
    code (`cluster-spark: error: …` is output, not a command)."""
    out = []
    for snippet in code_snippets(text):
        for m in re.finditer(r"(?<![\w.-])cluster-spark\s+(.*)", snippet, re.S):
            rest = m.group(1)
            sub = re.match(r"([a-z][\w-]*)", rest)
            out.append((sub.group(1) if sub else None, rest))
    return out


def test_cli_subcommands_are_parsed():
    """Both forms are found: `demo` is added by name, `run` and the others in the loop."""
    names = cli_subcommands(CLI.read_text())
    assert {"run", "demo"} <= names and len(names) >= 5, names


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_cli_subcommands_exist(page):
    known = cli_subcommands(CLI.read_text())
    used = {sub for sub, _ in invocations(page.read_text()) if sub}
    missing = sorted(used - known)
    assert not missing, f"{rel(page)} names cluster-spark subcommands the CLI lacks: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_cli_flags_exist(page):
    source = CLI.read_text()
    flags = {
        f
        for _, rest in invocations(page.read_text())
        for f in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest)
    }
    missing = sorted(f for f in flags if f'"{f}"' not in source)
    assert not missing, f"{rel(page)} uses cluster-spark flags cli.py does not define: {missing}"


def test_readme_shows_every_subcommand():
    used = {sub for sub, _ in invocations(README.read_text())}
    assert cli_subcommands(CLI.read_text()) <= used


# --- (4) links and anchors ---------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text as rendered (links by their text, no
    emphasis or code marks), lowercased, punctuation but `-` and `_` dropped, spaces as `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", prose(page.read_text()), re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(text: str) -> list[str]:
    body = SPAN.sub("", prose(text))
    return re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", body)


def test_slug_follows_github():
    assert slug("Worked example: `make demo`") == "worked-example-make-demo"
    assert slug("`results` (the public contract)") == "results-the-public-contract"
    assert slug("Input rules: time, NULLs, ids, labels, values and files") == (
        "input-rules-time-nulls-ids-labels-values-and-files"
    )
    assert slug("Statistics (full method notes: [`docs/methods.md`](docs/methods.md))") == (
        "statistics-full-method-notes-docsmethodsmd"
    )
    assert slug("Spark Connect without Delta's plugin") == "spark-connect-without-deltas-plugin"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve(page):
    broken = []
    for target in links(page.read_text()):
        if re.match(r"[a-z][\w+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not broken, f"{rel(page)}: " + "; ".join(broken)


# --- (5) repository paths ----------------------------------------------------------------

PATH = re.compile(r"(?<![\w./-])((?:conf|scripts|bench|dags|jobs|tests|docs|src)/[\w./-]*[\w])")


def repo_paths(text: str) -> set[str]:
    return set(PATH.findall(text))


def test_readme_paths_exist():
    named = repo_paths(README.read_text())
    assert {"conf/demo.yaml", "scripts/submit.sh"} <= named  # the pattern finds paths
    missing = sorted(p for p in named - USER_PATHS if not (ROOT / p).exists())
    assert not missing, f"README.md names paths that do not exist: {missing}"


def test_user_paths_are_still_named():
    """The exceptions are paths the README still shows as a user's own files."""
    assert repo_paths(README.read_text()) >= USER_PATHS
