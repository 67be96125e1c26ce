"""Release artifacts: the licence, the changelog, and the sdist and wheel a release uploads.

The distributions are built the way a release would build them (`python -m build`, in an
isolated build environment with setuptools from PyPI) and checked the way PyPI would
(`twine check --strict`, known trove classifiers), so packaging mistakes fail here rather
than at upload time. The wheel must hold the package and nothing else: tests and
benchmarks belong to the repository, not to an installation.
"""

from __future__ import annotations

import email.parser
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
import trove_classifiers
from support import ROOT

import exporter

VERSION = exporter.__version__
NAME = "koodrive_exporter"
REPO_URL = "https://github.com/koodrive-exporter/koodrive-exporter"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# Keep a Changelog's own categories, in its order; nothing else may head a change list.
CHANGE_KINDS = ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security")


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """One sdist and one wheel for the module; building takes seconds, not milliseconds.

    Without --sdist/--wheel, build makes the sdist and then the wheel from the unpacked
    sdist, as a downstream packager would: a file missing from the sdist fails the wheel.
    """
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Dists(sdist, wheel)


def wheel_metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(f"{NAME}-{VERSION}.dist-info/METADATA").decode("utf-8")
    return email.parser.Parser().parsestr(text)


def test_distributions_are_named_for_the_one_version(dists: Dists) -> None:
    assert dists.sdist.name == f"{NAME}-{VERSION}.tar.gz"
    assert dists.wheel.name == f"{NAME}-{VERSION}-py3-none-any.whl"


def test_twine_check_passes(dists: Dists) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(dists.sdist), str(dists.wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_wheel_holds_the_package_and_nothing_else(dists: Dists) -> None:
    """Every module of the package, its dist-info, and no tests, benchmarks or caches."""
    with zipfile.ZipFile(dists.wheel) as archive:
        names = set(archive.namelist())
    dist_info = f"{NAME}-{VERSION}.dist-info/"
    package = {n for n in names if n.startswith("exporter/")}
    assert names - package == {
        dist_info + "METADATA",
        dist_info + "WHEEL",
        dist_info + "RECORD",
        dist_info + "entry_points.txt",
        dist_info + "top_level.txt",
        dist_info + "licenses/LICENSE",
    }
    modules = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "exporter").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert package == modules
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]


PY3 = "Programming Language :: Python :: 3."


def test_wheel_metadata(dists: Dists) -> None:
    metadata = wheel_metadata(dists.wheel)
    assert metadata["Name"] == "koodrive-exporter"
    assert metadata["Version"] == VERSION
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    # Exactly what scripts/test runs: every 3.x classifier, and nothing past the newest.
    assert set(metadata["Requires-Python"].split(",")) == {">=3.11", "<3.14"}
    minors = [c.rsplit(".", 1)[1] for c in PROJECT["classifiers"] if c.startswith(PY3)]
    assert minors == ["11", "12", "13"]
    assert metadata.get_all("Classifier") == PROJECT["classifiers"]
    assert metadata["Keywords"].split(",") == PROJECT["keywords"]
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL"))
    assert urls == PROJECT["urls"]
    assert urls["Source"] == REPO_URL
    assert all(url.startswith(REPO_URL) for url in urls.values()), urls
    assert metadata["Description-Content-Type"] == "text/markdown"
    with zipfile.ZipFile(dists.wheel) as archive:
        entry_points = archive.read(f"{NAME}-{VERSION}.dist-info/entry_points.txt").decode()
    assert "koodrive-exporter = exporter.__main__:main" in entry_points


def test_sdist_carries_the_licence(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "README.md", "pyproject.toml", "exporter/__init__.py"} <= names
    assert not [n for n in names if n.startswith("bench/")]


def test_classifiers_are_known_to_pypi() -> None:
    """PyPI refuses an upload with an unknown classifier; find out here instead."""
    unknown = [c for c in PROJECT["classifiers"] if c not in trove_classifiers.classifiers]
    assert unknown == []
    assert "License :: " not in " ".join(PROJECT["classifiers"])  # PEP 639: the expression


def test_license_is_the_full_apache_2_text() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert PROJECT["license"] == "Apache-2.0"
    assert "Apache License\n                           Version 2.0, January 2004" in text
    # All nine sections of the terms, and the appendix on how to apply them.
    for number in range(1, 10):
        assert re.search(rf"^\s+{number}\. [A-Z]", text, re.MULTILINE), number
    assert "END OF TERMS AND CONDITIONS" in text
    assert "APPENDIX: How to apply the Apache License to your work." in text
    assert len(text.split()) > 1500


def check_changelog(text: str) -> None:
    """Keep a Changelog's form, as this project uses it (raises AssertionError)."""
    assert text.startswith("# Changelog\n")
    assert "[Keep a Changelog](https://keepachangelog.com/en/1.1.0/)" in text
    releases = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.MULTILINE)
    assert releases, "no release headings"
    assert all(name == "Unreleased" or date for name, date in releases), releases
    # The first release heading is the coming version, or the current one once released.
    assert releases[0][0] in {"Unreleased", VERSION}
    # Before any dated release, [Unreleased] says which version the first release will be;
    # once one is out, [Unreleased] above it collects the next changes and needs no such note.
    if not any(date for _, date in releases):
        assert f"first release, {VERSION}" in text
    assert set(re.findall(r"^### (.+)$", text, re.MULTILINE)) <= set(CHANGE_KINDS)
    # Every release heading has its link reference at the bottom.
    for name, _ in releases:
        assert re.search(rf"^\[{re.escape(name)}\]: https://\S+$", text, re.MULTILINE), name
    assert all(len(line) <= 100 for line in text.splitlines())


def test_changelog_keeps_a_changelog() -> None:
    check_changelog((ROOT / "CHANGELOG.md").read_text(encoding="utf-8"))


def changelog(*headings: str, note: str = "") -> str:
    """A minimal changelog with these release headings, each with a link reference."""
    head = "# Changelog\n\n[Keep a Changelog](https://keepachangelog.com/en/1.1.0/)\n\n"
    body = "".join(f"## {h}\n\n{note}### Added\n\n- Something.\n\n" for h in headings)
    links = "".join(
        f"[{h.split(']')[0][1:]}]: https://example.com/{h.split(']')[0][1:]}\n" for h in headings
    )
    return head + body + links


def test_changelog_asks_for_the_first_release_note_only_before_a_release() -> None:
    # After the first release: [Unreleased] collects the next changes, no note needed.
    check_changelog(changelog("[Unreleased]", f"[{VERSION}] - 2026-01-31"))
    check_changelog(changelog(f"[{VERSION}] - 2026-01-31"))
    # Before it: [Unreleased] must say which version it becomes.
    check_changelog(changelog("[Unreleased]", note=f"The first release, {VERSION}.\n\n"))
    with pytest.raises(AssertionError):
        check_changelog(changelog("[Unreleased]"))
