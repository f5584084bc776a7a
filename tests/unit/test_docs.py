"""The user's documentation holds together: a short README whose test command is what CI runs,
and links between the pages that lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# pages other work writes (docs/using-the-model.md: export and verify); linked from here
# already, and checked like any other once they exist
WRITTEN_ELSEWHERE = {REPO / "docs" / "using-the-model.md"}
LINK = re.compile(r"\]\(([^)\s]+)\)")
# `tests/x.py::test_name`, or `::test_name` for another test of the file named last on the line
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)?::(\w+)`")


def test_the_readme_is_short_and_its_test_command_is_what_ci_runs() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    assert "./scripts/test" in readme
    assert "./scripts/quickstart" in readme
    tests = readme[readme.index("## Run the tests") :]
    command = tests[tests.index("```sh\n") + 6 :].split("\n", 1)[0]
    assert command == "./scripts/test"
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == command  # CI runs the README's test command, last, as written
    script = (REPO / "scripts" / "test").read_text(encoding="utf-8").strip().splitlines()
    assert script[-1] == 'python -m pytest "$@"'  # ... which ends in the whole suite
    # the CPU-torch hint comes before the command it is about
    assert readme.index("download.pytorch.org/whl/cpu") < readme.index("pip install .\n")


def test_every_relative_link_leads_to_a_file_or_a_heading() -> None:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in LINK.findall(text):
            if "://" in target or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if dest in WRITTEN_ELSEWHERE and not dest.exists():
                continue
            assert dest.exists(), f"{page.name}: {target} leads nowhere"
            if anchor and dest.suffix == ".md":
                assert anchor in _anchors(dest), f"{page.name}: no heading #{anchor} in {dest.name}"


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, spaces to -, punctuation dropped."""
    out = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_every_test_the_security_page_names_exists() -> None:
    """docs/security.md says which test shows each row: each one it names is a test."""
    named = 0
    for line in (REPO / "docs" / "security.md").read_text(encoding="utf-8").splitlines():
        last = None
        for path, name in TEST_REF.findall(line):
            last = path or last
            assert last is not None, f"security.md: ::{name} names no file"
            source = (REPO / last).read_text(encoding="utf-8")
            assert re.search(rf"^(async )?def {name}\(", source, re.M), f"no {last}::{name}"
            named += 1
    assert named >= 20
