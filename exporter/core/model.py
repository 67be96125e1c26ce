"""Plain data shared by the client, the poller and the state the exposition reads.

Kept free of I/O and of any sibling import so that every other module can depend on it
without pulling in aiohttp or prometheus_client.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from enum import StrEnum

# The collector whose polls koodrive_up, the other per-account health metrics and the poll
# duration histogram describe: the space usage overview, as they always have.
PRIMARY = "overview"
# How a connection failure's detail starts when the host name did not resolve.
DNS_FAILURE = "DNS lookup failed"
# Longest KooDrive `msg` kept, and longest start of a refused body shown to a person.
MESSAGE_LIMIT = 120
# Longest KooDrive `code` kept: real ones are like "APIGW.0301" or "13000201".
CODE_LIMIT = 40
BODY_HEAD_LIMIT = 80
# Longest error detail kept: details end up in logs and on the landing page, and an
# upstream that answers with a megabyte of HTML must not flood either.
DETAIL_LIMIT = 200


class Reason(StrEnum):
    """Why a poll failed.

    A closed set, because it becomes the `reason` label of `koodrive_poll_errors_total`:
    free text there would explode the series count.
    """

    TIMEOUT = "timeout"
    CONNECTION = "connection"
    TLS = "tls"
    AUTH = "auth"
    RATE_LIMITED = "rate_limited"
    HTTP_ERROR = "http_error"
    API_ERROR = "api_error"
    INVALID_RESPONSE = "invalid_response"
    # A bug in the exporter itself; kept distinct so it is never mistaken for an upstream fault.
    INTERNAL = "internal"


class FetchError(Exception):
    """A failed request to KooDrive, classified by a bounded `reason`.

    `detail` is for humans (logs, landing page); it is truncated and never contains request
    headers, so no secret can travel through it.
    """

    def __init__(
        self,
        reason: Reason,
        detail: str,
        *,
        status: int | None = None,
        api_code: str | None = None,
        retry_after: float | None = None,
        message: str = "",
        body_head: str = "",
    ) -> None:
        self.reason = reason
        self.detail = truncate(detail)
        self.status = status
        # Every text an answer carries enters here, cleaned and cut once: whatever a server
        # sends, what logs, the landing page and `check` show is short, printable Unicode.
        self.api_code = None if api_code is None else truncate(api_code, CODE_LIMIT)
        # KooDrive's own `msg`, and the start of a body that was not the documented JSON:
        # for people diagnosing a failure (`check`, the landing page); both are untrusted
        # text, truncated and cleaned of control characters.
        self.message = truncate(message, MESSAGE_LIMIT)
        self.body_head = truncate(body_head, BODY_HEAD_LIMIT)
        # Seconds the upstream asked us to wait (Retry-After), already converted from a date.
        self.retry_after = retry_after
        super().__init__(f"{reason}: {self.detail}")

    @property
    def transient(self) -> bool:
        """Worth retrying within the interval: the next attempt may well succeed.

        Auth, API and parse errors are not: repeating the same request gets the same answer
        and only hammers the upstream.
        """
        if self.reason is Reason.HTTP_ERROR:
            return self.status is not None and self.status >= 500
        return self.reason in (Reason.TIMEOUT, Reason.CONNECTION, Reason.RATE_LIMITED)


def truncate(text: str, limit: int = DETAIL_LIMIT) -> str:
    """Shorten untrusted text for logs, replacing control characters that could forge lines."""
    cut = text if len(text) <= limit else text[: limit - 1] + "…"
    # Cut first: a megabyte of text costs a slice, not a Python loop over every character.
    # Lone surrogates are not printable either, so what is kept always encodes as UTF-8.
    return "".join(ch if ch.isprintable() else " " for ch in cut)


@dataclass(frozen=True, slots=True)
class Hint:
    """What a failure most likely means, for a person: `id` is short and stable (logs, JSON,
    tests), `text` one or two plain sentences (diagnosis.py makes them)."""

    id: str
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """The three totals exactly as the API reports them, in its own unit (KB)."""

    allocation_kb: int
    capacity_kb: int
    used_kb: int

    def in_bytes(self, kilobyte: int) -> UsageBytes:
        return UsageBytes(
            allocated=self.allocation_kb * kilobyte,
            capacity=self.capacity_kb * kilobyte,
            used=self.used_kb * kilobyte,
        )


@dataclass(frozen=True, slots=True)
class UsageBytes:
    """Usage converted to bytes, the base unit Prometheus users expect."""

    allocated: int
    capacity: int
    used: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The outcome of one poll of one collector of one account; immutable so readers never
    see it half-written.

    `result` is what the collector's endpoint parser made of the answer, set only on
    success. `started_at` is wall-clock time (for timestamps shown to people); `duration`
    comes from the monotonic clock.
    """

    account: str
    collector: str
    started_at: float
    duration: float
    trace_id: str
    result: object | None = None
    reason: Reason | None = None
    detail: str = ""
    # Every failed attempt of this poll, retries included (the last one is `reason` if the
    # poll failed): each is counted in koodrive_poll_errors_total.
    failures: tuple[Reason, ...] = ()
    attempts: int = 1
    # Server minus local clock as estimated after this poll; None before any `Date` header.
    clock_skew: float | None = None
    # Seconds the upstream asked to be left alone after this poll (Retry-After).
    retry_after: float | None = None
    # What the last failed attempt said, for people: HTTP status, KooDrive code and message,
    # and what it most likely means.
    status: int | None = None
    api_code: str | None = None
    message: str = ""
    hint: Hint | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


# Poll latencies of a SaaS API: tens of milliseconds when healthy, up to the timeout when not.
DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(slots=True)
class DurationHistogram:
    """Cumulative-at-render histogram; kept here so the poller need not know prometheus_client."""

    bounds: tuple[float, ...] = DURATION_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        """Count one duration; a non-finite or negative one (only a broken clock makes it)
        is clamped, as a negative or NaN sum would make the whole OpenMetrics body invalid."""
        if not math.isfinite(value) or value < 0:
            value = 0.0 if value != math.inf else self.bounds[-1] * 2
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count) pairs as Prometheus wants them, ending with +Inf."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out
