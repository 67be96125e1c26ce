"""Every metric the exporter serves, declared once; the exposition and the README follow it.

A row says what a metric is (name, type, help, unit, labels), where its value comes from, and
whether it leaves the body when its account's data goes stale. The exposition renders both
text formats from these rows, and a test holds the README's metrics reference to them, so a
metric cannot be added, renamed or re-documented in one place only.

Values come from plain functions of the state, so the table stays free of rendering:

- a per-account metric (labels start with `account`) reads an `AccountState` and returns a
  number, None for "no sample for this account", or, when it has labels beyond `account`, a
  mapping from the tuple of those labels' values to a number;
- an exporter-wide metric reads the `ExporterState` the same way (a histogram returns its
  `DurationHistogram`).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from .. import __version__
from .model import Reason
from .state import AccountState, DurationHistogram, ExporterState

Number = int | float
Value = Number | Mapping[tuple[str, ...], Number] | DurationHistogram | None
Kind = Literal["gauge", "counter", "histogram"]

CACHED = "Cached from the last successful poll of the space usage overview"
STALE = "dropped when that poll is older than stale_after"
REASONS = ", ".join(reason.value for reason in Reason)


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family. `name` is what queries use: a counter's includes `_total`."""

    name: str
    type: Kind
    help: str
    value: Callable[[AccountState], Value] | Callable[[ExporterState], Value]
    labels: tuple[str, ...] = ()
    # OpenMetrics unit; the spec wants it as the name's suffix, which the table checks below.
    unit: str = ""
    # Leaves the body once the account's last success is older than its stale_after.
    stale: bool = False

    @property
    def per_account(self) -> bool:
        return self.labels[:1] == ("account",)

    @property
    def family(self) -> str:
        """The OpenMetrics family name: a counter's samples add `_total` back."""
        return self.name.removesuffix("_total") if self.type == "counter" else self.name


# The sources run for every account on a relayout, hence no shared helper for the usage.
def _capacity(account: AccountState) -> int | None:
    success = account.last_success
    usage = success.usage if success is not None else None
    return usage.capacity if usage is not None else None


def _used(account: AccountState) -> int | None:
    success = account.last_success
    usage = success.usage if success is not None else None
    return usage.used if usage is not None else None


def _allocated(account: AccountState) -> int | None:
    success = account.last_success
    usage = success.usage if success is not None else None
    return usage.allocated if usage is not None else None


def _up(account: AccountState) -> int | None:
    last = account.last
    if last is None:
        return None
    return 1 if last.reason is None else 0  # Snapshot.ok, without a property call


def _last_success(account: AccountState) -> float | None:
    success = account.last_success
    return success.started_at if success is not None else None


def _last_duration(account: AccountState) -> float | None:
    last = account.last
    return last.duration if last is not None else None


def _clock_skew(account: AccountState) -> float | None:
    last = account.last
    return last.clock_skew if last is not None else None


def _errors(account: AccountState) -> Mapping[tuple[str, ...], int] | None:
    errors = account.errors
    return {(reason.value,): count for reason, count in errors.items()} if errors else None


def _build_info(_: ExporterState) -> Mapping[tuple[str, ...], int]:
    return {(platform.python_version(), __version__): 1}


METRICS: tuple[Metric, ...] = (
    # Per account, in output order.
    Metric(
        "koodrive_space_capacity_bytes",
        "gauge",
        f"Total space quota (totalCapacity) in bytes. {CACHED}; {STALE}.",
        _capacity,
        labels=("account",),
        unit="bytes",
        stale=True,
    ),
    Metric(
        "koodrive_space_used_bytes",
        "gauge",
        f"Total space used (totalUsed) in bytes; may exceed capacity. {CACHED}; {STALE}.",
        _used,
        labels=("account",),
        unit="bytes",
        stale=True,
    ),
    Metric(
        "koodrive_space_allocated_bytes",
        "gauge",
        "Total space allocated to users and departments (totalAllocation) in bytes. "
        f"{CACHED}; {STALE}.",
        _allocated,
        labels=("account",),
        unit="bytes",
        stale=True,
    ),
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
    # Exporter-wide.
    Metric(
        "koodrive_poll_duration_seconds",
        "histogram",
        "Duration of polls of the space usage overview, all accounts, retries included.",
        lambda state: state.poll_duration,
        unit="seconds",
    ),
    Metric(
        "koodrive_exporter_build_info",
        "gauge",
        "Always 1; labels tell the exporter and Python versions.",
        _build_info,
        labels=("python_version", "version"),
    ),
    Metric(
        "koodrive_exporter_config_last_reload_successful",
        "gauge",
        "1 if the last configuration reload succeeded (or none was tried), 0 otherwise.",
        lambda state: int(state.reload.successful),
    ),
    Metric(
        "koodrive_exporter_config_last_reload_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful configuration load or reload.",
        lambda state: state.reload.last_success,
        unit="seconds",
    ),
    Metric(
        "koodrive_exporter_shard_accounts",
        "gauge",
        "Accounts this replica polls (all configured accounts when not sharded).",
        lambda state: len(state.accounts),
    ),
)

ACCOUNT_METRICS = tuple(metric for metric in METRICS if metric.per_account)
GLOBAL_METRICS = tuple(metric for metric in METRICS if not metric.per_account)


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
        if metric.stale and not metric.per_account:
            raise ValueError(f"{metric.name}: only per-account metrics can go stale")
    per_account = [metric.per_account for metric in metrics]
    if per_account != sorted(per_account, reverse=True):
        raise ValueError("per-account metrics come first: the body keeps them in one block")


_check(METRICS)
