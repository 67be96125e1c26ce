"""The Grafana dashboard: Grafana's published schema, units, descriptions, known metrics."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import (
    DASHBOARD,
    DOC_SUBSCRIPTION,
    ROOT,
    RULES,
    dashboard_exprs,
    panels,
    run_tsc,
    samples,
)

from exporter.core.endpoints import QUOTA_TIERS, SUBSCRIPTION
from exporter.core.exposition import Exposition
from exporter.core.model import Reason, Snapshot, UsageBytes
from exporter.core.settings import AccountConfig, Secret, SecretRef, TokenAuth
from exporter.core.state import ExporterState
from exporter.sim.demo import DEMO_COLLECTORS

SCHEMA_CHECK = ROOT / "dashboards" / "schema-check"
METRIC = re.compile(r"\b(?:account:)?koodrive_[a-z0-9_]+(?::[a-z0-9_]+)?")

TS_CHECK = """import type { Dashboard } from '@grafana/schema';
// JSON spells the schema's string enums (ThresholdsMode, MappingType, ...) as their values.
type Json<T> = T extends string
  ? string extends T ? T : `${T}`
  : T extends ReadonlyArray<infer U>
    ? Array<Json<U>>
    : T extends object
      ? { [K in keyof T]: Json<T[K]> }
      : T;
export const dashboard: Json<Dashboard> = """


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def exported_metric_names() -> set[str]:
    """Every sample name the exporter can emit, from a fully populated collector."""
    token = TokenAuth(token=SecretRef(key="token", value=Secret("t")))
    account = AccountConfig(name="a", user_id="1", auth=token)
    account = dataclasses.replace(account, collectors=DEMO_COLLECTORS)
    state = ExporterState([account], loaded_at=1.0)
    usage = UsageBytes(allocated=1, capacity=2, used=1)
    state.record(Snapshot("a", "overview", 1.0, 0.1, "t", result=usage))
    failed = Snapshot("a", "overview", 2.0, 0.1, "t", reason=Reason.AUTH, failures=(Reason.AUTH,))
    state.record(dataclasses.replace(failed, clock_skew=0.5))
    subscription = SUBSCRIPTION.parse(DOC_SUBSCRIPTION, 1024)
    state.record(Snapshot("a", "subscription", 1.0, 0.1, "t", result=subscription))
    tiers = QUOTA_TIERS.parse(
        [{"quota": "1", "totalAllocation": 1, "totalCapacity": 1, "totalUsed": 0}], 1
    )
    state.record(Snapshot("a", "quota_tiers", 1.0, 0.1, "t", result=tiers))
    text = Exposition(state, clock=lambda: 1.5).render().decode()
    return {name for name, _ in samples(text)}


def recorded_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def test_variables_datasource_job_account_and_top_n() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "account", "topn"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "account"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["query"]["query"].startswith("label_values(")
        assert variable["multi"] is True
        assert variable["includeAll"] is True
    assert variables["topn"]["type"] == "custom"
    assert variables["topn"]["current"]["value"] in variables["topn"]["query"].split(",")


def test_no_hard_coded_datasource_uid() -> None:
    dashboard = load_dashboard()
    refs = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                refs.append(node["datasource"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard["panels"])
    walk(dashboard["templating"])
    assert refs
    assert all(ref == {"type": "prometheus", "uid": "${datasource}"} for ref in refs), refs


def test_every_panel_has_unit_description_and_queries() -> None:
    for panel in panels(load_dashboard()):
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        assert len(panel.get("description", "")) > 20, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert "$job" in target["expr"], (panel["title"], target["expr"])


def test_expected_panels_and_units() -> None:
    by_title = {p["title"]: p for p in panels(load_dashboard())}
    units = {title: p["fieldConfig"]["defaults"]["unit"] for title, p in by_title.items()}
    assert units["Used"] == units["Capacity"] == units["Fleet used and capacity"] == "bytes"
    assert units["Fleet utilization"] == units["Utilization, top $topn"] == "percentunit"
    assert units["Full in, soonest $topn"] == "s"
    for title in ("Fleet utilization", "Utilization, top $topn", "Seats taken, top $topn"):
        steps = by_title[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [s["value"] for s in steps] == [None, 0.8, 0.9]
    full_in = by_title["Full in, soonest $topn"]["fieldConfig"]["defaults"]["thresholds"]
    assert [(s["value"], s["color"]) for s in full_in["steps"]] == [
        (None, "red"), (86400, "yellow"), (604800, "green")
    ]  # fmt: skip
    for title in ("Accounts down and stale collectors", "Poll errors by reason",
                  "Poll duration", "Clock skew", "Config reload"):  # fmt: skip
        assert title in by_title


def test_the_accounts_table_has_a_row_per_account_with_thresholds() -> None:
    table = next(p for p in panels(load_dashboard()) if p["title"] == "Accounts")
    assert table["type"] == "table"
    assert all(t["instant"] and t["format"] == "table" for t in table["targets"])
    # One row per account: `merge` joins on every shared column, so none may differ (such
    # as __name__, which a raw selector or a recording rule returns).
    assert all(t["expr"].startswith("max by (job, instance, account) (") for t in table["targets"])
    assert [t["id"] for t in table["transformations"]] == ["merge", "organize"]
    columns = {}
    for override in table["fieldConfig"]["overrides"]:
        properties = {p["id"]: p["value"] for p in override["properties"]}
        ref = override["matcher"]["options"].removeprefix("Value #")
        assert ref in {t["refId"] for t in table["targets"]}
        columns[properties["displayName"]] = properties
    assert list(columns) == [
        "Used", "Capacity", "Utilization", "Growth per day", "Full in (forecast)", "Up"
    ]  # fmt: skip
    assert columns["Used"]["unit"] == columns["Capacity"]["unit"] == "bytes"
    utilization = columns["Utilization"]["thresholds"]["steps"]
    assert [s["value"] for s in utilization] == [None, 0.8, 0.9]
    assert columns["Full in (forecast)"]["custom.cellOptions"]["type"] == "color-background"
    assert table["options"]["sortBy"] == [{"displayName": "Utilization", "desc": True}]


BOUNDED = re.compile(r"^(?:count|sum|max|min|topk|bottomk|histogram_quantile)\b|\band topk\(")


def test_no_panel_draws_one_series_per_account() -> None:
    """At 10,000 accounts a panel with a line or a stat per account is unusable: every
    query that selects accounts is an aggregation or a top N, except the one table."""
    for panel in panels(load_dashboard()):
        if panel["type"] == "table":
            continue
        for target in panel["targets"]:
            expr = target["expr"]
            if "$account" in expr:
                assert BOUNDED.search(expr), (panel["title"], expr)


def test_panels_that_read_recording_rules_say_so() -> None:
    recorded = recorded_names()
    for panel in panels(load_dashboard()):
        uses = {name for t in panel["targets"] for name in METRIC.findall(t["expr"])}
        if uses & recorded:
            assert "recording rules" in panel["description"], panel["title"]


def test_every_metric_used_is_exported_or_recorded() -> None:
    known = exported_metric_names() | recorded_names()
    used = {m for expr in dashboard_exprs(load_dashboard()) for m in METRIC.findall(expr)}
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    used |= {m for g in rules for r in g["rules"] for m in METRIC.findall(r["expr"])}
    assert used
    assert used <= known, used - known


def test_metric_check_catches_an_unknown_metric() -> None:
    known = exported_metric_names() | recorded_names()
    assert "koodrive_space_free_bytes" not in known
    assert "koodrive_space_used_bytes" in known
    assert "koodrive_poll_duration_seconds_bucket" in known


def check_dashboard(tmp_path: Path, dashboard_text: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "check.ts").write_text(TS_CHECK + dashboard_text + ";\n", encoding="utf-8")
    schema = SCHEMA_CHECK / "node_modules" / "@grafana" / "schema"
    return run_tsc(SCHEMA_CHECK, tmp_path, ["check.ts"], {"@grafana/schema": [str(schema)]})


def test_dashboard_type_checks_against_grafana_schema(tmp_path: Path) -> None:
    result = check_dashboard(tmp_path, DASHBOARD.read_text(encoding="utf-8"))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ('"mode": "absolute"', '"mode": "abs"', '"abs"'),  # not a ThresholdsMode
        ('"title": "Clock skew"', '"titel": "Clock skew"', "titel"),  # unknown key
        ('"refresh": 2', '"refresh": "sometimes"', "VariableRefresh"),
    ],
)
def test_schema_check_rejects_a_broken_dashboard(
    tmp_path: Path, old: str, new: str, complaint: str
) -> None:
    text = DASHBOARD.read_text(encoding="utf-8")
    assert old in text
    result = check_dashboard(tmp_path, text.replace(old, new, 1))
    assert result.returncode != 0
    assert complaint in result.stdout
