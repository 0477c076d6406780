"""The docs a user's clone contains: README.md and docs/*.md link only to files inside the repository that
exist (anchors included), carry no planning references, and every test docs/guarantees.md cites exists."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
ISSUE = re.compile(r"\bissues?\s+#?\d+", re.I)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def _links(path: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", path.read_text()))


def test_there_are_docs_to_check():
    names = {p.name for p in DOCS}
    assert {"README.md", "index.md", "guarantees.md"} <= names, names


def link_problems(doc: Path, root: Path) -> list[str]:
    """What is wrong with the links of one page: a link outside `root`, to a missing file or heading."""
    text, problems = doc.read_text(), []
    if "../shared" in text:
        problems.append(f"{doc.name} points at ../shared, which a clone does not have")
    for target in _links(doc):
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            problems.append(f"{doc.name}: link {target} leaves the repository")
        elif not dest.is_relative_to(root):
            problems.append(f"{doc.name}: link {target} points outside the repository")
        elif not dest.exists():
            problems.append(f"{doc.name}: link {target} names a file that does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"{doc.name}: link {target}: no heading '#{anchor}' in {dest.name}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_link_only_to_files_in_the_repository(doc: Path):
    assert not link_problems(doc, ROOT)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_name_no_issue_numbers(doc: Path):
    found = ISSUE.findall(doc.read_text())
    assert not found, f"{doc.name} mentions {found}: user docs carry no planning references"


TEST_LINK = re.compile(r"\[`(test_\w+)`\]\(([^)#\s]+)\)")


@functools.cache  # ~700 citations, ~60 files: each parsed once
def defined_tests(file: Path) -> set[str]:
    return {n.name for n in ast.walk(ast.parse(file.read_text()))
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")}


def citation_problems(text: str, folder: Path) -> list[str]:
    """What is wrong with the tests a page in `folder` cites: a test named without a link to its file, a link to a
    file that is not a test file, or to one that does not define the test it names."""
    problems = []
    linked = TEST_LINK.findall(text)
    named = re.findall(r"`(test_\w+)`", text)
    problems += [f"{name} is named without a link to its file" for name in sorted(set(named) - {n for n, _ in linked})]
    for name, target in linked:
        file = (folder / target).resolve()
        if not (file.is_file() and file.name.startswith("test_") and file.suffix == ".py"):
            problems.append(f"{name}: {target} is not a test file")
        elif name not in defined_tests(file):
            problems.append(f"{name}: not defined in {target}")
    return problems


def test_every_test_named_in_guarantees_exists():
    """Each test docs/guarantees.md cites is linked to the file that defines it, so the table cannot rot."""
    doc = ROOT / "docs" / "guarantees.md"
    assert len(TEST_LINK.findall(doc.read_text())) > 300, "docs/guarantees.md links to no tests"
    assert not citation_problems(doc.read_text(), doc.parent)


def test_every_promise_reads_at_a_glance():
    rows = [line.split(" | ")[0].lstrip("| ") for line in (ROOT / "docs" / "guarantees.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith(("| promise", "| ---"))]
    assert len(rows) > 200
    assert not [row for row in rows if len(row) > 160]


@pytest.mark.parametrize(("text", "problem"), [
    ("[`test_every_test_named_in_guarantees_exists`](../tests/project/test_docs.py)", None),
    ("`test_every_test_named_in_guarantees_exists`", "is named without a link"),
    ("[`test_no_such_test`](../tests/project/test_docs.py)", "not defined in ../tests/project/test_docs.py"),
    ("[`test_every_test_named_in_guarantees_exists`](../tests/project/test_layout.py)", "not defined in"),
    ("[`test_every_test_named_in_guarantees_exists`](../tests/nowhere.py)", "is not a test file"),
    ("[`test_every_test_named_in_guarantees_exists`](../README.md)", "is not a test file"),
])
def test_the_citation_check_catches_what_it_should(text, problem):
    """Checked as if the text were a page of docs/ (the links are relative to it)."""
    found = citation_problems(text, ROOT / "docs")
    assert (found == []) if problem is None else (len(found) == 1 and problem in found[0]), found


@pytest.mark.parametrize("text, bad", [
    ("see [the design](../shared/DESIGN.md)", "../shared"),
    ("[x](https://example.com/a)", "leaves the repository"),
    ("[x](../../etc/passwd)", "outside the repository"),
    ("[x](docs/nowhere.md)", "does not exist"),
    ("[x](docs/a.md#no-such-heading)", "no heading"),
    ("[x](#nowhere)", "no heading"),
])
def test_the_link_check_catches_what_it_should(tmp_path, text, bad):
    """The check on a planted repository: each kind of bad link is found, with its reason; good ones pass."""
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "a.md").write_text("# A page\n\n## The int8 gate (`--precision int8`)\n")
    page = repo / "README.md"
    page.write_text("# Top\n[ok](docs/a.md#the-int8-gate---precision-int8) [ok](#top)\n```\n[code](nowhere.md)\n```\n")
    assert link_problems(page, repo) == []
    page.write_text(f"# Top\n{text}\n")
    problems = link_problems(page, repo)
    assert problems and bad in problems[0], problems
