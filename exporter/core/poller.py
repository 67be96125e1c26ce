"""The asyncio scheduler: one loop per collector of each account, polling in the background.

Polling on a timer, not on scrape, keeps HA Prometheus pairs and probes from multiplying
upstream calls, and keeps every scrape independent of the network (docs/design.md section
2). Each loop awaits its own poll, retries included, before scheduling the next, so two
polls of one collector never overlap, and a hung account only ever delays itself. Which
endpoint a collector polls is data (core/endpoints.py); the loops do not care.

The account list is the state's: the poller starts a loop for each collector it lists and,
on a reload, is the one that changes the list, stopping and starting loops to match.

Time comes from outside. Schedules, sleeps and timeouts follow the running event loop's
clock (loop.time, asyncio.sleep, asyncio.timeout), so whoever runs the poller chooses the
clock: production the real loop, the tests a loop on virtual time (tests/virtual_clock.py)
where exact schedules can be asserted without waiting. The two readings that are not
about scheduling, a poll's duration and its wall-clock timestamp, are injected callables.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import structlog

from .config import DEFAULT_MAX_CONCURRENCY, AccountConfig, AppAuth, CollectorConfig
from .diagnosis import hint_for
from .endpoints import ENDPOINTS, Endpoint
from .model import FetchError, Reason, Snapshot
from .state import ExporterState

# The first round is spread over a few seconds, not over a whole interval: readiness should
# come quickly, but a thousand accounts must not all fire in the same millisecond. The
# window grows with the account count (STARTUP_RATE first polls a second), up to a cap.
STARTUP_RATE = 1000.0
STARTUP_WINDOW_MAX = 10.0
# The client enforces the per-request timeout; this outer guard only exists so that a bug
# below it can never wedge an account's loop.
TIMEOUT_GRACE = 1.0
# Due times are rounded up to a tick (at most 100 ms, and 5 % of the interval) so that polls
# falling close together wake the event loop once, as a batch, instead of once each: with
# thousands of accounts this cuts the CPU per poll by a third. A batch is also kept to about
# BATCH polls (the tick shrinks as the accounts' slots get denser): the loop runs a batch's
# first steps back to back, ~0.2 ms a poll, and 50 at once (10,000 accounts at 20 s) would
# hold a probe for over 10 ms.
TICK = 0.1
BATCH = 16
# A poll is never deferred by a Retry-After for longer than the account's interval or this,
# whichever is longer: ten minutes is a generous back-off for a rate limiter, and an account
# that stays dark for a day because of one bad header is an outage of the exporter.
RETRY_AFTER_CAP = 600.0


class Source(Protocol):
    """Where results come from: the KooDrive client, or a test's fake."""

    def new_trace_id(self) -> str: ...

    async def fetch(self, account: AccountConfig, endpoint: Endpoint, trace_id: str) -> object:
        """The endpoint's parsed answer for the account; FetchError when there is none."""
        ...

    async def credentials_changed(self, account: AccountConfig) -> bool: ...

    def clock_skew(self, account: AccountConfig) -> float | None: ...

    def drain_notices(self, account: AccountConfig) -> list[tuple[str, dict[str, object]]]:
        """Warnings (event name, fields) about the account's upstream since the last call;
        the source has no logger of its own, so the poller writes them."""
        ...

    def forget(self, gone: Iterable[AccountConfig], keep: Iterable[AccountConfig]) -> None:
        """Drop what was cached for `gone` (removed, or the old configs of changed accounts),
        except what the `keep` accounts (configured before and unchanged) use too: a secret
        must not outlive its account in memory, and a changed account starts afresh."""
        ...


def retry_after_cap(interval: float, cap: float = RETRY_AFTER_CAP) -> float:
    """Longest a Retry-After may defer an account's next poll: its interval, or `cap`."""
    return max(interval, cap)


def startup_window(accounts: int) -> float:
    """One account starts at once; 1,000 within a second; 10,000 within ten."""
    return min(STARTUP_WINDOW_MAX, accounts / STARTUP_RATE)


def first_delay(rng: random.Random, interval: float, window: float) -> float:
    return rng.uniform(0.0, min(window, interval))


def next_slot(after: float, anchor: float, phase: float, interval: float) -> float:
    """The first of an account's slots, anchor + (phase + k) * interval, at or after `after`.

    Fixed slots, as Prometheus gives each target a fixed offset in its scrape interval:
    accounts spread evenly by their place in the list (phase = index / count) and keep that
    place, so polls land in list order, which is the order of the body. The accounts whose
    polls land between two scrapes are then neighbours in the body, and a scrape re-renders
    and recompresses only their chunks (core/exposition.py), not all of them.
    """
    rounds = math.ceil((after - anchor) / interval - phase)
    return anchor + (phase + rounds) * interval


def backoff_delay(rng: random.Random, base: float, retry: int, cap: float) -> float:
    """Exponential backoff with full jitter: uniform over [0, min(cap, base * 2**retry)]."""
    return rng.uniform(0.0, min(cap, base * 2.0**retry))


class Poller:
    def __init__(
        self,
        source: Source,
        state: ExporterState,
        log: structlog.typing.FilteringBoundLogger,
        *,
        rng: random.Random | None = None,
        startup_window: float | None = None,
        timeout_grace: float = TIMEOUT_GRACE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        wall_clock: Callable[[], float] = time.time,
        retry_after_cap: float = RETRY_AFTER_CAP,
        stopwatch: Callable[[], float] = time.perf_counter,
        endpoints: Mapping[str, Endpoint] = ENDPOINTS,
    ) -> None:
        """`wall_clock` stamps when a poll started and `stopwatch` times it; both are
        injectable so a test on virtual time sees the durations its loop simulated."""
        self._source = source
        self._state = state
        self._log = log
        self._endpoints = endpoints
        self._rng = rng or random.Random()  # noqa: S311 - scheduling jitter, not security
        self._startup_window = startup_window  # None: startup_window(len(accounts))
        self._timeout_grace = timeout_grace
        self._wall_clock = wall_clock
        self._stopwatch = stopwatch
        self._retry_after_cap = retry_after_cap
        # One loop per (account, collector), the account's loops under its name.
        self._tasks: dict[str, list[asyncio.Task[None]]] = {}
        # Where the slots of every account's loop are counted from (loop time at start),
        # and each account's place in them (0 <= phase < 1).
        self._anchor = 0.0
        self._phases: dict[str, float] = {}
        # Requests in flight over all accounts: thousands of accounts must not open
        # thousands of connections at once (backoff sleeps do not hold a slot).
        self._slots = asyncio.Semaphore(max_concurrency)
        self._max_concurrency = max_concurrency

    def start(self) -> None:
        accounts = [state.config for state in self._state.accounts.values()]
        if self._startup_window is None:
            self._startup_window = startup_window(len(accounts))
        self._anchor = asyncio.get_running_loop().time()
        self._place(account.name for account in accounts)
        for account in accounts:
            self._start(account)

    def _place(self, names: Iterable[str]) -> None:
        """Every account's slot by its place in the list: spread evenly, in body order. On
        a reload every account moves to its new place (at its next poll), so added ones do
        not pile onto the slots of those already there."""
        order = list(names)
        self._phases = {name: index / len(order) for index, name in enumerate(order)}

    async def stop(self) -> None:
        await self._cancel(list(self._tasks))

    async def update(
        self, accounts: Iterable[AccountConfig], max_concurrency: int | None = None
    ) -> tuple[int, int, int]:
        """Adopt a reloaded account list; returns (added, removed, changed).

        Unchanged accounts keep their loops and their data; changed ones restart their loops
        (keeping their last values until the new config has polled); removed ones stop.
        """
        if max_concurrency is not None and max_concurrency != self._max_concurrency:
            self._slots = asyncio.Semaphore(max_concurrency)
            self._max_concurrency = max_concurrency
        old = {name: state.config for name, state in self._state.accounts.items()}
        new = {account.name: account for account in accounts}
        removed = [name for name in old if name not in new]
        changed = [name for name, account in new.items() if name in old and old[name] != account]
        added = [name for name in new if name not in old]
        unchanged = [name for name in new if name in old and name not in changed]
        await self._cancel(removed + changed)
        self._source.forget([old[n] for n in removed + changed], [old[n] for n in unchanged])
        self._state.set_accounts(new.values())
        self._place(new)
        for name in added + changed:
            self._start(new[name])
        return len(added), len(removed), len(changed)

    def _start(self, account: AccountConfig) -> None:
        self._tasks[account.name] = [
            asyncio.create_task(
                self._run(account, collector), name=f"poll:{account.name}:{collector.name}"
            )
            for collector in account.collectors
        ]

    async def _cancel(self, names: list[str]) -> None:
        tasks = [task for name in names for task in self._tasks.pop(name, ())]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, account: AccountConfig, collector: CollectorConfig) -> None:
        loop = asyncio.get_running_loop()
        interval = collector.interval
        window = self._startup_window if self._startup_window is not None else 0.0
        await asyncio.sleep(first_delay(self._rng, interval, window))
        while True:
            started = loop.time()
            snapshot = await self.poll_once(account, collector)
            # The first round ran within seconds for a quick readiness; from the second on
            # each poll takes the account's slot at least half an interval after the last
            # one started (0.5-1.5 intervals after the first; exactly one interval after a
            # poll that started in its slot; at once after one that overran its slot).
            phase = self._phases.get(account.name, 0.0)
            due = next_slot(started + interval / 2, self._anchor, phase, interval)
            if snapshot.retry_after is not None:  # never undercut the upstream's wish...
                deferral = self._deferral(account, collector, snapshot.retry_after)
                due = max(due, loop.time() + deferral)
            tick = min(TICK, interval / 20, BATCH * interval / max(1, len(self._phases)))
            due = math.ceil(due / tick - 1e-9) * tick  # a slot on a tick (give or take an ulp)
            await asyncio.sleep(max(0.0, due - loop.time()))

    def _deferral(
        self, account: AccountConfig, collector: CollectorConfig, requested: float
    ) -> float:
        """...but never wait longer than the cap: one hostile header must not silence an
        account for a day. Deferrals beyond the interval are logged, as they leave a gap."""
        applied = min(requested, retry_after_cap(collector.interval, self._retry_after_cap))
        if requested > collector.interval:
            self._log.warning(
                "poll_deferred",
                account=account.name,
                collector=collector.name,
                retry_after_s=requested,
                applied_s=applied,
                capped=applied < requested,
            )
        return applied

    async def poll_once(
        self, account: AccountConfig, collector: CollectorConfig | None = None
    ) -> Snapshot:
        """Poll one collector (by default the account's first), with retries inside its
        interval; never raises (but cancel).

        Transient failures are retried with exponential backoff and full jitter, waiting
        at least as long as any Retry-After, and only while the retry still fits in the
        interval. Auth failures are retried once, at once, and only if the secret file
        changed (a rotation the stat check had not yet seen); otherwise they wait for the
        next interval, as hammering a refused credential helps nobody.
        """
        collector = collector or account.collectors[0]
        endpoint = self._endpoints[collector.name]
        loop = asyncio.get_running_loop()
        started_at = self._wall_clock()
        t0 = self._stopwatch()
        budget_end = loop.time() + collector.interval
        failures: list[Reason] = []
        error: FetchError | None = None
        result: object | None = None
        retries = 0
        rotation_retried = False
        trace_id = ""
        while True:
            trace_id = self._source.new_trace_id()
            try:
                result = await self._attempt(account, endpoint, trace_id)
            except FetchError as exc:
                # Kept across the backoff sleep, so without its traceback and the exception
                # it was raised from: holding no frame, it forms no reference cycle, which a
                # re-freeze of the collector's view (web/server.py) would catch alive.
                error = exc.with_traceback(None)
                error.__cause__ = error.__context__ = None
            else:
                error = None
                break
            failures.append(error.reason)
            if error.reason is Reason.AUTH and not rotation_retried:
                rotation_retried = True
                if await self._secret_rotated(account):
                    why = "secret file changed"
                    self._log_attempt(account, endpoint, trace_id, error, 0.0, why)
                    continue
            if not error.transient or retries >= account.retries:
                break
            delay = backoff_delay(self._rng, account.backoff, retries, collector.interval / 2)
            if error.retry_after is not None:
                delay = max(delay, error.retry_after)
            if loop.time() + delay + account.timeout > budget_end:
                break  # the retry would run into the next scheduled poll
            self._log_attempt(account, endpoint, trace_id, error, delay, "retrying")
            retries += 1
            await asyncio.sleep(delay)

        clock_skew = self._source.clock_skew(account)
        snapshot = Snapshot(
            account=account.name,
            collector=endpoint.name,
            started_at=started_at,
            duration=self._stopwatch() - t0,
            trace_id=trace_id,
            result=result if error is None else None,
            reason=error.reason if error else None,
            detail=error.detail if error else "",
            failures=tuple(failures),
            attempts=len(failures) + (0 if error else 1),
            clock_skew=clock_skew,
            retry_after=error.retry_after if error else None,
        )
        if error is not None:
            snapshot = dataclasses.replace(
                snapshot,
                status=error.status,
                api_code=error.api_code,
                message=error.message,
                hint=hint_for(
                    error,
                    app_auth=isinstance(account.auth, AppAuth),
                    clock_skew=clock_skew,
                    x_date_margin=account.x_date_margin,
                ),
            )
        self._state.record(snapshot)
        for event, fields in self._source.drain_notices(account):
            self._log.warning(event, account=account.name, trace_id=trace_id, **fields)
        self._log_poll(snapshot)
        return snapshot

    async def _secret_rotated(self, account: AccountConfig) -> bool:
        """Whether a re-read found a new secret; bounded, as it reads files (in a thread)
        that may sit on a hung mount, and outside `_attempt`'s timeout."""
        try:
            async with asyncio.timeout(account.timeout):
                return await self._source.credentials_changed(account)
        except TimeoutError:
            return False

    async def _attempt(self, account: AccountConfig, endpoint: Endpoint, trace_id: str) -> object:
        """One request (every page of it), with every failure turned into a FetchError."""
        try:
            async with self._slots, asyncio.timeout(account.timeout + self._timeout_grace):
                return await self._source.fetch(account, endpoint, trace_id)
        except FetchError:
            raise
        except TimeoutError:
            raise FetchError(Reason.TIMEOUT, f"poll exceeded {account.timeout:g}s") from None
        except Exception as exc:
            self._log.exception(
                "poll_internal_error",
                account=account.name,
                collector=endpoint.name,
                trace_id=trace_id,
            )
            # Only the type: an unexpected exception's text is not known to be free of secrets.
            raise FetchError(Reason.INTERNAL, f"unexpected {type(exc).__name__}") from None

    def _log_attempt(
        self,
        account: AccountConfig,
        endpoint: Endpoint,
        trace_id: str,
        error: FetchError,
        delay: float,
        action: str,
    ) -> None:
        self._log.debug(
            "poll_attempt_failed",
            account=account.name,
            collector=endpoint.name,
            trace_id=trace_id,
            reason=str(error.reason),
            detail=error.detail,
            action=action,
            retry_in_s=round(delay, 3),
        )

    def _log_poll(self, snapshot: Snapshot) -> None:
        fields: dict[str, object] = {
            "account": snapshot.account,
            "collector": snapshot.collector,
            "trace_id": snapshot.trace_id,
            "duration_ms": round(snapshot.duration * 1000, 1),
            "attempts": snapshot.attempts,
        }
        if snapshot.reason is None:
            self._log.info("poll", outcome="success", **fields)
        else:
            self._log.warning(
                "poll",
                outcome="error",
                reason=str(snapshot.reason),
                detail=snapshot.detail,
                http_status=snapshot.status,
                api_code=snapshot.api_code,
                message=snapshot.message,
                hint=snapshot.hint.id if snapshot.hint else None,
                **fields,
            )
