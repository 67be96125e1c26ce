"""What the poller has learned so far: the shared memory between polling and scraping.

The poller is the only writer and the collector only reads; both run on the one event loop,
and snapshots are immutable, so a scrape never sees an account half-updated.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

from .model import Reason, Snapshot

# Poll latencies of a SaaS API: tens of milliseconds when healthy, up to the timeout when not.
DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(slots=True)
class AccountState:
    last: Snapshot | None = None
    last_success: Snapshot | None = None
    errors: dict[Reason, int] = field(default_factory=dict)


@dataclass(slots=True)
class DurationHistogram:
    """Cumulative-at-render histogram; kept here so the poller need not know prometheus_client."""

    bounds: tuple[float, ...] = DURATION_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
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


class ExporterState:
    """Per-account outcomes, error counters and the poll-duration histogram."""

    def __init__(self, accounts: Iterable[str]) -> None:
        self.accounts: dict[str, AccountState] = {name: AccountState() for name in accounts}
        self.poll_duration = DurationHistogram()
        self._pending = len(self.accounts)

    def record(self, snapshot: Snapshot) -> None:
        state = self.accounts.get(snapshot.account)
        if state is None:  # the account was removed while its poll was in flight
            return
        if state.last is None:
            self._pending -= 1
        state.last = snapshot
        if snapshot.reason is None:
            state.last_success = snapshot
        else:
            state.errors[snapshot.reason] = state.errors.get(snapshot.reason, 0) + 1
        self.poll_duration.observe(snapshot.duration)

    @property
    def ready(self) -> bool:
        """True once every account has finished its first poll, successful or not."""
        return self._pending == 0
