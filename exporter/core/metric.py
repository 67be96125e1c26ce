"""What a metric is: name, type, help, unit, labels, where its value comes from.

The row type of the metric table (metrics.py) and of the rows each endpoint declares
(endpoints.py). It lives apart from the table so that the endpoints, which the config
imports for collector names, do not import the table, which reads the state: one way of
imports through the core, with no circle (tests/test_layers.py walks them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .model import DurationHistogram, Reason

Number = int | float
Value = Number | Mapping[tuple[str, ...], Number] | DurationHistogram | None
Kind = Literal["gauge", "counter", "histogram"]

# Pseudo-sources of rows that read state rather than a collector's result.
POLL = ":poll"
ACCOUNT = ":account"
EXPORTER = ":exporter"
REASONS = ", ".join(reason.value for reason in Reason)


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family. `name` is what queries use: a counter's includes `_total`."""

    name: str
    type: Kind
    help: str
    value: Callable[[Any], Value]
    labels: tuple[str, ...] = ()
    # What `value` reads: a collector's name (its last result), POLL, ACCOUNT or EXPORTER.
    source: str = POLL
    # OpenMetrics unit; the spec wants it as the name's suffix, which the table checks below.
    unit: str = ""
    # Leaves the body once its collector's last success is older than stale_after.
    stale: bool = False

    @property
    def per_account(self) -> bool:
        return self.labels[:1] == ("account",)

    @property
    def family(self) -> str:
        """The OpenMetrics family name: a counter's samples add `_total` back."""
        return self.name.removesuffix("_total") if self.type == "counter" else self.name
