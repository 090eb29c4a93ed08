"""The repository stands alone: no file points outside it, and the docs' links resolve.

The architecture is docs/architecture.md; a clone has nothing beside it, so no tracked file
may name a sibling directory or a design file kept elsewhere.
"""
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Built from pieces so that this file does not contain what it looks for.
FORBIDDEN = ("../" + "shared", "DESIGN" + ".md")
# [text](target) and ![alt](target); the target ends at whitespace or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _repository_files() -> list[pathlib.Path]:
    """Tracked files plus new ones git does not ignore (what the next commit can hold)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    paths = {ROOT / p for p in out.decode().split("\0") if p}
    return sorted(p for p in paths if p.is_file())


def test_no_file_points_outside_the_repository():
    hits = []
    for path in _repository_files():
        text = path.read_bytes().decode("utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            hits += [f"{path.relative_to(ROOT)}:{n}: {word}" for word in FORBIDDEN
                     if word in line]
    assert not hits, "references outside the repository:\n" + "\n".join(hits)


def _docs() -> list[pathlib.Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_relative_links_in_readme_and_docs_resolve():
    broken = []
    for doc in _docs():
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            for target in LINK.findall(line):
                if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                    continue  # a URL (http:, mailto:) or an anchor on the same page
                path = (doc.parent / target.split("#")[0]).resolve()
                if ROOT not in path.parents or not path.exists():
                    broken.append(f"{doc.relative_to(ROOT)}:{n}: {target}")
    assert not broken, "broken or outside links:\n" + "\n".join(broken)


def test_link_pattern_finds_links():
    """The checker above sees plain, image and titled links (else it would pass vacuously)."""
    line = '[a](docs/a.md) ![b](docs/b.png) [c](https://x.org) [d](e.md#f "title")'
    assert LINK.findall(line) == ["docs/a.md", "docs/b.png", "https://x.org", "e.md#f"]
    assert any(LINK.findall(doc.read_text()) for doc in _docs())
