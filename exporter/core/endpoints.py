"""Every KooDrive endpoint the exporter polls, declared as data, and the metrics each feeds.

An endpoint is its path, whether it pages, a parser from the answer's `data` to a result, and
the metric rows that read that result. Each is polled by the collector of the same name. The
client signs, sends and pages any of them, the poller schedules them, the state keeps each
one's last result per account and the exposition renders their rows: none of those modules
names an endpoint. Adding one means a definition here, a handler in the simulator, tests and
docs.

The definitions live in core, not beside the HTTP client, because they are pure data that
the config (collector names), the state, the metric table and the exposition all need, and
core is the layer all of them may import. What the API says, and where it says it, is in
docs/koodrive-api.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .metrics import PRIMARY, Metric, table
from .model import FetchError, Reason, Usage, UsageBytes

INT64_MAX = (1 << 63) - 1
CACHED = "Cached from the last successful poll of the space usage overview"
STALE = "dropped when that poll is older than stale_after"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One read-only endpoint of the KooDrive API and what the exporter makes of it.

    `parse` gets the answer's `data` (for a paged endpoint, the items of all pages in
    order) and the account's `kilobyte`, and returns the result the rows in `metrics` read;
    it raises FetchError(invalid_response) for anything it cannot vouch for.
    """

    name: str
    path: str
    parse: Callable[[Any, int], object]
    metrics: tuple[Metric, ...]
    # Paged with `limit` and `offset` query parameters and a `total` beside `data`.
    paged: bool = False
    # How often the collector polls by default; None means the account's `interval`.
    interval: float | None = None


def int64_field(data: Mapping[str, Any], name: str, where: str = "data.") -> int:
    """A non-negative int64 sent as a number or a numeric string (both are documented);
    `where` is the path of `data` in the answer, for the error message."""
    value = data.get(name)
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    if number is None:
        shown = "missing" if value is None else f"not an integer ({type(value).__name__})"
        raise FetchError(Reason.INVALID_RESPONSE, f"{where}{name} is {shown}")
    if not 0 <= number <= INT64_MAX:
        raise FetchError(Reason.INVALID_RESPONSE, f"{where}{name} is out of range")
    return number


def data_object(data: object) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise FetchError(Reason.INVALID_RESPONSE, "`data` is missing or not an object")
    return data


def parse_usage(data: object, where: str = "data.") -> Usage:
    """The three totals as the API sends them (KB, docs/koodrive-api.md section 2.3)."""
    fields = data_object(data)
    return Usage(
        allocation_kb=int64_field(fields, "totalAllocation", where),
        capacity_kb=int64_field(fields, "totalCapacity", where),
        used_kb=int64_field(fields, "totalUsed", where),
    )


def _overview(data: object, kilobyte: int) -> UsageBytes:
    return parse_usage(data).in_bytes(kilobyte)


OVERVIEW = Endpoint(
    name="overview",
    path="/koodrive/ose/v1/space/usage/overview",
    parse=_overview,
    metrics=(
        Metric(
            "koodrive_space_capacity_bytes",
            "gauge",
            f"Total space quota (totalCapacity) in bytes. {CACHED}; {STALE}.",
            lambda usage: usage.capacity,
            labels=("account",),
            unit="bytes",
            stale=True,
        ),
        Metric(
            "koodrive_space_used_bytes",
            "gauge",
            f"Total space used (totalUsed) in bytes; may exceed capacity. {CACHED}; {STALE}.",
            lambda usage: usage.used,
            labels=("account",),
            unit="bytes",
            stale=True,
        ),
        Metric(
            "koodrive_space_allocated_bytes",
            "gauge",
            "Total space allocated to users and departments (totalAllocation) in bytes. "
            f"{CACHED}; {STALE}.",
            lambda usage: usage.allocated,
            labels=("account",),
            unit="bytes",
            stale=True,
        ),
    ),
)

# Every collector a config may name, in the order their metrics are rendered.
ENDPOINTS: Mapping[str, Endpoint] = MappingProxyType({e.name: e for e in (OVERVIEW,)})
DEFAULT_COLLECTORS = (OVERVIEW.name,)
if PRIMARY not in ENDPOINTS:
    raise ValueError(f"the health metrics describe {PRIMARY!r}, which is not an endpoint")

METRICS = table((endpoint.name, endpoint.metrics) for endpoint in ENDPOINTS.values())
ACCOUNT_METRICS = tuple(metric for metric in METRICS if metric.per_account)
GLOBAL_METRICS = tuple(metric for metric in METRICS if not metric.per_account)
