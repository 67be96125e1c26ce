"""prometheus_client Collector over the poller's snapshots.

It only reads memory: prometheus_client renders synchronously on the event loop, so any
I/O here would stall every scrape and every poll.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import __version__
from .state import ExporterState

CACHED = "Cached from the last successful poll of the space usage overview."


class KooDriveCollector(Collector):
    def __init__(self, state: ExporterState) -> None:
        self._state = state

    def describe(self) -> Iterator[Metric]:
        # Returning nothing stops the registry from calling collect() at registration time.
        return iter(())

    def collect(self) -> Iterator[Metric]:
        space = {
            "capacity": GaugeMetricFamily(
                "koodrive_space_capacity_bytes",
                f"Total space quota (totalCapacity) in bytes. {CACHED}",
                labels=["account"],
            ),
            "used": GaugeMetricFamily(
                "koodrive_space_used_bytes",
                f"Total space used (totalUsed) in bytes; may exceed capacity. {CACHED}",
                labels=["account"],
            ),
            "allocated": GaugeMetricFamily(
                "koodrive_space_allocated_bytes",
                f"Total space allocated to users and departments (totalAllocation) in bytes. "
                f"{CACHED}",
                labels=["account"],
            ),
        }
        up = GaugeMetricFamily(
            "koodrive_up",
            "1 if the last poll of the account succeeded, 0 otherwise.",
            labels=["account"],
        )
        last_success = GaugeMetricFamily(
            "koodrive_last_success_timestamp_seconds",
            "Unix time when the last successful poll of the account started.",
            labels=["account"],
        )
        last_duration = GaugeMetricFamily(
            "koodrive_last_poll_duration_seconds",
            "Duration of the last poll of the account, successful or not.",
            labels=["account"],
        )
        errors = CounterMetricFamily(
            "koodrive_poll_errors",
            "Failed polls by reason (timeout, connection, tls, auth, rate_limited, http_error, "
            "api_error, invalid_response, internal).",
            labels=["account", "reason"],
        )
        for name, account in self._state.accounts.items():
            last = account.last
            if last is None:
                continue
            up.add_metric([name], 1.0 if last.ok else 0.0)
            last_duration.add_metric([name], last.duration)
            for reason, count in account.errors.items():
                errors.add_metric([name, reason.value], count)
            success = account.last_success
            if success is None or success.usage is None:
                continue
            last_success.add_metric([name], success.started_at)
            space["capacity"].add_metric([name], success.usage.capacity)
            space["used"].add_metric([name], success.usage.used)
            space["allocated"].add_metric([name], success.usage.allocated)

        histogram = self._state.poll_duration
        duration = HistogramMetricFamily(
            "koodrive_poll_duration_seconds",
            "Duration of polls of the space usage overview, all accounts, successful or not.",
            buckets=histogram.cumulative(),
            sum_value=histogram.total,
        )
        build = GaugeMetricFamily(
            "koodrive_exporter_build_info",
            "Always 1; labels tell the exporter and Python versions.",
            labels=["version", "python_version"],
        )
        build.add_metric([__version__, platform.python_version()], 1.0)
        yield from space.values()
        yield from (up, last_success, last_duration, errors, duration, build)
