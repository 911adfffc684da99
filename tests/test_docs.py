"""The README and docs/: short enough to read, every link resolves, every make target listed."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """The anchor MkDocs (and GitHub, for these headings) gives a heading."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[\s]+", "-", text).strip("-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", page.read_text(), flags=re.M)}


def local_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", t)]


def test_the_readme_is_at_most_200_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("page", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))])
def test_every_relative_link_resolves(page):
    path = ROOT / page if page == "README.md" else ROOT / "docs" / page
    broken = []
    for target in local_links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    assert not broken, f"{page}: broken links {broken}"


def make_targets() -> list[str]:
    text = (ROOT / "Makefile").read_text()
    return re.findall(r"^([a-zA-Z0-9_-]+):.*## ", text, flags=re.M)


def test_every_make_target_is_in_the_readme_table():
    table = (ROOT / "README.md").read_text().split("## Make targets", 1)[1].split("\n## ", 1)[0]
    missing = [
        t
        for t in make_targets()
        if t != "help" and not re.search(rf"make {re.escape(t)}\b|`-{t.split('-')[-1]}`", table)
    ]
    assert not missing, f"make targets missing from the README's table: {missing}"


def test_the_documentation_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs (a dev dependency) not installed")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_slug_matches_mkdocs_for_the_headings_used():
    assert slug("How much five folds can show") == "how-much-five-folds-can-show"
    assert slug("Does it replicate? (`make replicate`)") == "does-it-replicate-make-replicate"
