"""The repository explains itself: what it cites exists, and the version is stated once.

Code, tests and the README cite Markdown files (the API notes, the design notes) and
numbered sections of them. A citation that points outside the repository, or at a section
that was renumbered away, sends a reader nowhere, so every one must resolve here.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Where citations are looked for: the package, the tests, the benchmarks, the docs, the
# changelog and README.
SCANNED_DIRS = ("exporter", "tests", "bench", "docs")
SCANNED_FILES = ("CHANGELOG.md", "README.md")
SKIPPED_PARTS = {"__pycache__", "node_modules"}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".txt", ".toml", ".json", ""}

URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+")
MD_PATH = re.compile(r"(?<![\w/.-])((?:\.\.?/)?[\w./-]*\w\.md)\b")
NUMBER = r"\d+(?:\.\d+)*"
# `koodrive-api.md section 4.3`, `design.md sections 2 and 4`; inside docs/, a bare
# `section 2.2` means the file's own section (elsewhere it may be an RFC's).
SECTION_REF = re.compile(
    rf"(?:\b([\w-]+\.md)`?\)?,?\s+)?\b(?:its\s+)?sections?\s+"
    rf"({NUMBER}(?:(?:,\s*|\s+and\s+|\s+or\s+){NUMBER})*)\b"
)
# Sections by name: `(see "Resilience")` (a heading of the README or of any file in docs/),
# `docs/reference.md's "Logging"` or `the README's "Kubernetes (Helm)"` (one of that file's).
NAMED_SECTION_REF = re.compile(r'(?:\bsee |(README|[\w-]+\.md)`?(?:\'s)?\s)"([A-Z][^"]{2,40})"')
NAMED_HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)
HEADING = re.compile(rf"^#{{1,6}}\s+({NUMBER})\.?\s", re.MULTILINE)
# A comment wrapped over lines reads as one line once the markers are gone.
COMMENT_BREAK = re.compile(r"\s*\n\s*(?:#+\s*)?")


def scanned() -> list[Path]:
    files = [ROOT / name for name in SCANNED_FILES]
    for directory in SCANNED_DIRS:
        for path in sorted((ROOT / directory).rglob("*")):
            if (
                path.is_file()
                and path.suffix in TEXT_SUFFIXES
                and not SKIPPED_PARTS & set(path.parts)
            ):
                files.append(path)
    return files


def text_of(path: Path) -> str:
    """The file as one line of prose, URLs removed (a URL's `.md` is not ours to check)."""
    return URL.sub(" ", COMMENT_BREAK.sub(" ", path.read_text(encoding="utf-8")))


def resolve(name: str, cited_in: Path) -> Path | None:
    """A cited Markdown path, relative to the repo root, docs/ or the citing file."""
    for base in (ROOT, DOCS, cited_in.parent):
        candidate = (base / name).resolve()
        if candidate.is_file() and candidate.is_relative_to(ROOT):
            return candidate
    return None


def citations() -> list[tuple[Path, str]]:
    found = []
    for path in scanned():
        for match in MD_PATH.finditer(text_of(path)):
            found.append((path, match[1]))
    return found


def section_citations() -> list[tuple[Path, str, str]]:
    """(citing file, cited file, section number); the cited file may be the citing one."""
    found = []
    for path in scanned():
        text = text_of(path)
        for match in SECTION_REF.finditer(text):
            name = match[1]
            if name is None:
                # "its section N" continues the previous citation in the same sentence.
                before = list(MD_PATH.finditer(text, 0, match.start()))
                if "its" in match[0].split() and before:
                    name = before[-1][1]
                elif path.parent == DOCS:
                    name = path.name
                else:
                    continue
            for number in re.findall(NUMBER, match[2]):
                found.append((path, name, number))
    return found


def test_the_citations_are_found() -> None:
    """Guards the scanner itself: the known citations must turn up."""
    cited = {(path.relative_to(ROOT).as_posix(), name) for path, name in citations()}
    assert ("exporter/upstream/signing.py", "docs/koodrive-api.md") in cited
    sections = {(p.relative_to(ROOT).as_posix(), n) for p, _, n in section_citations()}
    assert ("exporter/upstream/signing.py", "4.3") in sections
    assert ("exporter/sim/simulator.py", "2") in sections
    assert ("exporter/sim/simulator.py", "4") in sections
    named = {
        (path.relative_to(ROOT).as_posix(), *found)
        for path in scanned()
        for found in NAMED_SECTION_REF.findall(text_of(path))
    }
    assert ("docs/design.md", "development.md", "The test suite") in named
    assert ("exporter/core/config.py", "reference.md", "Configuration reference") in named


def test_every_cited_markdown_file_exists() -> None:
    missing = [
        f"{path.relative_to(ROOT)}: {name}"
        for path, name in citations()
        if resolve(name, path) is None
    ]
    assert not missing, "cited Markdown files not in the repository:\n" + "\n".join(missing)


def test_every_cited_section_exists() -> None:
    missing = []
    for path, name, number in section_citations():
        target = resolve(name, path)
        if target is None:
            missing.append(f"{path.relative_to(ROOT)}: {name} (no such file)")
            continue
        headings = set(HEADING.findall(target.read_text(encoding="utf-8")))
        if number not in headings:
            missing.append(f"{path.relative_to(ROOT)}: {name} section {number}")
    assert not missing, "cited sections with no such heading:\n" + "\n".join(missing)


def test_every_cited_named_section_exists() -> None:
    documents = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    headings = {
        path.name: set(NAMED_HEADING.findall(path.read_text("utf-8"))) for path in documents
    }
    anywhere = set().union(*headings.values())
    missing = []
    for path in scanned():
        for name, title in NAMED_SECTION_REF.findall(text_of(path)):
            document = {"": None, "README": "README.md"}.get(name, name)
            if title not in (anywhere if document is None else headings.get(document, set())):
                missing.append(f"{path.relative_to(ROOT)}: {document or 'docs'} {title!r}")
    assert not missing, "cited sections with no such heading:\n" + "\n".join(missing)


@pytest.mark.parametrize("name", ["koodrive-api.md", "design.md"])
def test_docs_sections_are_numbered_without_gaps(name: str) -> None:
    """Citations use the numbers, so each top-level section must have one, in order."""
    text = (DOCS / name).read_text(encoding="utf-8")
    top = re.findall(r"^## (.*)$", text, re.MULTILINE)
    numbers = [int(title.split(".", 1)[0]) for title in top if title[:1].isdigit()]
    assert numbers == list(range(1, len(top) + 1)), top


def package_version() -> str:
    tree = ast.parse((ROOT / "exporter" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__version__" for target in node.targets
        ):
            assert isinstance(node.value, ast.Constant)
            return str(node.value.value)
    raise AssertionError("exporter/__init__.py states no __version__")


def test_version_is_stated_once() -> None:
    """exporter.__version__ is the version; everything else reads or repeats it."""
    version = package_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:[-+.][0-9A-Za-z.-]+)?", version), version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "exporter.__version__"}

    chart = yaml.safe_load((ROOT / "helm/koodrive-exporter/Chart.yaml").read_text("utf-8"))
    assert str(chart["version"]) == version
    assert str(chart["appVersion"]) == version

    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    labels = re.findall(r"^ARG VERSION=(\S+)$", dockerfile, re.MULTILINE)
    assert labels == [version]
    assert 'org.opencontainers.image.version="${VERSION}"' in dockerfile


def test_the_readme_is_short_and_reaches_every_document() -> None:
    """The README is what a newcomer reads; the rest lives in docs/, each file linked from it."""
    readme = (ROOT / "README.md").read_text("utf-8")
    assert len(readme.encode()) <= 25_000
    linked = set(re.findall(r"\]\((docs/[\w.-]+)\)", readme))
    documents = {path.relative_to(ROOT).as_posix() for path in DOCS.glob("*.md")}
    assert documents <= linked, sorted(documents - linked)
