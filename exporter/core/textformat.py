"""The text of the /metrics body: how the rows of the metrics table become sample lines.

What is rendered comes from the table in `metrics.py`. Two formats share the sample lines,
which are the same in both: the Prometheus text format 0.0.4, and OpenMetrics 1.0.0, which
differs only in its metadata (a counter's family drops `_total`, `# UNIT` lines, quotes
escaped in HELP) and its closing `# EOF`. Each format keeps its own joined body and gzip,
built on the first scrape that wants it. Samples carry no timestamps.

Pure functions of the state: the exposition (core/exposition.py) decides when to call them
and caches what they return.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics import exposition as openmetrics_exposition

from .metric import ACCOUNT, POLL, Metric, Number
from .metrics import ACCOUNT_METRICS, GLOBAL_METRICS
from .model import PRIMARY, DurationHistogram
from .state import AccountState, ExporterState

EOF = b"# EOF\n"


@dataclass(frozen=True, slots=True)
class Format:
    """A body the scrape handler can ask for; the server sends `content_type` with it."""

    name: str
    content_type: str
    openmetrics: bool


TEXT = Format("text", CONTENT_TYPE_PLAIN_0_0_4, openmetrics=False)
OPENMETRICS = Format("openmetrics", openmetrics_exposition.CONTENT_TYPE_LATEST, openmetrics=True)


def header(metric: Metric, openmetrics: bool) -> str:
    """HELP and TYPE (and UNIT) lines: OpenMetrics names the family and escapes quotes."""
    text = metric.help.replace("\\", "\\\\").replace("\n", "\\n")
    if not openmetrics:
        return f"# HELP {metric.name} {text}\n# TYPE {metric.name} {metric.type}\n"
    name, text = metric.family, text.replace('"', '\\"')
    lines = f"# HELP {name} {text}\n# TYPE {name} {metric.type}\n"
    return lines + (f"# UNIT {name} {metric.unit}\n" if metric.unit else "")


def label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def number(value: Number) -> str:
    """Integers exactly (byte counts above 2^53 stay exact), floats as Python's repr."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def labelled(name: str, head: str, labels: tuple[str, ...], values: Mapping) -> str:
    """Lines of a metric with `labels` after `head` (its "{" and any labels before those)."""
    return "".join(
        f"{name}{head}"
        + ",".join(f'{label}="{label_value(v)}"' for label, v in zip(labels, key, strict=True))
        + f"}} {number(count)}\n"
        for key, count in values.items()
    )


NOTHING = ("",) * len(ACCOUNT_METRICS)
# The collectors whose results rows read, in first-use order; a row's `slot` indexes them.
SOURCES = tuple(dict.fromkeys(m.source for m in ACCOUNT_METRICS if m.source not in (POLL, ACCOUNT)))
# Per row of ACCOUNT_METRICS: its name, its value function, its labels beyond `account`,
# and which argument the function reads (see account_lines); read once here because
# account_lines runs for every account on a relayout.
_ARGUMENTS = (POLL, ACCOUNT, *SOURCES)
_ROWS = tuple(
    (metric.name, metric.value, metric.labels[1:], _ARGUMENTS.index(metric.source))
    for metric in ACCOUNT_METRICS
)
# Per row: which slot of SOURCES decides its staleness, or None if it never goes stale.
STALE_SLOTS = tuple(
    SOURCES.index(metric.source) if metric.stale else None for metric in ACCOUNT_METRICS
)


def account_lines(name: str, account: AccountState) -> tuple[str, ...]:
    """One string per row of ACCOUNT_METRICS: this account's lines for it, or ""."""
    if not account.polled:
        return NOTHING  # every row would say None anyway
    collectors = account.collectors
    # What the rows read, in _ARGUMENTS order: the primary collector's state, the account,
    # and each source's last result; None where there is none, which means no sample.
    arguments: list[object] = [collectors.get(PRIMARY), account]
    for source in SOURCES:
        collector = collectors.get(source)
        success = collector.last_success if collector is not None else None
        arguments.append(success.result if success is not None else None)
    head = f'{{account="{label_value(name)}"'
    lines: list[str] = []
    append = lines.append
    for metric, source, extra, argument in _ROWS:
        target = arguments[argument]
        value = None if target is None else source(target)
        if value is None:
            append("")
        elif extra:
            append(labelled(metric, head + ",", extra, value))
        elif value - value == 0:  # finite: str() is exact for ints and repr() for floats
            append(f"{metric}{head}}} {value}\n")
        else:
            append(f"{metric}{head}}} {number(value)}\n")
    return tuple(lines)


def global_text(state: ExporterState, headers: tuple[str, ...]) -> str:
    """The exporter-wide metrics, each after its header (`headers` follows GLOBAL_METRICS)."""
    parts: list[str] = []
    for metric, head in zip(GLOBAL_METRICS, headers, strict=True):
        parts.append(head)
        value = metric.value(state)
        if isinstance(value, DurationHistogram):
            name = metric.name
            parts += [f'{name}_bucket{{le="{le}"}} {count}\n' for le, count in value.cumulative()]
            parts.append(f"{name}_sum {number(value.total)}\n")
            parts.append(f"{name}_count {sum(value.counts)}\n")
        elif isinstance(value, Mapping):
            parts.append(labelled(metric.name, "{", metric.labels, value))
        elif value is not None:
            parts.append(f"{metric.name} {number(value)}\n")
    return "".join(parts)
