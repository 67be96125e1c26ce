"""Alert and recording rules: promtool's own checks and unit tests, plus our conventions."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
RULES = ROOT / "dashboards" / "koodrive-rules.yaml"
RULE_TESTS = ROOT / "dashboards" / "koodrive-rules.test.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
ALERTS = {
    "KooDriveSpaceAlmostFull",
    "KooDriveSpaceFillingUp",
    "KooDriveSeatsAlmostExhausted",
    "KooDriveMetricsStale",
    "KooDriveAuthFailing",
    "KooDriveClockSkew",
    "KooDriveConfigReloadFailed",
    "KooDriveExporterDown",
    "KooDriveExporterAbsent",
}


def rules() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_check_rules(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 16 rules found" in result.stdout


def test_promtool_test_rules(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        cwd=RULE_TESTS.parent,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_conventions() -> None:
    alerts = [rule for rule in rules() if "alert" in rule]
    assert {rule["alert"] for rule in alerts} == ALERTS
    for rule in alerts:
        assert re.fullmatch(r"KooDrive[A-Z][A-Za-z]+", str(rule["alert"]))
        assert rule["labels"]["severity"] in ("info", "warning", "critical")  # type: ignore[index]
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}  # type: ignore[arg-type]
        assert rule.get("for"), rule["alert"]
    severities = {
        (r["alert"], r["labels"]["severity"])  # type: ignore[index]
        for r in alerts
        if r["alert"] in ("KooDriveSpaceAlmostFull", "KooDriveSpaceFillingUp")
    }
    assert severities == {
        ("KooDriveSpaceAlmostFull", "warning"),
        ("KooDriveSpaceAlmostFull", "critical"),
        ("KooDriveSpaceFillingUp", "warning"),
        ("KooDriveSpaceFillingUp", "info"),
    }


def test_every_alert_links_its_section_of_the_runbook() -> None:
    """One runbook section per alert, and each alert's runbook_url lands on its own (GitHub
    anchors: the heading in lower case)."""
    headings = re.findall(r"^## (\S+)$", RUNBOOK.read_text(encoding="utf-8"), re.MULTILINE)
    assert sorted(headings) == sorted(ALERTS)
    for rule in (rule for rule in rules() if "alert" in rule):
        url = rule["annotations"]["runbook_url"]  # type: ignore[index]
        base, _, anchor = str(url).partition("#")
        assert base.endswith("/blob/main/" + RUNBOOK.relative_to(ROOT).as_posix()), url
        assert anchor == str(rule["alert"]).lower()


@pytest.mark.parametrize(
    ("old", "new", "failure"),
    [
        (
            "timestamp(koodrive_collector_last_success_timestamp_seconds)",
            "time()",
            'account="fast"',
        ),
        (
            "> on (job, instance, account, collector) koodrive_collector_stale_after_seconds\nor",
            "> 15 * 60\nor",
            "alertname: KooDriveMetricsStale, time: 25m",
        ),
    ],
    ids=["age at evaluation", "fixed 15 minutes"],
)
def test_stale_cases_refuse_what_went_wrong_before(
    promtool: str, tmp_path: Path, old: str, new: str, failure: str
) -> None:
    """The stale cases are not decoration: with the fixed 15 minutes the alert once had, the
    30-minute case fails where a healthy collector waits for its next poll; with the age
    taken at evaluation rather than at the scrape, the 1-second collector scraped every
    61 seconds fails."""
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    for rule in groups[0]["rules"]:
        if rule.get("alert") == "KooDriveMetricsStale":
            assert old in rule["expr"]
            rule["expr"] = rule["expr"].replace(old, new, 1)
    (tmp_path / RULES.name).write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text(encoding="utf-8"))
    result = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1
    assert failure in result.stdout + result.stderr
