"""The repository stands alone and says where everything is: the rationale the code cites lives in
docs/design.md (no citation of a file the repository lacks, no tracker issue number), every relative path the
README and docs/design.md mention exists, the README's code map names every package and module, every
`type: ignore` says why, and `.ci/run` runs the README's test command (lint and types included)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "README.md", REPO / "docs" / "design.md")

# Spelled in pieces so that this file does not match itself.
PRIVATE_NOTES = re.compile("DESIGN" + r"\.md")
# The word issue (or Issue, issues) followed by a number: the project's tracker. An upstream project's issue names
# its repository before it (owner/name) and may stay.
ISSUE = re.compile(r"\b[Ii]ssues? #?\d+")
UPSTREAM_REPO = re.compile(r"[\w.-]+/[\w.-]+ $")
BARE_IGNORE = re.compile(r"#\s*type:\s*ignore(?!\[[\w,-]+\]  # \S)")
# Files the nightly job writes (`harness bench compare`), named in the README as where to look; not in a clone.
WRITTEN_BY_RUNS = {"results/nightly/history.jsonl", "results/nightly/compare.log"}
PATH = re.compile(r"(?<![\w./<{-])((?:harness|tests|configs|sbatch|docs|results|\.ci)/[\w./-]*[\w/])")


def _sources(*roots: str) -> list[Path]:
    return sorted(p for r in roots for p in (REPO / r).rglob("*.py"))


def tracker_issue(line: str) -> bool:
    """An issue number not preceded by the owner/name of the (upstream) repository it belongs to."""
    return any(not UPSTREAM_REPO.search(line[:m.start()]) for m in ISSUE.finditer(line))


def _hits(found: re.Pattern[str] | Callable[[str], bool], files: list[Path]) -> list[str]:
    test = found.search if isinstance(found, re.Pattern) else found
    return [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in files
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if test(line)]


def test_no_citation_of_private_notes_or_tracker_issues() -> None:
    files = [p for p in _sources("harness", "tests") if p != Path(__file__).resolve()] + list(DOCS)
    assert _hits(PRIVATE_NOTES, files) == []
    assert _hits(tracker_issue, files) == []


_I = "iss" + "ue"  # spelled in pieces, as PRIVATE_NOTES, so that the examples do not match this file


@pytest.mark.parametrize(("line", "bad"), [
    (f"The goal ({_I} 15): under 5 s", True), (f"{_I.title()} 7's acceptance", True), (f"see {_I}s 3 and 4", True),
    (f"upstream bug (NVIDIA/Cosmos {_I} 143)", False), (f"the {_I}'s tolerance", False),
])
def test_tracker_issue_rule(line: str, bad: bool) -> None:
    assert tracker_issue(line) is bad


def test_every_type_ignore_says_why() -> None:
    assert _hits(BARE_IGNORE, _sources("harness")) == []


@pytest.mark.parametrize(("line", "bad"), [
    ("x = f()  # type: ignore", True), ("x = f()  # type: ignore[arg-type]", True),
    ("x = f()  # type: ignore[arg-type]  # megatron sets it at runtime", False),
])
def test_bare_ignore_pattern(line: str, bad: bool) -> None:
    assert bool(BARE_IGNORE.search(line)) is bad


def _mentioned_paths(text: str) -> set[str]:
    """Relative paths in running text, links and code spans; templates (`results/<run>/`) and globs are not."""
    return {m.group(1) for m in PATH.finditer(text)
            if not re.match(r"[<{*]", text[m.end(1):m.end(1) + 1] or " ")}


def test_paths_in_readme_and_design_notes_exist() -> None:
    missing = [f"{doc.name}: {p}" for doc in DOCS for p in sorted(_mentioned_paths(doc.read_text(encoding="utf-8")))
               if not (REPO / p).exists() and p not in WRITTEN_BY_RUNS]
    assert missing == []
    assert "harness/core/models.py" in _mentioned_paths((REPO / "docs" / "design.md").read_text(encoding="utf-8"))


def test_path_pattern_skips_templates() -> None:
    assert _mentioned_paths("see `results/<run>/report.md`, [x](results/quickstart-report.png) and "
                            "harness/core/plan.py.") == {"results/quickstart-report.png", "harness/core/plan.py"}


def _code_map_rows() -> list[tuple[str, str]]:
    """(package cell, whole row) of each row of the README's code map table."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Code map\n", 1)[1].split("\n## ", 1)[0]
    return [(line.split("|")[2], line) for line in section.splitlines()
            if line.startswith("| ") and "`harness/" in line.split("|")[2]]


def test_code_map_names_every_package_and_module() -> None:
    rows = _code_map_rows()
    unnamed = []
    for p in sorted((REPO / "harness").rglob("*.py")):
        rel = p.relative_to(REPO)
        if p.name == "__init__.py" and p.parent != REPO / "harness":
            if not any(f"`{rel.parent}/`" in cell for cell, _ in rows):
                unnamed.append(f"package {rel.parent}/")
            continue
        if p.name == "__init__.py" or any(f"`{rel}`" in cell for cell, _ in rows):
            continue
        homes = [row for cell, row in rows if f"`{rel.parent}/`" in cell]
        if not any(f"`{p.name}`" in row for row in homes):
            unnamed.append(str(rel))
    assert unnamed == []


def _readme_test_command() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("Run the tests", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    return [c.strip() for c in block.strip().split("&&")]


def test_ci_runs_the_readme_test_command_lint_first() -> None:
    steps = _readme_test_command()
    assert steps[1:3] == [".venv/bin/ruff check harness tests", ".venv/bin/mypy harness"]
    assert steps[-1].startswith(".venv/bin/python -m pytest")
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    at = [ci.index(s) for s in steps[1:]]  # the pip install is split in two there (torch pinned first)
    assert at == sorted(at)
    assert ci.index("set -euo pipefail") < at[0] < ci.index("set +e")
