"""prometheus_client Collector over the poller's snapshots.

It only reads memory: prometheus_client renders synchronously on the event loop, so any
I/O here would stall every scrape and every poll.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import __version__
from .state import ExporterState

CACHED = "Cached from the last successful poll of the space usage overview"
STALE = "dropped when that poll is older than stale_after"


def _per_account(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=["account"])


class KooDriveCollector(Collector):
    def __init__(self, state: ExporterState, clock: Callable[[], float] = time.time) -> None:
        self._state = state
        self._clock = clock

    def describe(self) -> Iterator[Metric]:
        # Returning nothing stops the registry from calling collect() at registration time.
        return iter(())

    def collect(self) -> Iterator[Metric]:
        capacity = _per_account(
            "koodrive_space_capacity_bytes",
            f"Total space quota (totalCapacity) in bytes. {CACHED}; {STALE}.",
        )
        used = _per_account(
            "koodrive_space_used_bytes",
            f"Total space used (totalUsed) in bytes; may exceed capacity. {CACHED}; {STALE}.",
        )
        allocated = _per_account(
            "koodrive_space_allocated_bytes",
            f"Total space allocated to users and departments (totalAllocation) in bytes. "
            f"{CACHED}; {STALE}.",
        )
        up = _per_account(
            "koodrive_up", "1 if the last poll of the account succeeded, 0 otherwise."
        )
        last_success = _per_account(
            "koodrive_last_success_timestamp_seconds",
            "Unix time when the last successful poll of the account started.",
        )
        last_duration = _per_account(
            "koodrive_last_poll_duration_seconds",
            "Duration of the last poll of the account, retries included, successful or not.",
        )
        skew = _per_account(
            "koodrive_clock_skew_seconds",
            "Server minus local clock, estimated from the Date header of KooDrive responses; "
            "X-Date is signed with the corrected time.",
        )
        errors = CounterMetricFamily(
            "koodrive_poll_errors",
            "Failed requests, retries included, by reason (timeout, connection, tls, auth, "
            "rate_limited, http_error, api_error, invalid_response, internal).",
            labels=["account", "reason"],
        )
        now = self._clock()
        for name, account in self._state.accounts.items():
            last = account.last
            if last is None:
                continue
            up.add_metric([name], 1.0 if last.ok else 0.0)
            last_duration.add_metric([name], last.duration)
            if last.clock_skew is not None:
                skew.add_metric([name], last.clock_skew)
            for reason, count in account.errors.items():
                errors.add_metric([name, reason.value], count)
            success = account.last_success
            if success is None or success.usage is None:
                continue
            last_success.add_metric([name], success.started_at)
            if now - success.started_at > account.stale_after:
                continue
            capacity.add_metric([name], success.usage.capacity)
            used.add_metric([name], success.usage.used)
            allocated.add_metric([name], success.usage.allocated)

        histogram = self._state.poll_duration
        duration = HistogramMetricFamily(
            "koodrive_poll_duration_seconds",
            "Duration of polls of the space usage overview, all accounts, retries included.",
            buckets=histogram.cumulative(),
            sum_value=histogram.total,
        )
        build = GaugeMetricFamily(
            "koodrive_exporter_build_info",
            "Always 1; labels tell the exporter and Python versions.",
            labels=["version", "python_version"],
        )
        build.add_metric([__version__, platform.python_version()], 1.0)
        reload = self._state.reload
        reload_ok = GaugeMetricFamily(
            "koodrive_exporter_config_last_reload_successful",
            "1 if the last configuration reload succeeded (or none was tried), 0 otherwise.",
            value=1.0 if reload.successful else 0.0,
        )
        reload_time = GaugeMetricFamily(
            "koodrive_exporter_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load or reload.",
            value=reload.last_success,
        )
        yield from (capacity, used, allocated, up, last_success, last_duration, skew, errors)
        yield from (duration, build, reload_ok, reload_time)
