"""The asyncio scheduler: one loop per account, polling in the background.

Polling on a timer, not on scrape, keeps HA Prometheus pairs and probes from multiplying
upstream calls, and keeps every scrape independent of the network (design.md). Each account
awaits its own poll before scheduling the next, so two polls of one account never overlap,
and a hung account only ever delays itself.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import structlog

from .config import AccountConfig
from .model import FetchError, Reason, Snapshot, Usage
from .state import ExporterState

# The first round is spread over a few seconds, not over a whole interval: readiness should
# come quickly, but a thousand accounts must not all fire in the same millisecond.
STARTUP_WINDOW = 2.0
JITTER = 0.10
# The client enforces the per-request timeout; this outer guard only exists so that a bug
# below it can never wedge an account's loop.
TIMEOUT_GRACE = 1.0


class OverviewSource(Protocol):
    def new_trace_id(self) -> str: ...

    async def overview(self, account: AccountConfig, trace_id: str) -> Usage: ...


def first_delay(rng: random.Random, interval: float, window: float = STARTUP_WINDOW) -> float:
    return rng.uniform(0.0, min(window, interval))


def next_delay(rng: random.Random, interval: float, jitter: float = JITTER) -> float:
    """The interval with ±jitter, so accounts started together drift apart."""
    return interval * rng.uniform(1.0 - jitter, 1.0 + jitter)


class Poller:
    def __init__(
        self,
        accounts: Iterable[AccountConfig],
        source: OverviewSource,
        state: ExporterState,
        log: structlog.typing.FilteringBoundLogger,
        *,
        rng: random.Random | None = None,
        startup_window: float = STARTUP_WINDOW,
        timeout_grace: float = TIMEOUT_GRACE,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._accounts = tuple(accounts)
        self._source = source
        self._state = state
        self._log = log
        self._rng = rng or random.Random()  # noqa: S311 - scheduling jitter, not security
        self._startup_window = startup_window
        self._timeout_grace = timeout_grace
        self._wall_clock = wall_clock
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for account in self._accounts:
            task = asyncio.create_task(self._run(account), name=f"poll:{account.name}")
            self._tasks.append(task)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _run(self, account: AccountConfig) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(first_delay(self._rng, account.interval, self._startup_window))
        while True:
            started = loop.time()
            await self.poll_once(account)
            due = started + next_delay(self._rng, account.interval)
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def poll_once(self, account: AccountConfig) -> Snapshot:
        """Poll one account, record the outcome and log one line; never raises (but cancel)."""
        trace_id = self._source.new_trace_id()
        started_at = self._wall_clock()
        t0 = time.perf_counter()
        usage: Usage | None = None
        reason: Reason | None = None
        detail = ""
        try:
            async with asyncio.timeout(account.timeout + self._timeout_grace):
                usage = await self._source.overview(account, trace_id)
        except FetchError as exc:
            reason, detail = exc.reason, exc.detail
        except TimeoutError:
            reason, detail = Reason.TIMEOUT, f"poll exceeded {account.timeout:g}s"
        except Exception as exc:
            # Only the type: an unexpected exception's text is not known to be free of secrets.
            reason, detail = Reason.INTERNAL, f"unexpected {type(exc).__name__}"
            self._log.exception("poll_internal_error", account=account.name, trace_id=trace_id)
        duration = time.perf_counter() - t0
        snapshot = Snapshot(
            account=account.name,
            started_at=started_at,
            duration=duration,
            trace_id=trace_id,
            usage=usage.in_bytes(account.kilobyte) if usage is not None else None,
            reason=reason,
            detail=detail,
        )
        self._state.record(snapshot)
        self._log_poll(snapshot)
        return snapshot

    def _log_poll(self, snapshot: Snapshot) -> None:
        fields: dict[str, object] = {
            "account": snapshot.account,
            "trace_id": snapshot.trace_id,
            "duration_ms": round(snapshot.duration * 1000, 1),
        }
        if snapshot.usage is not None:
            self._log.info(
                "poll",
                outcome="success",
                used_bytes=snapshot.usage.used,
                capacity_bytes=snapshot.usage.capacity,
                **fields,
            )
        else:
            self._log.warning(
                "poll",
                outcome="error",
                reason=str(snapshot.reason),
                detail=snapshot.detail,
                **fields,
            )
