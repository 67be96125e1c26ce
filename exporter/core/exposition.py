"""The /metrics body, pre-rendered: scrapes serve cached bytes, rendering follows the data.

prometheus_client renders the whole registry on every scrape (13 ms for 1,000 accounts on
the reference machine, synchronously on the event loop). Here each account's lines are
rendered when its snapshot changes, in chunks of CHUNK accounts, so a poll re-renders one
chunk and a scrape only joins ready-made bytes. Space gauges leave the body when they go
stale, which a deadline heap notices without looking at every account. The process and GC
metrics come from prometheus_client's own collectors, refreshed at most once a second.
The text follows the Prometheus exposition format 0.0.4; samples carry no timestamps.
"""

from __future__ import annotations

import gzip
import heapq
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector

from .. import __version__
from .state import AccountState, ExporterState

CHUNK = 256
PROCESS_TTL = 1.0
GZIP_LEVEL = 6
CACHED = "Cached from the last successful poll of the space usage overview"
STALE = "dropped when that poll is older than stale_after"
REASONS = (
    "timeout, connection, tls, auth, rate_limited, http_error, api_error, invalid_response, "
    "internal"
)


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: str
    help: str

    def header(self) -> str:
        text = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        return f"# HELP {self.name} {text}\n# TYPE {self.name} {self.kind}\n"


# The per-account families, in output order. The first three are the space gauges.
CAPACITY = Family(
    "koodrive_space_capacity_bytes",
    "gauge",
    f"Total space quota (totalCapacity) in bytes. {CACHED}; {STALE}.",
)
USED = Family(
    "koodrive_space_used_bytes",
    "gauge",
    f"Total space used (totalUsed) in bytes; may exceed capacity. {CACHED}; {STALE}.",
)
ALLOCATED = Family(
    "koodrive_space_allocated_bytes",
    "gauge",
    f"Total space allocated to users and departments (totalAllocation) in bytes. "
    f"{CACHED}; {STALE}.",
)
UP = Family("koodrive_up", "gauge", "1 if the last poll of the account succeeded, 0 otherwise.")
LAST_SUCCESS = Family(
    "koodrive_last_success_timestamp_seconds",
    "gauge",
    "Unix time when the last successful poll of the account started.",
)
LAST_DURATION = Family(
    "koodrive_last_poll_duration_seconds",
    "gauge",
    "Duration of the last poll of the account, retries included, successful or not.",
)
SKEW = Family(
    "koodrive_clock_skew_seconds",
    "gauge",
    "Server minus local clock, estimated from the Date header of KooDrive responses; "
    "X-Date is signed with the corrected time.",
)
ERRORS = Family(
    "koodrive_poll_errors_total",
    "counter",
    f"Failed requests, retries included, by reason ({REASONS}).",
)
ACCOUNT_FAMILIES = (CAPACITY, USED, ALLOCATED, UP, LAST_SUCCESS, LAST_DURATION, SKEW, ERRORS)
SPACE = 3  # ACCOUNT_FAMILIES[:SPACE] go stale

DURATION = Family(
    "koodrive_poll_duration_seconds",
    "histogram",
    "Duration of polls of the space usage overview, all accounts, retries included.",
)
BUILD = Family(
    "koodrive_exporter_build_info",
    "gauge",
    "Always 1; labels tell the exporter and Python versions.",
)
RELOAD_OK = Family(
    "koodrive_exporter_config_last_reload_successful",
    "gauge",
    "1 if the last configuration reload succeeded (or none was tried), 0 otherwise.",
)
RELOAD_TIME = Family(
    "koodrive_exporter_config_last_reload_success_timestamp_seconds",
    "gauge",
    "Unix time of the last successful configuration load or reload.",
)
SHARD = Family(
    "koodrive_exporter_shard_accounts",
    "gauge",
    "Accounts this replica polls (all configured accounts when not sharded).",
)


def label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def number(value: float) -> str:
    """Integers exactly (byte counts above 2^53 stay exact), floats as Python's repr."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def account_lines(name: str, account: AccountState) -> tuple[str, ...]:
    """One string per family in ACCOUNT_FAMILIES: this account's lines for it, or ""."""
    last = account.last
    if last is None:
        return ("",) * len(ACCOUNT_FAMILIES)
    label = f'{{account="{label_value(name)}"}} '
    success = account.last_success
    usage = success.usage if success is not None else None
    errors = "".join(
        f'{ERRORS.name}{{account="{label_value(name)}",reason="{reason.value}"}} {count}\n'
        for reason, count in account.errors.items()
    )
    return (
        f"{CAPACITY.name}{label}{usage.capacity}\n" if usage else "",
        f"{USED.name}{label}{usage.used}\n" if usage else "",
        f"{ALLOCATED.name}{label}{usage.allocated}\n" if usage else "",
        f"{UP.name}{label}{1 if last.ok else 0}\n",
        f"{LAST_SUCCESS.name}{label}{number(success.started_at)}\n" if success else "",
        f"{LAST_DURATION.name}{label}{number(last.duration)}\n",
        f"{SKEW.name}{label}{number(last.clock_skew)}\n" if last.clock_skew is not None else "",
        errors,
    )


class Exposition:
    """Owns the cached body; `render()` returns it, rebuilding only what changed."""

    def __init__(
        self,
        state: ExporterState,
        *,
        clock: Callable[[], float] = time.time,
        shard_accounts: Callable[[], int] | None = None,
        process_metrics: bool = True,
    ) -> None:
        self._state = state
        self._clock = clock
        self._shard_accounts = shard_accounts
        self._process = CollectorRegistry(auto_describe=False)
        if process_metrics:
            ProcessCollector(registry=self._process)
            GCCollector(registry=self._process)
        self._process_bytes = b""
        self._process_until = 0.0
        self._layout = -1
        self._version = -1
        self._names: list[str] = []
        self._index: dict[str, int] = {}
        self._lines: list[tuple[str, ...]] = []
        self._chunks: list[list[bytes]] = []  # [family][chunk] -> bytes
        self._dirty: set[int] = set()
        self._stale_heap: list[tuple[float, str]] = []
        self._body = b""
        self._gzipped: bytes | None = None
        self._valid_until = 0.0
        self._headers = [family.header().encode() for family in ACCOUNT_FAMILIES]
        self._build_line = (
            BUILD.header() + f'{BUILD.name}{{python_version="{platform.python_version()}",'
            f'version="{label_value(__version__)}"}} 1\n'
        )

    def render(self, *, gzipped: bool = False) -> bytes:
        now = self._clock()
        state = self._state
        if (
            state.layout != self._layout
            or state.version != self._version
            or now > self._valid_until
            or now >= self._process_until
        ):
            self._rebuild(now)
        if not gzipped:
            return self._body
        if self._gzipped is None:
            self._gzipped = gzip.compress(self._body, compresslevel=GZIP_LEVEL, mtime=0)
        return self._gzipped

    def _rebuild(self, now: float) -> None:
        state = self._state
        if state.layout != self._layout:
            self._relayout(now)
        for name in state.changed:
            index = self._index.get(name)
            if index is not None:
                self._refresh(index, now)
        state.changed.clear()
        while self._stale_heap and self._stale_heap[0][0] < now:
            _, name = heapq.heappop(self._stale_heap)
            index = self._index.get(name)
            if index is not None:  # its lines are unchanged; its chunk filters them anew
                self._dirty.add(index // CHUNK)
        for chunk in self._dirty:
            self._render_chunk(chunk, now)
        self._dirty.clear()
        if now >= self._process_until:
            self._process_bytes = generate_latest(self._process)
            self._process_until = now + PROCESS_TTL
        parts: list[bytes] = []
        for header, chunks in zip(self._headers, self._chunks, strict=True):
            parts.append(header)
            parts.extend(chunks)
        parts.append(self._global_text().encode())
        parts.append(self._process_bytes)
        self._body = b"".join(parts)
        self._gzipped = None
        self._layout, self._version = state.layout, state.version
        self._valid_until = self._stale_heap[0][0] if self._stale_heap else math.inf

    def _relayout(self, now: float) -> None:
        self._names = list(self._state.accounts)
        self._index = {name: i for i, name in enumerate(self._names)}
        self._lines = [("",) * len(ACCOUNT_FAMILIES)] * len(self._names)
        chunks = (len(self._names) + CHUNK - 1) // CHUNK
        self._chunks = [[b""] * chunks for _ in ACCOUNT_FAMILIES]
        self._stale_heap = []
        for index in range(len(self._names)):
            self._refresh(index, now)

    def _refresh(self, index: int, now: float) -> None:
        name = self._names[index]
        account = self._state.accounts[name]
        self._lines[index] = account_lines(name, account)
        deadline = account.space_deadline()
        if deadline is not None and deadline >= now:  # a passed one renders stale right away
            heapq.heappush(self._stale_heap, (deadline, name))
        self._dirty.add(index // CHUNK)

    def _render_chunk(self, chunk: int, now: float) -> None:
        rows = range(chunk * CHUNK, min((chunk + 1) * CHUNK, len(self._names)))
        for family in range(len(ACCOUNT_FAMILIES)):
            pieces = []
            for index in rows:
                if family < SPACE and not self._is_fresh(index, now):
                    continue
                pieces.append(self._lines[index][family])
            self._chunks[family][chunk] = "".join(pieces).encode()

    def _is_fresh(self, index: int, now: float) -> bool:
        deadline = self._state.accounts[self._names[index]].space_deadline()
        return deadline is not None and now <= deadline

    def _global_text(self) -> str:
        state = self._state
        histogram = state.poll_duration
        lines = [DURATION.header()]
        lines += [
            f'{DURATION.name}_bucket{{le="{le}"}} {count}\n' for le, count in histogram.cumulative()
        ]
        lines.append(f"{DURATION.name}_sum {number(histogram.total)}\n")
        lines.append(f"{DURATION.name}_count {sum(histogram.counts)}\n")
        lines.append(self._build_line)
        lines.append(RELOAD_OK.header())
        lines.append(f"{RELOAD_OK.name} {1 if state.reload.successful else 0}\n")
        lines.append(RELOAD_TIME.header())
        lines.append(f"{RELOAD_TIME.name} {number(state.reload.last_success)}\n")
        owned = self._shard_accounts() if self._shard_accounts else len(state.accounts)
        lines.append(SHARD.header())
        lines.append(f"{SHARD.name} {owned}\n")
        return "".join(lines)
