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

from .metric import Metric
from .model import PRIMARY, FetchError, Reason, Usage, UsageBytes

INT64_MAX = (1 << 63) - 1
# Digits of the longest numeric string read: INT64_MAX has 19. Checked before int(), which
# refuses past 4,300 digits with a ValueError and spends quadratic time below that.
INT64_DIGITS = 20
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
    # Items a paged answer may hold in all: a larger `total` is refused before any page is
    # kept, so a hostile server cannot fill memory a page at a time.
    max_items: int | None = None
    # How often the collector polls by default (or at the account's interval, if longer);
    # None means the account's `interval`.
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
        if len(value.strip()) > INT64_DIGITS:
            raise FetchError(Reason.INVALID_RESPONSE, f"{where}{name} is out of range")
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


def _gauge(name: str, text: str, value: Callable[[Any], object], *labels: str) -> Metric:
    """A gauge of an endpoint: labelled by account (and `labels`), stale with its data."""
    unit = "bytes" if name.endswith("_bytes") else ""
    return Metric(name, "gauge", text, value, ("account", *labels), unit=unit, stale=True)


OVERVIEW = Endpoint(
    name="overview",
    path="/koodrive/ose/v1/space/usage/overview",
    parse=_overview,
    metrics=(
        _gauge(
            "koodrive_space_capacity_bytes",
            f"Total space quota (totalCapacity) in bytes. {CACHED}; {STALE}.",
            lambda usage: usage.capacity,
        ),
        _gauge(
            "koodrive_space_used_bytes",
            f"Total space used (totalUsed) in bytes; may exceed capacity. {CACHED}; {STALE}.",
            lambda usage: usage.used,
        ),
        _gauge(
            "koodrive_space_allocated_bytes",
            "Total space allocated to users and departments (totalAllocation) in bytes. "
            f"{CACHED}; {STALE}.",
            lambda usage: usage.allocated,
        ),
    ),
)

SERVICE = "Cached from the last successful poll of the service usage (quotaUsed)"
TIERS = "Cached from the last successful poll of the space usage by quota"
# Space types as the quotaUsed fields spell them (`deptSpaceQuota`...), and as labels.
SPACE_TYPES = (("dept", "department"), ("personal", "personal"), ("group", "group"))
# Label values the upstream chooses (product type, tier name) are bounded: they become series.
LABEL_LIMIT = 64
MAX_TIERS = 1000
Labelled = Mapping[tuple[str, ...], int]


@dataclass(frozen=True, slots=True)
class Subscription:
    """The tenant's subscription (quotaUsed), in bytes and counts, labels ready to render."""

    capacity: int
    users: int
    users_limit: int
    product_type: Labelled
    type_quota: Labelled
    type_quota_assigned: Labelled
    type_used: Labelled


@dataclass(frozen=True, slots=True)
class QuotaTiers:
    """Space usage by quota tier, in bytes, keyed by the tier's name (`quota`)."""

    allocated: Labelled
    capacity: Labelled
    used: Labelled


def label_text(value: object, where: str) -> str:
    """A label value the upstream chose: a short printable string (a number is read as its
    decimal text, as some doc versions type every field as String)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or not value.isprintable():
        raise FetchError(Reason.INVALID_RESPONSE, f"{where} is not a printable string")
    if len(value) > LABEL_LIMIT:
        raise FetchError(Reason.INVALID_RESPONSE, f"{where} is longer than {LABEL_LIMIT}")
    return value


def _subscription(data: object, kilobyte: int) -> Subscription:
    """quotaUsed (docs/koodrive-api.md section 3.1): quotas in GB, usage in KB (inferred)."""
    fields = data_object(data)
    gigabyte = kilobyte**3
    quotas = (*SPACE_TYPES, ("reserved", "reserved"))
    return Subscription(
        capacity=int64_field(fields, "spaceCapacity") * gigabyte,
        users=int64_field(fields, "userCount"),
        users_limit=int64_field(fields, "userMaxCount"),
        product_type={(label_text(fields.get("productType"), "data.productType"),): 1},
        type_quota={(t,): int64_field(fields, f"{k}SpaceQuota") * gigabyte for k, t in quotas},
        type_quota_assigned={
            (t,): int64_field(fields, f"{k}SpaceQuotaUsed") * gigabyte for k, t in SPACE_TYPES
        },
        type_used={(t,): int64_field(fields, f"{k}SpaceUsed") * kilobyte for k, t in SPACE_TYPES},
    )


def _quota_tiers(items: list[object], kilobyte: int) -> QuotaTiers:
    """Space usage by quota (docs/koodrive-api.md section 3.2): one item per tier, totals
    in KB as the overview's."""
    if len(items) > MAX_TIERS:  # the client refuses such a `total` first; parse holds alone
        raise FetchError(Reason.INVALID_RESPONSE, f"more than {MAX_TIERS} quota tiers")
    allocated: dict[tuple[str, ...], int] = {}
    capacity: dict[tuple[str, ...], int] = {}
    used: dict[tuple[str, ...], int] = {}
    for index, item in enumerate(items):
        where = f"data[{index}]"
        if not isinstance(item, dict):
            raise FetchError(Reason.INVALID_RESPONSE, f"{where} is not an object")
        tier = (label_text(item.get("quota"), f"{where}.quota"),)
        if tier in used:  # two rows for one tier: which one is true cannot be known
            raise FetchError(Reason.INVALID_RESPONSE, f"{where}.quota {tier[0]!r} repeats")
        usage = parse_usage(item, where=f"{where}.").in_bytes(kilobyte)
        allocated[tier], capacity[tier], used[tier] = usage.allocated, usage.capacity, usage.used
    return QuotaTiers(allocated, capacity, used)


SUBSCRIPTION = Endpoint(
    name="subscription",
    path="/koodrive/ose/v1/service/quotaUsed",
    parse=_subscription,
    interval=600.0,
    metrics=(
        _gauge(
            "koodrive_subscription_capacity_bytes",
            f"Subscribed capacity (spaceCapacity, GB) in bytes. {SERVICE}; {STALE}.",
            lambda sub: sub.capacity,
        ),
        _gauge(
            "koodrive_subscription_users",
            f"Users created in the organisation (userCount). {SERVICE}; {STALE}.",
            lambda sub: sub.users,
        ),
        _gauge(
            "koodrive_subscription_users_limit",
            f"Users the subscription allows (userMaxCount). {SERVICE}; {STALE}.",
            lambda sub: sub.users_limit,
        ),
        _gauge(
            "koodrive_subscription_info",
            f"Always 1; the label tells the product type (productType). {SERVICE}; {STALE}.",
            lambda sub: sub.product_type,
            "product_type",
        ),
        _gauge(
            "koodrive_space_type_quota_bytes",
            "Subscribed capacity given to a space type (*SpaceQuota, GB) in bytes. "
            f"{SERVICE}; {STALE}.",
            lambda sub: sub.type_quota,
            "type",
        ),
        _gauge(
            "koodrive_space_type_quota_assigned_bytes",
            "Quota assigned to spaces of a type (*SpaceQuotaUsed, GB as inferred) in bytes. "
            f"{SERVICE}; {STALE}.",
            lambda sub: sub.type_quota_assigned,
            "type",
        ),
        _gauge(
            "koodrive_space_type_used_bytes",
            "Space used by spaces of a type (*SpaceUsed, KB as inferred) in bytes. "
            f"{SERVICE}; {STALE}.",
            lambda sub: sub.type_used,
            "type",
        ),
    ),
)

QUOTA_TIERS = Endpoint(
    name="quota_tiers",
    path="/koodrive/ose/v1/space/usage/quota",
    parse=_quota_tiers,
    paged=True,
    max_items=MAX_TIERS,
    metrics=(
        _gauge(
            "koodrive_quota_tier_allocated_bytes",
            f"Space allocated in a quota tier (totalAllocation) in bytes. {TIERS}; {STALE}.",
            lambda tiers: tiers.allocated,
            "quota",
        ),
        _gauge(
            "koodrive_quota_tier_capacity_bytes",
            f"Capacity of a quota tier (totalCapacity) in bytes. {TIERS}; {STALE}.",
            lambda tiers: tiers.capacity,
            "quota",
        ),
        _gauge(
            "koodrive_quota_tier_used_bytes",
            f"Space used in a quota tier (totalUsed) in bytes. {TIERS}; {STALE}.",
            lambda tiers: tiers.used,
            "quota",
        ),
    ),
)

# Every collector a config may name, in the order their metrics are rendered.
ENDPOINTS: Mapping[str, Endpoint] = MappingProxyType(
    {e.name: e for e in (OVERVIEW, SUBSCRIPTION, QUOTA_TIERS)}
)
DEFAULT_COLLECTORS = (OVERVIEW.name,)
if PRIMARY not in ENDPOINTS:
    raise ValueError(f"the health metrics describe {PRIMARY!r}, which is not an endpoint")
