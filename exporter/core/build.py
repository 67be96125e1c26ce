"""What this build of the exporter is: version, revision, branch, who built it and when.

`--version` prints it in the layout of Prometheus' own binaries and
`koodrive_exporter_build_info` carries it as labels, so a fleet's builds can be told apart.
A release build (the Dockerfile) writes the facts into `build_info.json` beside this module,
where the wheel carries them; a run from a source checkout has no such file and reads the
revision and branch from `.git` instead, and says `unknown` for what nobody recorded.
"""

from __future__ import annotations

import functools
import json
import platform
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from .files import read_regular_file

UNKNOWN = "unknown"
# What a build record may hold, each value a short string; anything else in it is ignored.
FIELDS = ("revision", "branch", "user", "date")
_MAX_FIELD = 100
# Read through read_regular_file, so a FIFO or a huge file cannot hang or bloat the start:
# a ref is 41 bytes and a build record a few hundred (its values are cut to _MAX_FIELD, so
# an oversized one is cut, not refused, up to the cap); packed-refs grows with a
# repository's tags and branches.
_REF = 4 * 1024
_RECORD = 4 * 1024 * 1024
_PACKED_REFS = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BuildInfo:
    version: str
    revision: str = UNKNOWN
    branch: str = UNKNOWN
    user: str = UNKNOWN
    date: str = UNKNOWN


@functools.cache
def build_info() -> BuildInfo:
    """Read once: the build cannot change under a running process."""
    here = Path(__file__).resolve().parent
    recorded = _recorded(here / "build_info.json")
    if recorded is None:
        recorded = _from_git(here.parent.parent)
    return BuildInfo(__version__, **recorded)


def version_text() -> str:
    info = build_info()
    return (
        f"koodrive-exporter, version {info.version} "
        f"(branch: {info.branch}, revision: {info.revision})\n"
        f"  build user:       {info.user}\n"
        f"  build date:       {info.date}\n"
        f"  python version:   {platform.python_implementation()} {platform.python_version()}\n"
        f"  platform:         {platform.system().lower()}/{platform.machine()}"
    )


def _clean(value: object) -> str:
    text = str(value)[:_MAX_FIELD]
    return text if text.isprintable() and text.strip() else UNKNOWN


def _recorded(path: Path) -> dict[str, str] | None:
    try:
        data = json.loads(read_regular_file(path, _RECORD).decode("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {key: _clean(data[key]) for key in FIELDS if key in data}


def _from_git(root: Path) -> dict[str, str]:
    """Revision and branch of a source checkout, read from `.git` as git stores them (no
    process is started); nothing when it is not a plain checkout."""
    git = root / ".git"
    try:
        head = _text(git / "HEAD", _REF)
        if not head.startswith("ref: "):
            return {"revision": _clean(head), "branch": "HEAD"}  # detached
        ref = head.removeprefix("ref: ")
        if not ref.startswith("refs/") or ".." in ref.split("/"):
            return {}  # not a ref git would write: nothing outside .git is read
        found = {"branch": _clean(ref.removeprefix("refs/heads/"))}
        loose = git / ref
        if loose.is_file():
            return {**found, "revision": _clean(_text(loose, _REF))}
        for line in _text(git / "packed-refs", _PACKED_REFS).splitlines():
            if line.endswith(f" {ref}"):
                return {**found, "revision": _clean(line.split(" ", 1)[0])}
        return found
    except (OSError, ValueError):
        return {}


def _text(path: Path, limit: int) -> str:
    return read_regular_file(path, limit).decode("utf-8").strip()
