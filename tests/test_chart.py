"""The chart as a release ships it: packaged, unpacked elsewhere, rendered; its refusals; its
alert values; and the files scripts/generate.py makes (rules, dashboard copy, values table).

test_helm.py lints and validates what the chart renders; this file is about the chart
standing alone and being configured without editing it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).parent.parent
CHART = ROOT / "helm" / "koodrive-exporter"
GENERATE = ROOT / "scripts" / "generate.py"
RULES = ROOT / "dashboards" / "koodrive-rules.yaml"
DASHBOARD = ROOT / "dashboards" / "koodrive.json"
ACCOUNT = {"name": "acme", "user_id": "1", "auth": {"token_file": "secrets/acme-token"}}
OPERATOR_ON = {
    "config": {"accounts": [ACCOUNT]},
    "existingSecret": "koodrive-credentials",
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
}

sys.path.insert(0, str(GENERATE.parent))
import generate  # noqa: E402  (a script, not a package: imported from its directory)


def render(values: dict[str, Any], chart: helm.Chart | None = None) -> dict[str, Any]:
    """kind/name -> manifest."""
    chart = chart or helm.Chart.load(str(CHART))
    rendered = chart.render(values, name="kx", namespace="monitoring", is_install=True)
    return {
        f"{doc['kind']}/{doc['metadata']['name']}": doc
        for path, text in rendered.items()
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    }


def rule_groups(values: dict[str, Any]) -> list[dict[str, Any]]:
    manifests = render({**OPERATOR_ON, "prometheusRule": values})
    return manifests["PrometheusRule/kx-koodrive-exporter"]["spec"]["groups"]  # type: ignore[no-any-return]


def test_generated_files_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATE), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (
        f"run `.venv/bin/python {GENERATE.relative_to(ROOT)}`\n{result.stdout}{result.stderr}"
    )


def test_packaged_chart_renders_outside_the_repository(tmp_path: Path) -> None:
    archive = Path(helm.package(str(CHART), destination=str(tmp_path / "dist")))
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        assert not [m.name for m in members if m.issym() or m.islnk()]
        assert "koodrive-exporter/files/koodrive.json" in {m.name for m in members}
        assert "/".join((CHART.name, "README.md")) in {m.name for m in members}
        tar.extractall(tmp_path / "elsewhere", filter="data")
    for chart in (
        helm.Chart.load(str(tmp_path / "elsewhere" / "koodrive-exporter")),
        helm.Chart.load_archive(archive.read_bytes()),
    ):
        manifests = render(OPERATOR_ON, chart)
        configmap = manifests["ConfigMap/kx-koodrive-exporter-dashboard"]
        assert json.loads(configmap["data"]["koodrive.json"]) == json.loads(DASHBOARD.read_text())
        rule = manifests["PrometheusRule/kx-koodrive-exporter"]
        assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "config.accounts is empty: add the KooDrive accounts to poll"),
        ({"demo": True, "config": {"accounts": [ACCOUNT]}}, "set one of them, not both"),
        (
            {**OPERATOR_ON, "prometheusRule": {"enabled": False}},
            "grafanaDashboard.enabled needs prometheusRule.enabled",
        ),
    ],
    ids=["no accounts, no demo", "demo and accounts", "dashboard without rules"],
)
def test_refuses_to_render_what_would_mislead(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(values)


def test_alert_values_change_the_rules(promtool: str, tmp_path: Path) -> None:
    """Thresholds, `for`, a dropped severity, a disabled alert, extra labels and annotations
    and an extra rule all reach the PrometheusRule, which promtool accepts and which fires
    at the new threshold."""
    values = {
        "enabled": True,
        "jobMatcher": 'job="kx-koodrive-exporter"',
        "additionalLabels": {"team": "storage"},
        "additionalAnnotations": {"dashboard": "https://grafana.example/d/koodrive"},
        "alerts": {
            "KooDriveSpaceAlmostFull": {
                "warning": {"threshold": 0.5, "for": "1m"},
                "critical": None,
            },
            "KooDriveMetricsStale": {"warning": None, "critical": {"for": "30m"}},
        },
        "disabled": {"KooDriveClockSkew": True},
        "additionalRules": [{"alert": "KooDriveCustom", "expr": "vector(1)", "for": "1m"}],
    }
    (group,) = rule_groups(values)
    alerts = {
        (r["alert"], r.get("labels", {}).get("severity")): r for r in group["rules"] if "alert" in r
    }
    assert ("KooDriveSpaceAlmostFull", "critical") not in alerts
    assert not [key for key in alerts if key[0] == "KooDriveClockSkew"]
    assert ("KooDriveCustom", None) in alerts
    full = alerts[("KooDriveSpaceAlmostFull", "warning")]
    assert full["expr"] == "account:koodrive_space_utilization:ratio > 0.5"
    assert full["labels"] == {"severity": "warning", "team": "storage"}
    assert full["annotations"]["dashboard"] == "https://grafana.example/d/koodrive"
    assert alerts[("KooDriveMetricsStale", "critical")]["for"] == "30m"
    down = alerts[("KooDriveExporterDown", "warning")]
    assert down["expr"] == 'up{job="kx-koodrive-exporter"} == 0'
    # FillingUp no longer leaves out "critically full" accounts: there is no critical level.
    filling = alerts[("KooDriveSpaceFillingUp", "warning")]
    assert "utilization" not in filling["expr"]

    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": [group]}), encoding="utf-8")
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": 'koodrive_space_used_bytes{account="a"}', "values": "60x10"},
                    {"series": 'koodrive_space_capacity_bytes{account="a"}', "values": "100x10"},
                ],
                "alert_rule_test": [
                    {
                        "alertname": "KooDriveSpaceAlmostFull",
                        "eval_time": "5m",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "team": "storage",
                                    "account": "a",
                                },
                                "exp_annotations": full["annotations"]
                                | {
                                    "summary": "KooDrive space of a is 60% used.",
                                    "description": full["annotations"]["description"].replace(
                                        "{{ $labels.account }}", "a"
                                    ),
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "rules.test.yaml").write_text(yaml.safe_dump(tests), encoding="utf-8")
    for command in (["check", "rules", "rules.yaml"], ["test", "rules", "rules.test.yaml"]):
        result = subprocess.run(
            [promtool, *command], capture_output=True, text=True, cwd=tmp_path, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "values",
    [
        {"alerts": {"KooDriveSpaceAlmostFull": {"warning": {"threshold": "high", "for": "1m"}}}},
        # a new severity has no default to merge with
        {"alerts": {"KooDriveSeatsAlmostExhausted": {"critical": {"for": "1m"}}}},
        {
            "alerts": {
                "KooDriveSpaceFillingUp": {"warning": {"hours": 24, "trend": "6 h", "for": "1h"}}
            }
        },
        {"alerts": {"KooDriveMetricsStale": {"warning": {"for": "1m", "treshold": 1}}}},
        {"alerts": {"KooDriveDiskFull": {"warning": {"for": "1m"}}}},
        {"disabled": {"KooDriveClockSkw": True}},
    ],
    ids=[
        "threshold not a number",
        "threshold missing",
        "bad trend",
        "typo",
        "unknown alert",
        "typo in disabled",
    ],
)
def test_schema_refuses_broken_alert_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        rule_groups({"enabled": True, **values})


def test_values_table_shows_every_key_with_a_description() -> None:
    """Every key of values.yaml has a row; every row says something, itself or through the
    block it belongs to."""
    text = (CHART / "values.yaml").read_text(encoding="utf-8")
    rows = generate.values_rows(text)
    paths = {path for path, _, _ in rows}
    for leaf in generate.leaf_paths(yaml.safe_load(text)):  # itself, or its flow mapping
        parts = leaf.split(".")
        assert {".".join(parts[:n]) for n in range(1, len(parts) + 1)} & paths, leaf
    described = {path for path, _, description in rows if description}
    for path, _, _ in rows:
        parts = path.split(".")
        ancestors = {".".join(parts[:n]) for n in range(1, len(parts) + 1)}
        assert ancestors & described, f"{path}: no comment on it or on a block around it"
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    assert "| `prometheusRule.alerts.KooDriveSpaceAlmostFull.warning` |" in readme


def test_values_rows_attach_comments_to_the_key_below() -> None:
    text = (
        "# header\n\n"
        "# The block.\n"
        "a:\n"
        "  # Leaf one.\n"
        "  b: 1\n"
        "  c: {x: 1}\n"
        "  # example: not c's, not d's\n\n"
        "d: []\n"
    )
    assert generate.values_rows(text) == [
        ("a", "", "The block."),
        ("a.b", "1", "Leaf one."),
        ("a.c", "{x: 1}", ""),
        ("d", "[]", ""),
    ]
