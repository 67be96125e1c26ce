"""The Grafana dashboard as code: `scripts/generate.py` writes it to dashboards/koodrive.json.

Built for one account or 10,000: no panel draws one series per account. Fleet totals and
counts come first, then one table row per account (sortable, coloured by thresholds), then
time series of the top N accounts (a variable), then the exporter's own health and the
subscription figures, summed over the fleet.

Why plain dictionaries and not Grafana's grafana-foundation-sdk: the SDK (tried at
10.1.0) writes `"options": null` and an `id` on every variable, both refused by the
@grafana/schema type check the suite runs, plus panel ids of 0 and empty refIds, so its output
needed as much repair as this file takes to write. The dashboard's JSON is checked against
@grafana/schema and every expression against a live Prometheus (tests/test_dashboard.py,
tests/test_e2e_prometheus.py), which is what the SDK's types would have bought.

Panels that read the recording rules of koodrive-rules.yaml say so in their description; the
Helm chart refuses to install the dashboard without those rules.
"""

from __future__ import annotations

from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SELECT = 'job=~"$job", account=~"$account"'
RULES_NOTE = " Reads the recording rules (koodrive-rules.yaml, or the chart's prometheusRule)."
# The colours the alerts use: KooDriveSpaceAlmostFull warns above 90 %, the panels from 80 %.
UTILIZATION_STEPS = ((None, "green"), (0.8, "yellow"), (0.9, "red"))
# Time until full: red within a day, yellow within a week (KooDriveSpaceFillingUp's horizons).
FULL_IN_STEPS = ((None, "red"), (86400, "yellow"), (7 * 86400, "green"))
TOP = "topn"

Panel = dict[str, Any]


def query(expr: str, legend: str = "", *, ref: str = "A", instant: bool = False) -> dict[str, Any]:
    target: dict[str, Any] = {
        "datasource": DATASOURCE,
        "refId": ref,
        "expr": expr,
        "legendFormat": legend or "__auto",
    }
    if instant:
        target |= {"instant": True, "range": False, "format": "table"}
    return target


def thresholds(steps: tuple[tuple[float | None, str], ...]) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"value": value, "color": color} for value, color in steps],
    }


def panel(
    kind: str,
    title: str,
    description: str,
    unit: str,
    targets: list[dict[str, Any]],
    *,
    width: int,
    height: int = 8,
    steps: tuple[tuple[float | None, str], ...] = ((None, "green"),),
    options: dict[str, Any] | None = None,
    custom: dict[str, Any] | None = None,
    **extra: Any,
) -> Panel:
    defaults: dict[str, Any] = {"unit": unit, "thresholds": thresholds(steps)}
    if custom:
        defaults["custom"] = custom
    if steps != ((None, "green"),):
        defaults["color"] = {"mode": "thresholds"}
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"x": 0, "y": 0, "w": width, "h": height},
        "fieldConfig": {"defaults": defaults, "overrides": extra.pop("overrides", [])},
        "options": options or {},
        "targets": targets,
        **extra,
    }


def stat(
    title: str, description: str, unit: str, expr: str, width: int = 4, **kwargs: Any
) -> Panel:
    options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    return panel(
        "stat",
        title,
        description,
        unit,
        [query(expr, title)],
        width=width,
        height=4,
        options=options | {"colorMode": "value", "graphMode": "area", "textMode": "auto"},
        **kwargs,
    )


def series(
    title: str, description: str, unit: str, *targets: tuple[str, str], **kwargs: Any
) -> Panel:
    refs = "ABCDEFGH"
    options = {
        "legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                   "calcs": ["lastNotNull"]},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }  # fmt: skip
    return panel(
        "timeseries",
        title,
        description,
        unit,
        [query(expr, legend, ref=refs[i]) for i, (expr, legend) in enumerate(targets)],
        width=kwargs.pop("width", 12),
        options=options,
        custom={"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0, "spanNulls": False},
        **kwargs,
    )


def top(metric: str) -> str:
    """The top N accounts by the metric's value at the end of the range: the same N lines
    across the whole range (a plain topk() picks anew at every step)."""
    selected = f"{metric}{{{SELECT}}}"
    return f"{selected} and topk(${TOP}, {selected} @ end())"


def bars(title: str, description: str, unit: str, expr: str, **kwargs: Any) -> Panel:
    options = {
        "displayMode": "gradient",
        "orientation": "horizontal",
        "showUnfilled": True,
        "valueMode": "color",
        "namePlacement": "left",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
    }
    return panel(
        "bargauge",
        title,
        description,
        unit,
        [query(expr, "{{account}}") | {"instant": True, "range": False}],
        width=kwargs.pop("width", 12),
        options=options,
        **kwargs,
    )


def column(ref: str, name: str, unit: str, **properties: Any) -> dict[str, Any]:
    """A table column: the value of query `ref` (Grafana names it "Value #ref")."""
    values = [{"id": "displayName", "value": name}, {"id": "unit", "value": unit}]
    values += [{"id": key, "value": value} for key, value in properties.items()]
    return {"matcher": {"id": "byName", "options": f"Value #{ref}"}, "properties": values}


def colored(steps: tuple[tuple[float | None, str], ...]) -> dict[str, Any]:
    return {
        "thresholds": thresholds(steps),
        "color": {"mode": "thresholds"},
        "custom.cellOptions": {"type": "color-background", "mode": "basic"},
    }


def accounts_table() -> Panel:
    columns = {
        "Used": ("koodrive_space_used_bytes", "bytes", {}),
        "Capacity": ("koodrive_space_capacity_bytes", "bytes", {}),
        "Utilization": ("account:koodrive_space_utilization:ratio", "percentunit",
                        colored(UTILIZATION_STEPS)),
        "Growth": ("account:koodrive_space_used_bytes:growth_per_day", "bytes", {}),
        "FullIn": ("account:koodrive_space_full_in:seconds", "s", colored(FULL_IN_STEPS)),
        "Up": ("koodrive_up", "none", colored(((None, "red"), (1, "green")))),
    }  # fmt: skip
    names = {"Growth": "Growth per day", "FullIn": "Full in (forecast)"}
    # Aggregated to the join's labels: a table query keeps every label as a column, and
    # `merge` joins rows only where all shared columns agree, which __name__ never would.
    targets = [
        query(f"max by (job, instance, account) ({m}{{{SELECT}}})", ref, ref=ref, instant=True)
        for ref, (m, _, _) in columns.items()
    ]
    overrides = [
        column(ref, names.get(ref, ref), unit, **props) for ref, (_, unit, props) in columns.items()
    ]
    organize = {
        "id": "organize",
        "options": {"excludeByName": {"Time": True, "job": True, "instance": True}},
    }
    return panel(
        "table",
        "Accounts",
        "One row per account: used, capacity, utilization (yellow from 80 %, red from 90 %), "
        "growth per day over the last 6 hours, the forecast time until full (red within a "
        "day, yellow within a week; empty when not growing) and whether the last poll "
        "succeeded. Sorted by utilization; click a header to sort by another column." + RULES_NOTE,
        "none",
        targets,
        width=24,
        height=12,
        options={
            "showHeader": True,
            "cellHeight": "sm",
            "sortBy": [{"displayName": "Utilization", "desc": True}],
            "footer": {"show": False, "reducer": ["sum"], "fields": "", "countRows": False},
        },
        transformations=[{"id": "merge", "options": {}}, organize],
        overrides=overrides,
    )


def capacity_panels() -> list[Panel]:
    fleet = f"{{{SELECT}}}"
    return [
        stat("Accounts polled", "Accounts the exporter polls (in the selected jobs).", "none",
             f"count(koodrive_up{fleet})"),
        stat("Accounts down", "Accounts whose last poll failed; the table and the health row "
             "say which and why.", "none", f"count(koodrive_up{fleet} == 0) or vector(0)",
             steps=((None, "green"), (1, "red"))),
        stat("Used", "Space used, summed over the selected accounts.", "bytes",
             f"sum(koodrive_space_used_bytes{fleet})"),
        stat("Capacity", "Space capacity (quota), summed over the selected accounts.", "bytes",
             f"sum(koodrive_space_capacity_bytes{fleet})"),
        stat("Fleet utilization", "Used over capacity, summed over the selected accounts with "
             "a capacity (yellow from 80 %, red from 90 %).", "percentunit",
             f"sum(koodrive_space_used_bytes{fleet})"
             f" / sum(koodrive_space_capacity_bytes{fleet} > 0)",
             steps=UTILIZATION_STEPS),
        stat("Full within 7 days", "Accounts whose 6-hour growth trend fills them within a "
             "week." + RULES_NOTE, "none",
             f"count(account:koodrive_space_full_in:seconds{fleet} < 7 * 86400) or vector(0)",
             steps=((None, "green"), (1, "yellow"))),
        series("Fleet used and capacity", "Used and capacity, summed over the selected "
               "accounts.", "bytes",
               (f"sum(koodrive_space_used_bytes{fleet})", "used"),
               (f"sum(koodrive_space_capacity_bytes{fleet})", "capacity")),
        series("Accounts above 80 % and 90 %", "How many accounts are above each colour "
               "threshold of utilization over time." + RULES_NOTE, "none",
               (f"count(account:koodrive_space_utilization:ratio{fleet} > 0.8) or vector(0)",
                "above 80 %"),
               (f"count(account:koodrive_space_utilization:ratio{fleet} > 0.9) or vector(0)",
                "above 90 %")),
    ]  # fmt: skip


def top_panels() -> list[Panel]:
    return [
        series(f"Utilization, top ${TOP}", "The accounts with the highest utilization at the "
               "end of the range, over the range." + RULES_NOTE, "percentunit",
               (top("account:koodrive_space_utilization:ratio"), "{{account}}"),
               steps=UTILIZATION_STEPS),
        series(f"Used space, top ${TOP}", "The accounts using the most space at the end of "
               "the range, over the range.", "bytes",
               (top("koodrive_space_used_bytes"), "{{account}}")),
        series(f"Growth per day, top ${TOP}", "The fastest-growing accounts: growth of used "
               "space per day, from the trend of the last 6 hours." + RULES_NOTE, "bytes",
               (top("account:koodrive_space_used_bytes:growth_per_day"), "{{account}}")),
        bars(f"Full in, soonest ${TOP}", "The accounts that fill up soonest at their 6-hour "
             "growth trend (red within a day, yellow within a week); growing accounts only."
             + RULES_NOTE, "s",
             f"bottomk(${TOP}, account:koodrive_space_full_in:seconds{{{SELECT}}})",
             steps=FULL_IN_STEPS),
    ]  # fmt: skip


def health_panels() -> list[Panel]:
    selected = f"{{{SELECT}}}"
    stale = (
        f"count(timestamp(koodrive_collector_last_success_timestamp_seconds{selected})"
        f" - koodrive_collector_last_success_timestamp_seconds{selected}"
        f" > koodrive_collector_stale_after_seconds{selected}) or vector(0)"
    )
    return [
        series("Accounts down and stale collectors", "Accounts whose last poll failed, and "
               "collectors whose last success is older than their stale_after (their metrics "
               "are gone from /metrics).", "none",
               (f"count(koodrive_up{selected} == 0) or vector(0)", "accounts down"),
               (stale, "stale collectors")),
        bars(f"Age of last success, oldest ${TOP}", "Time since each account's last "
             "successful poll, oldest first; a healthy account's stays within about one and a half "
             "intervals (its slot, plus the scrape's delay).", "s",
             f"topk(${TOP}, time() - koodrive_last_success_timestamp_seconds{selected})"),
        series("Poll errors by reason", "Failed requests per second over all selected "
               "accounts, retries included, by reason.", "reqps",
               (f"sum by (reason) (rate(koodrive_poll_errors_total{selected}[$__rate_interval]))",
                "{{reason}}")),
        series("Poll duration", "Quantiles of the overview's poll duration, retries included, "
               "per exporter job.", "s",
               *[(f"histogram_quantile({q}, sum by (job, le) (rate("
                  f'koodrive_poll_duration_seconds_bucket{{job=~"$job"}}[$__rate_interval])))',
                  f"p{round(q * 100)} {{{{job}}}}") for q in (0.5, 0.95, 0.99)]),
        series("Clock skew", "KooDrive's clock minus the exporter's, the extremes over the "
               "selected accounts per exporter instance; the exporter corrects for it when "
               "signing.", "s",
               (f"max by (job, instance) (koodrive_clock_skew_seconds{selected})",
                "max {{instance}}"),
               (f"min by (job, instance) (koodrive_clock_skew_seconds{selected})",
                "min {{instance}}")),
        series("Collectors down", "Collectors whose last poll failed, by collector.", "none",
               (f"count by (collector) (koodrive_collector_up{selected} == 0)",
                "{{collector}}")),
        stat("Config reload", "1 if the last configuration reload of each exporter instance "
             "succeeded.", "none",
             'koodrive_exporter_config_last_reload_successful{job=~"$job"}',
             steps=((None, "red"), (1, "green")), width=24),
    ]  # fmt: skip


def subscription_panels() -> list[Panel]:
    selected = f"{{{SELECT}}}"
    return [
        bars(f"Seats taken, top ${TOP}", "Users created over users subscribed, highest first "
             "(the subscription collector)." + RULES_NOTE, "percentunit",
             f"topk(${TOP}, account:koodrive_subscription_seats_used:ratio{selected})",
             steps=UTILIZATION_STEPS),
        series("Seats used and subscribed", "Users created and users subscribed, summed over "
               "the selected accounts.", "none",
               (f"sum(koodrive_subscription_users{selected})", "users"),
               (f"sum(koodrive_subscription_users_limit{selected})", "subscribed")),
        series("Subscribed capacity and used", "Capacity subscribed and space used by all "
               "space types, summed over the selected accounts.", "bytes",
               (f"sum(koodrive_subscription_capacity_bytes{selected})", "subscribed"),
               (f"sum(koodrive_space_type_used_bytes{selected})", "used")),
        series("Quota and usage per space type", "Quota, assigned quota and usage per space "
               "type, summed over the selected accounts.", "bytes",
               (f"sum by (type) (koodrive_space_type_quota_bytes{selected})", "{{type}} quota"),
               (f"sum by (type) (koodrive_space_type_quota_assigned_bytes{selected})",
                "{{type}} assigned"),
               (f"sum by (type) (koodrive_space_type_used_bytes{selected})", "{{type}} used")),
        series("Quota tiers", "Capacity, allocated and used space per quota tier (GB), summed "
               "over the selected accounts (the quota_tiers collector).", "bytes",
               (f"sum by (quota) (koodrive_quota_tier_capacity_bytes{selected})",
                "tier {{quota}} GB capacity"),
               (f"sum by (quota) (koodrive_quota_tier_allocated_bytes{selected})",
                "tier {{quota}} GB allocated"),
               (f"sum by (quota) (koodrive_quota_tier_used_bytes{selected})",
                "tier {{quota}} GB used"), width=24),
    ]  # fmt: skip


def laid_out(sections: list[tuple[str, list[Panel]]]) -> list[Panel]:
    """Rows and their panels, placed left to right and wrapped at Grafana's 24 columns."""
    out: list[Panel] = []
    y = 0
    for title, section in sections:
        out.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                    "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}})  # fmt: skip
        y += 1
        x, line = 0, 0
        for item in section:
            position = item["gridPos"]
            if x + position["w"] > 24:
                x, y = 0, y + line
                line = 0
            position.update(x=x, y=y)
            x += position["w"]
            line = max(line, position["h"])
            out.append(item)
        y += line
    for number, item in enumerate(out, 1):
        item["id"] = number
    return out


def variable(name: str, label: str, query_text: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query_text, "refId": "PrometheusVariableQueryEditor-VariableQuery",
                  "qryType": 1},
        "hide": 0,
        "refresh": 2,
        "regex": "",
        "includeAll": True,
        "multi": True,
        "allValue": ".+",
        "sort": 1,
        "options": [],
    }  # fmt: skip


def dashboard() -> dict[str, Any]:
    choices = ("5", "10", "20", "50")
    top_n = {
        "name": TOP,
        "label": "Top N",
        "type": "custom",
        "query": ",".join(choices),
        "current": {"text": "10", "value": "10"},
        "options": [{"text": n, "value": n, "selected": n == "10"} for n in choices],
        "hide": 0,
        "includeAll": False,
        "multi": False,
    }
    return {
        "uid": "koodrive-exporter",
        "title": "KooDrive space",
        "description": "Space usage of KooDrive accounts and the health of koodrive-exporter, "
        "for one account or thousands: fleet totals, one table row per account, the top N "
        "over time. Needs the recording rules of koodrive-rules.yaml.",
        "tags": ["koodrive", "storage", "capacity"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 41,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-7d", "to": "now"},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "hide": 0, "refresh": 1, "regex": "", "includeAll": False,
             "multi": False, "options": []},
            variable("job", "Job", "label_values(koodrive_exporter_build_info, job)"),
            variable("account", "Account", 'label_values(koodrive_up{job=~"$job"}, account)'),
            top_n,
        ]},
        "panels": laid_out([
            ("Fleet", capacity_panels()),
            ("Accounts", [accounts_table()]),
            (f"Top ${TOP}", top_panels()),
            ("Exporter health", health_panels()),
            ("Subscription", subscription_panels()),
        ]),
    }  # fmt: skip
