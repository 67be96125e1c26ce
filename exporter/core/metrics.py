"""Every metric the exporter serves, declared once; the exposition and the docs follow it.

A row says what a metric is (name, type, help, unit, labels), where its value comes from, and
whether it leaves the body when its data goes stale. The exposition renders both text formats
from these rows, and a test holds docs/reference.md's metrics reference to them, so a metric cannot
be added, renamed or re-documented in one place only.

Values come from plain functions, so the table stays free of rendering. A per-account metric
(labels start with `account`) reads, depending on its `source`:

- a collector's result (`source` names the collector, which is how an endpoint definition
  declares the metrics it feeds, see endpoints.py): the parsed answer of that collector's
  last successful poll;
- the state of the PRIMARY collector (`source` is POLL): the account's health as dashboards
  and alerts have always read it (`koodrive_up` means the space usage overview);
- the whole `AccountState` (`source` is ACCOUNT).

It returns a number, None for "no sample for this account", or, when it has labels beyond
`account`, a mapping from the tuple of those labels' values to a number. An exporter-wide
metric reads the `ExporterState` the same way (a histogram returns its `DurationHistogram`).
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Iterable, Mapping

from .build import build_info
from .endpoints import ENDPOINTS
from .metric import ACCOUNT, EXPORTER, REASONS, Metric
from .state import AccountState, CollectorState, ExporterState


# The sources run for every account on a relayout: they stay flat, one attribute at a time.
def _up(poll: CollectorState) -> int | None:
    last = poll.last
    if last is None:
        return None
    return 1 if last.reason is None else 0  # Snapshot.ok, without a property call


def _last_success(poll: CollectorState) -> float | None:
    success = poll.last_success
    return success.started_at if success is not None else None


def _last_duration(poll: CollectorState) -> float | None:
    last = poll.last
    return last.duration if last is not None else None


def _clock_skew(poll: CollectorState) -> float | None:
    last = poll.last
    return last.clock_skew if last is not None else None


def _errors(poll: CollectorState) -> Mapping[tuple[str, ...], int] | None:
    errors = poll.errors
    return {(reason.value,): count for reason, count in errors.items()} if errors else None


def _collectors_up(account: AccountState) -> Mapping[tuple[str, ...], int] | None:
    up = {
        (name,): 1 if poll.last.reason is None else 0
        for name, poll in account.collectors.items()
        if poll.last is not None
    }
    return up or None


def _collectors_last_success(account: AccountState) -> Mapping[tuple[str, ...], float] | None:
    times = {
        (name,): poll.last_success.started_at
        for name, poll in account.collectors.items()
        if poll.last_success is not None
    }
    return times or None


def _collectors_failing(account: AccountState) -> Mapping[tuple[str, ...], int] | None:
    failing = {
        (name, poll.last.reason.value): 1
        for name, poll in account.collectors.items()
        if poll.last is not None and poll.last.reason is not None
    }
    return failing or None


def _collectors_stale_after(account: AccountState) -> Mapping[tuple[str, ...], float]:
    return {(name,): poll.stale_after for name, poll in account.collectors.items()}


def _collectors_errors(account: AccountState) -> Mapping[tuple[str, ...], int] | None:
    errors = {
        (name, reason.value): count
        for name, poll in account.collectors.items()
        for reason, count in poll.errors.items()
    }
    return errors or None


def _build_info(_: ExporterState) -> Mapping[tuple[str, ...], int]:
    build = build_info()
    return {(build.branch, platform.python_version(), build.revision, build.version): 1}


# Per account, after the endpoints' rows, in output order; then exporter-wide.
HEALTH: tuple[Metric, ...] = (
    Metric(
        "koodrive_up",
        "gauge",
        "1 if the last poll of the account succeeded, 0 otherwise.",
        _up,
        labels=("account",),
    ),
    Metric(
        "koodrive_last_success_timestamp_seconds",
        "gauge",
        "Unix time when the last successful poll of the account started.",
        _last_success,
        labels=("account",),
        unit="seconds",
    ),
    Metric(
        "koodrive_last_poll_duration_seconds",
        "gauge",
        "Duration of the last poll of the account, retries included, successful or not.",
        _last_duration,
        labels=("account",),
        unit="seconds",
    ),
    Metric(
        "koodrive_clock_skew_seconds",
        "gauge",
        "Server minus local clock, estimated from the Date header of KooDrive responses; "
        "X-Date is signed with the corrected time.",
        _clock_skew,
        labels=("account",),
        unit="seconds",
    ),
    Metric(
        "koodrive_poll_errors_total",
        "counter",
        f"Failed requests, retries included, by reason ({REASONS}).",
        _errors,
        labels=("account", "reason"),
    ),
    Metric(
        "koodrive_collector_up",
        "gauge",
        "1 if the last poll of the collector succeeded, 0 otherwise.",
        _collectors_up,
        labels=("account", "collector"),
        source=ACCOUNT,
    ),
    Metric(
        "koodrive_collector_last_success_timestamp_seconds",
        "gauge",
        "Unix time when the last successful poll of the collector started.",
        _collectors_last_success,
        labels=("account", "collector"),
        unit="seconds",
        source=ACCOUNT,
    ),
    Metric(
        "koodrive_collector_last_failure",
        "gauge",
        "1 while the collector's last poll failed, labelled with why (one of "
        f"{REASONS}); absent after a success. Alerts match the reason without a lookback.",
        _collectors_failing,
        labels=("account", "collector", "reason"),
        source=ACCOUNT,
    ),
    Metric(
        "koodrive_collector_stale_after_seconds",
        "gauge",
        "Age of the collector's last success at which its metrics are dropped from /metrics "
        "(its stale_after); staleness alerts compare against it.",
        _collectors_stale_after,
        labels=("account", "collector"),
        unit="seconds",
        source=ACCOUNT,
    ),
    Metric(
        "koodrive_collector_errors_total",
        "counter",
        f"Failed requests of the collector, retries included, by reason ({REASONS}).",
        _collectors_errors,
        labels=("account", "collector", "reason"),
        source=ACCOUNT,
    ),
    Metric(
        "koodrive_poll_duration_seconds",
        "histogram",
        "Duration of polls of the space usage overview, all accounts, retries included.",
        lambda state: state.poll_duration,
        unit="seconds",
        source=EXPORTER,
    ),
    Metric(
        "koodrive_exporter_build_info",
        "gauge",
        "Always 1; labels tell the exporter's version, revision and branch, and Python's version.",
        _build_info,
        labels=("branch", "python_version", "revision", "version"),
        source=EXPORTER,
    ),
    Metric(
        "koodrive_exporter_config_last_reload_successful",
        "gauge",
        "1 if the last configuration reload succeeded (or none was tried), 0 otherwise.",
        lambda state: int(state.reload.successful),
        source=EXPORTER,
    ),
    Metric(
        "koodrive_exporter_config_last_reload_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful configuration load or reload.",
        lambda state: state.reload.last_success,
        unit="seconds",
        source=EXPORTER,
    ),
    Metric(
        "koodrive_exporter_shard_accounts",
        "gauge",
        "Accounts this replica polls (all configured accounts when not sharded).",
        lambda state: len(state.accounts),
        source=EXPORTER,
    ),
)


def table(feeds: Iterable[tuple[str, tuple[Metric, ...]]]) -> tuple[Metric, ...]:
    """The full table: each collector's rows (reading its result), then the health rows.

    `feeds` pairs a collector's name with the rows its endpoint declares; their `source`
    is set here, so a definition cannot feed a metric from another collector's answer.
    """
    rows = [dataclasses.replace(m, source=name) for name, metrics in feeds for m in metrics]
    metrics = (*rows, *HEALTH)
    _check(metrics)
    return metrics


def _check(metrics: tuple[Metric, ...]) -> None:
    """Refuse a table the formats cannot express, at import rather than at the first scrape."""
    names = [metric.name for metric in metrics]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate metric names in {names}")
    for metric in metrics:
        if metric.unit and not metric.family.endswith("_" + metric.unit):
            raise ValueError(f"{metric.name}: unit {metric.unit!r} is not the name's suffix")
        if (metric.type == "counter") != metric.name.endswith("_total"):
            raise ValueError(f"{metric.name}: counters, and only counters, end in _total")
        if metric.per_account == (metric.source == EXPORTER):
            raise ValueError(f"{metric.name}: per-account metrics, and only those, read accounts")
        if metric.stale and metric.source.startswith(":"):
            raise ValueError(f"{metric.name}: only a collector's results can go stale")
    per_account = [metric.per_account for metric in metrics]
    if per_account != sorted(per_account, reverse=True):
        raise ValueError("per-account metrics come first: the body keeps them in one block")


METRICS = table((endpoint.name, endpoint.metrics) for endpoint in ENDPOINTS.values())
ACCOUNT_METRICS = tuple(metric for metric in METRICS if metric.per_account)
GLOBAL_METRICS = tuple(metric for metric in METRICS if not metric.per_account)
