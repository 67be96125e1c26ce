"""Alert and recording rules: promtool's own checks and unit tests, plus our conventions."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).parent.parent
RULES = ROOT / "dashboards" / "koodrive-rules.yaml"
RULE_TESTS = ROOT / "dashboards" / "koodrive-rules.test.yaml"
ALERTS = {
    "KooDriveSpaceAlmostFull",
    "KooDriveSpaceFillingUp",
    "KooDriveExporterDown",
    "KooDriveMetricsStale",
    "KooDriveAuthFailing",
    "KooDriveClockSkew",
    "KooDriveSeatsAlmostExhausted",
    "KooDriveCollectorFailing",
}


def rules() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_check_rules(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 14 rules found" in result.stdout


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
        assert rule["labels"]["severity"] in ("warning", "critical")  # type: ignore[index]
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description"}  # type: ignore[arg-type]
        assert rule.get("for"), rule["alert"]
    severities = {
        r["labels"]["severity"] for r in alerts if r["alert"] == "KooDriveSpaceAlmostFull"
    }  # type: ignore[index]
    assert severities == {"warning", "critical"}


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    fires, quiet = set(), set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fires == ALERTS
    assert quiet == ALERTS


def test_the_readmes_prometheus_config_is_valid_and_matches_the_alerts(
    promtool: str, tmp_path: Path
) -> None:
    """The README's scrape config, with its rule file pointed at ours: promtool accepts it,
    and its job name is one the exporter-down alert watches."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Prometheus\n", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = yaml.safe_load(block)
    config["rule_files"] = [str(RULES)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    down = next(rule for rule in rules() if rule.get("alert") == "KooDriveExporterDown")
    job = re.search(r'job=~"([^"]+)"', str(down["expr"]))
    assert job is not None
    assert all(re.fullmatch(job[1], scrape["job_name"]) for scrape in config["scrape_configs"])
