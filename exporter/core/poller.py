"""The scheduler: one heap of due polls, one timer, a bounded number of polls in flight.

Polling on a timer, not on scrape, keeps HA Prometheus pairs and probes from multiplying
upstream calls, and keeps every scrape independent of the network (docs/design.md section
2). Which endpoint a collector polls is data (core/endpoints.py); the scheduler does not care.

Every collector of every account is one job in a heap ordered by due time, and one timer
on the event loop wakes at the earliest. A task exists only while an attempt runs: the wait
for the next slot and a retry's backoff are the job's place in the heap, not a sleeping
task, so 10,000 idle accounts are 10,000 heap entries, not 10,000 tasks with a future and a
timer handle each (whose churn once made full garbage collections stall the loop). A job
is in the heap or running, never both, so two polls of one collector never overlap and a
hung account only ever delays itself; at most `max_concurrency` attempts run at once, the
due ones waiting in the heap in due order. A reload is a change to the heap: removed and
changed accounts' jobs are cancelled, new ones pushed.

The account list is the state's: the poller schedules each collector it lists and, on a
reload, is the one that changes the list.

Time comes from outside. Due times, the timer and timeouts follow the running event loop's
clock (loop.time, loop.call_at, asyncio.timeout), so whoever runs the poller chooses the
clock: production the real loop, the tests a loop on virtual time (tests/virtual_clock.py)
where exact schedules can be asserted without waiting. The two readings that are not
about scheduling, a poll's duration and its wall-clock timestamp, are injected callables.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from .diagnosis import hint_for
from .endpoints import ENDPOINTS, Endpoint
from .model import FetchError, Reason, Snapshot
from .settings import DEFAULT_MAX_CONCURRENCY, AccountConfig, AppAuth, CollectorConfig
from .state import ExporterState

# The first round is spread over a few seconds, not over a whole interval: readiness should
# come quickly, but a thousand accounts must not all fire in the same millisecond. The
# window grows with the account count (STARTUP_RATE first polls a second), up to a cap.
STARTUP_RATE = 1000.0
STARTUP_WINDOW_MAX = 10.0
# The client enforces the per-request timeout; this outer guard only exists so that a bug
# below it can never wedge an account's polls.
TIMEOUT_GRACE = 1.0
# A wake of the timer starts at most BATCH due polls and leaves the rest to the next turn of
# the loop: a poll's first steps take ~0.2 ms, and 50 started at once (after a pause of the
# loop, or a reload) would hold a probe for over 10 ms.
BATCH = 16
# A reload compares and adopts the accounts in slices of this many, the loop free between.
RELOAD_STEP = 1000
# A poll is never deferred by a Retry-After for longer than the account's interval or this,
# whichever is longer: ten minutes is a generous back-off for a rate limiter, and an account
# that stays dark for a day because of one bad header is an outage of the exporter.
RETRY_AFTER_CAP = 600.0
# What a failed poll's snapshot takes from the error of its last attempt.
FAILURE_FIELDS = ("reason", "detail", "retry_after", "status", "api_code", "message")


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


@dataclass(eq=False, slots=True)
class _Poll:
    """One poll of one collector of one account, across its attempts (retries included)."""

    account: AccountConfig
    collector: CollectorConfig
    endpoint: Endpoint
    started: float  # the loop's clock when the first attempt began
    started_at: float  # the wall clock then
    t0: float  # the stopwatch then
    failures: list[Reason] = field(default_factory=list)
    retries: int = 0
    rotation_retried: bool = False


@dataclass(eq=False, slots=True)
class _Job:
    """A collector of an account in the schedule: in the heap (with the poll whose retry is
    due, if any) or running as `task`; `gone` once a reload or stop removed it, which makes
    its heap entry void (entries are not searched for and taken out, but skipped)."""

    account: AccountConfig
    collector: CollectorConfig
    poll: _Poll | None = None
    task: asyncio.Task[Snapshot | float] | None = None
    gone: bool = False


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
        self._max_concurrency = max_concurrency
        # Each account's jobs (one per collector), and the heap of (due, order, job).
        self._jobs: dict[str, list[_Job]] = {}
        self._heap: list[tuple[float, int, _Job]] = []
        self._order = itertools.count()  # ties in due time go first come, first served
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        # Where the slots of every account are counted from (loop time at start), and each
        # account's place in them (0 <= phase < 1).
        self._anchor = 0.0
        self._phases: dict[str, float] = {}

    def start(self) -> None:
        accounts = [state.config for state in self._state.accounts.values()]
        if self._startup_window is None:
            self._startup_window = startup_window(len(accounts))
        self._anchor = asyncio.get_running_loop().time()
        self._place(account.name for account in accounts)
        for account in accounts:
            self._add(account)
        self._schedule()

    def _place(self, names: Iterable[str]) -> None:
        """Every account's slot by its place in the list: spread evenly, in body order. On
        a reload every account moves to its new place (at its next poll), so added ones do
        not pile onto the slots of those already there."""
        order = list(names)
        self._phases = {name: index / len(order) for index, name in enumerate(order)}

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        await self._cancel(list(self._jobs))  # which leaves the heap empty

    async def update(
        self, accounts: Iterable[AccountConfig], max_concurrency: int | None = None
    ) -> tuple[int, int, int]:
        """Adopt a reloaded account list; returns (added, removed, changed).

        Unchanged accounts keep their place in the heap and their data; changed ones start
        afresh (keeping their last values until the new config has polled); removed ones
        stop, a poll of theirs in flight cancelled.
        """
        if max_concurrency is not None:
            self._max_concurrency = max_concurrency
        old = {name: state.config for name, state in self._state.accounts.items()}
        new = {account.name: account for account in accounts}
        # In slices, as the comparisons and the new list take tens of ms at 10,000 accounts.
        changed = []
        for index, (name, account) in enumerate(new.items(), 1):
            if name in old and old[name] is not account and old[name] != account:
                changed.append(name)
            if index % RELOAD_STEP == 0:
                await asyncio.sleep(0)
        removed = [name for name in old if name not in new]
        added = [name for name in new if name not in old]
        unchanged = [name for name in new if name in old and name not in changed]
        await self._cancel(removed + changed)
        self._source.forget([old[n] for n in removed + changed], [old[n] for n in unchanged])
        for _ in self._state.adopt(new.values(), RELOAD_STEP):
            await asyncio.sleep(0)
        self._place(new)
        for name in added + changed:
            self._add(new[name])
        self._schedule()
        return len(added), len(removed), len(changed)

    def _add(self, account: AccountConfig) -> None:
        """Schedule the account's first polls within the startup window."""
        now = asyncio.get_running_loop().time()
        window = self._startup_window or 0.0
        self._jobs[account.name] = jobs = [_Job(account, c) for c in account.collectors]
        for job in jobs:
            self._push(job, now + first_delay(self._rng, job.collector.interval, window))

    async def _cancel(self, names: list[str]) -> None:
        tasks = []
        for job in (job for name in names for job in self._jobs.pop(name, ())):
            job.gone = True
            if job.task is not None:
                job.task.cancel()
                tasks.append(job.task)
        if names:  # the void entries go now: reloads in a row must not grow the heap
            self._heap = [entry for entry in self._heap if not entry[2].gone]
            heapq.heapify(self._heap)
        await asyncio.gather(*tasks, return_exceptions=True)

    def _push(self, job: _Job, due: float) -> None:
        heapq.heappush(self._heap, (due, next(self._order), job))

    def _wake(self) -> None:
        """The timer: start the due polls while slots are free, at most BATCH a turn."""
        self._timer, self._timer_at = None, math.inf
        now, heap = asyncio.get_running_loop().time(), self._heap
        for _ in range(BATCH):
            if not heap or heap[0][0] > now or self._running >= self._max_concurrency:
                break
            job = heapq.heappop(heap)[2]
            if not job.gone:
                self._launch(job)
        self._schedule()

    def _schedule(self) -> None:
        """Set the timer for the earliest job, unless it is set for earlier already; a due
        time past (polls waiting for a slot, or a batch's rest) fires on the next turn."""
        heap = self._heap
        while heap and heap[0][2].gone:
            heapq.heappop(heap)
        if not heap or self._running >= self._max_concurrency or heap[0][0] >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = heap[0][0]
        self._timer = asyncio.get_running_loop().call_at(self._timer_at, self._wake)

    def _launch(self, job: _Job) -> None:
        poll, job.poll = job.poll or self._begin(job.account, job.collector), None
        name = f"poll:{job.account.name}:{job.collector.name}"
        job.task = asyncio.create_task(self._step(poll), name=name)
        job.task.add_done_callback(functools.partial(self._landed, job, poll))
        self._running += 1

    def _landed(self, job: _Job, poll: _Poll, task: asyncio.Task[Snapshot | float]) -> None:
        """An attempt ended: the job goes back into the heap, due at its retry or its next
        slot, and a freed slot starts the next due poll."""
        self._running -= 1
        job.task = None
        if not job.gone and not task.cancelled():
            outcome = task.result()  # _step raises nothing but cancellation
            now = asyncio.get_running_loop().time()
            if isinstance(outcome, Snapshot):
                self._push(job, self._next_due(poll, outcome, now))
            else:
                job.poll = poll
                self._push(job, now + outcome)
        self._schedule()

    def _next_due(self, poll: _Poll, snapshot: Snapshot, now: float) -> float:
        """The first round ran within seconds for a quick readiness; from the second on each
        poll takes the account's slot at least half an interval after the last one started
        (0.5-1.5 intervals after the first; exactly one interval after a poll that started
        in its slot; at once after one that overran its slot)."""
        interval = poll.collector.interval
        phase = self._phases.get(poll.account.name, 0.0)
        due = next_slot(poll.started + interval / 2, self._anchor, phase, interval)
        if snapshot.retry_after is not None:  # never undercut the upstream's wish...
            due = max(due, now + self._deferral(poll, snapshot.retry_after))
        return due

    def _deferral(self, poll: _Poll, requested: float) -> float:
        """...but never wait longer than the cap: one hostile header must not silence an
        account for a day. Deferrals beyond the interval are logged, as they leave a gap."""
        interval = poll.collector.interval
        applied = min(requested, retry_after_cap(interval, self._retry_after_cap))
        if requested > interval:
            self._log.warning(
                "poll_deferred",
                account=poll.account.name,
                collector=poll.collector.name,
                retry_after_s=requested,
                applied_s=applied,
                capped=applied < requested,
            )
        return applied

    def _begin(self, account: AccountConfig, collector: CollectorConfig) -> _Poll:
        endpoint = self._endpoints[collector.name]
        now = asyncio.get_running_loop().time()
        return _Poll(account, collector, endpoint, now, self._wall_clock(), self._stopwatch())

    async def poll_once(
        self, account: AccountConfig, collector: CollectorConfig | None = None
    ) -> Snapshot:
        """Poll one collector (by default the account's first) now, retries included,
        outside the schedule and its bound on polls in flight: for tests and one-off checks.
        Never raises (but cancel)."""
        poll = self._begin(account, collector or account.collectors[0])
        while True:
            outcome = await self._step(poll)
            if isinstance(outcome, Snapshot):
                return outcome
            await asyncio.sleep(outcome)

    async def _step(self, poll: _Poll) -> Snapshot | float:
        """One attempt of a poll: the poll's snapshot (recorded) when it is over, or the
        seconds to wait before its next attempt.

        Transient failures are retried with exponential backoff and full jitter, waiting
        at least as long as any Retry-After, and only while the retry still fits in the
        interval. Auth failures are retried once, at once, and only if the secret file
        changed (a rotation the stat check had not yet seen); otherwise they wait for the
        next interval, as hammering a refused credential helps nobody.
        """
        account, collector, endpoint = poll.account, poll.collector, poll.endpoint
        trace_id = self._source.new_trace_id()
        try:
            result = await self._attempt(account, endpoint, trace_id)
        except FetchError as error:
            poll.failures.append(error.reason)
            if error.reason is Reason.AUTH and not poll.rotation_retried:
                poll.rotation_retried = True
                if await self._secret_rotated(account):
                    self._log_attempt(poll, trace_id, error, 0.0, "secret file changed")
                    return 0.0
            if error.transient and poll.retries < account.retries:
                delay = backoff_delay(
                    self._rng, account.backoff, poll.retries, collector.interval / 2
                )
                if error.retry_after is not None:
                    delay = max(delay, error.retry_after)
                now = asyncio.get_running_loop().time()
                if now + delay + account.timeout <= poll.started + collector.interval:
                    self._log_attempt(poll, trace_id, error, delay, "retrying")
                    poll.retries += 1
                    return delay
                # else the retry would run into the next scheduled poll
            return self._finish(poll, trace_id, None, error)
        return self._finish(poll, trace_id, result, None)

    def _finish(
        self, poll: _Poll, trace_id: str, result: object, error: FetchError | None
    ) -> Snapshot:
        account = poll.account
        clock_skew = self._source.clock_skew(account)
        failure: dict[str, Any] = {}
        if error is not None:  # what the last attempt said, and the hint it leads to
            failure = {name: getattr(error, name) for name in FAILURE_FIELDS}
            failure["hint"] = hint_for(
                error,
                app_auth=isinstance(account.auth, AppAuth),
                clock_skew=clock_skew,
                x_date_margin=account.x_date_margin,
            )
        snapshot = Snapshot(
            account=account.name,
            collector=poll.endpoint.name,
            started_at=poll.started_at,
            duration=self._stopwatch() - poll.t0,
            trace_id=trace_id,
            result=result,
            failures=tuple(poll.failures),
            attempts=len(poll.failures) + (error is None),
            clock_skew=clock_skew,
            **failure,
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
            async with asyncio.timeout(account.timeout + self._timeout_grace):
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
        self, poll: _Poll, trace_id: str, error: FetchError, delay: float, action: str
    ) -> None:
        self._log.debug(
            "poll_attempt_failed",
            account=poll.account.name,
            collector=poll.endpoint.name,
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
