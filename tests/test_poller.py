"""The scheduler: no overlap per account, jitter, independence of accounts, snapshots.

Every test that involves time runs on virtual time (virtual_clock.py): a seeded generator
fixes the draws, so these tests assert the exact moment of each poll, retry and timeout,
not a window on the wall clock, and they take no time to wait out.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
import itertools
import random
import time

import pytest
from support import FakeSource, account, polls
from virtual_clock import on_virtual_time

from exporter.core.endpoints import ENDPOINTS, Endpoint
from exporter.core.exposition import Exposition
from exporter.core.model import FetchError, Reason
from exporter.core.poller import (
    BATCH,
    RETRY_AFTER_CAP,
    Poller,
    backoff_delay,
    first_delay,
    next_slot,
    retry_after_cap,
    startup_window,
)
from exporter.core.settings import CollectorConfig
from exporter.core.state import ExporterState

SEED = 3
EPOCH = 1_700_000_000.0  # the wall clock's reading at virtual time 0


def exactly(expected: float | list[float]) -> object:
    """Virtual time is exact but for float rounding (`now + (due - now)` may miss `due` by
    an ulp): a nanosecond of tolerance, which no scheduling bug fits into."""
    return pytest.approx(expected, rel=0, abs=1e-9)


async def run_for(poller: Poller, seconds: float) -> None:
    """Run the poller's loops for a while, then stop them (also when the test fails)."""
    poller.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        await poller.stop()


def make_poller(
    accounts, source, logs, state=None, window: float | None = 0.01, **options
) -> tuple[Poller, ExporterState]:
    """A poller with a seeded generator, timing its polls on the (virtual) loop's clock."""
    loop = asyncio.get_running_loop()
    state = state or ExporterState(accounts)
    poller = Poller(
        source, state, logs.log, rng=random.Random(SEED), startup_window=window,
        stopwatch=loop.time, wall_clock=lambda: EPOCH + loop.time(), **options,
    )  # fmt: skip
    return poller, state


def planned(
    interval: float,
    window: float,
    until: float,
    deferrals: dict[int, float] | None = None,
    retry_draws: dict[int, int] | None = None,
    phase: float = 0.0,
) -> list[float]:
    """When one account's polls should start, if every poll is instant.

    The design's rules restated, drawing from the same seeded generator in the same order
    as the poller: the first poll within the startup window; then each in the account's
    slot (phase + k intervals after the poller started at 0) at least half an interval
    after the last one started; never sooner than poll n's Retry-After deferral
    (`deferrals[n]`). `retry_draws[n]` counts the backoff draws poll n
    makes (a retry may be drawn and then dropped, as it would not fit in the interval).
    """
    deferrals, retry_draws = deferrals or {}, retry_draws or {}
    rng = random.Random(SEED)
    calls = [first_delay(rng, interval, window)]
    while True:
        n = len(calls) - 1
        for _ in range(retry_draws.get(n, 0)):
            rng.random()
        started = calls[-1]
        due = next_slot(started + interval / 2, 0.0, phase, interval)
        if n in deferrals:
            due = max(due, started + deferrals[n])
        if due >= until:
            return calls
        calls.append(due)


def gaps(calls: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(calls)]


def test_startup_window_grows_with_the_account_count() -> None:
    assert startup_window(1) == 0.001
    assert startup_window(1000) == 1.0
    assert startup_window(10_000) == 10.0
    assert startup_window(50_000) == 10.0


def test_first_delay_is_within_the_startup_window_not_the_interval() -> None:
    rng = random.Random(1)
    delays = [first_delay(rng, interval=60, window=2) for _ in range(1000)]
    assert 0 <= min(delays) < 0.1
    assert 1.9 < max(delays) <= 2
    assert max(first_delay(rng, interval=0.5, window=2) for _ in range(100)) <= 0.5


def test_next_slot_is_the_first_slot_at_or_after_a_time() -> None:
    # Slots of an account at phase 0.25 of a 60 s interval counted from 100: 115, 175, ...
    assert next_slot(100.0, 100.0, 0.25, 60.0) == 115.0
    assert next_slot(115.0, 100.0, 0.25, 60.0) == 115.0
    assert next_slot(115.5, 100.0, 0.25, 60.0) == 175.0
    assert next_slot(1000.0, 100.0, 0.25, 60.0) == 1015.0
    assert next_slot(50.0, 100.0, 0.25, 60.0) == 55.0  # before the anchor too


@on_virtual_time
async def test_success_snapshot_is_converted_to_bytes(logs) -> None:
    source = FakeSource()
    source.behaviour["a"] = 0.25  # the request takes a quarter of a second
    poller, state = make_poller([account("a", timeout=1)], source, logs)
    await asyncio.sleep(7)
    snapshot = await poller.poll_once(account("a", timeout=1))
    assert snapshot.ok
    assert snapshot.result is not None
    assert (snapshot.result.allocated, snapshot.result.capacity, snapshot.result.used) == (
        1000,
        10000,
        5000,
    )
    assert (snapshot.started_at, snapshot.duration) == (EPOCH + 7, exactly(0.25))
    assert polls(state, "a").last_success is snapshot
    assert state.ready
    (line,) = logs.events("poll")
    assert line["account"] == "a"
    assert line["outcome"] == "success"
    assert line["trace_id"] == snapshot.trace_id
    assert line["duration_ms"] == 250.0


async def test_the_real_clocks_are_the_defaults(logs) -> None:
    """On the real loop, without injected clocks: timestamps and durations as before."""
    parameters = inspect.signature(Poller).parameters
    assert parameters["wall_clock"].default is time.time
    assert parameters["stopwatch"].default is time.perf_counter
    source = FakeSource()
    source.behaviour["a"] = 0.01
    poller = Poller(source, ExporterState([account("a")]), logs.log)
    wall, counter = time.time(), time.perf_counter()
    snapshot = await poller.poll_once(account("a"))
    assert wall <= snapshot.started_at <= time.time()
    assert 0 < snapshot.duration <= time.perf_counter() - counter


@on_virtual_time
async def test_failure_keeps_the_last_success_and_counts_the_reason(logs) -> None:
    source = FakeSource()
    poller, state = make_poller([account("a")], source, logs)
    good = await poller.poll_once(account("a"))
    source.behaviour["a"] = FetchError(
        Reason.RATE_LIMITED, "HTTP 429", status=429, api_code="429", message="too many\nrequests"
    )
    bad = await poller.poll_once(account("a"))
    assert not bad.ok
    assert bad.reason is Reason.RATE_LIMITED
    assert (bad.status, bad.api_code, bad.message) == (429, "429", "too many requests")
    assert bad.hint is not None
    assert bad.hint.id == "rate_limited"
    assert polls(state, "a").last is bad
    assert polls(state, "a").last_success is good
    assert polls(state, "a").errors == {Reason.RATE_LIMITED: 1}
    assert polls(state, "a").failing_since == bad.started_at
    error_line = logs.events("poll")[-1]
    assert error_line["outcome"] == "error"
    assert error_line["reason"] == "rate_limited"
    assert error_line["level"] == "warning"
    # The same facts as `check` and the landing page: status, code, message, hint.
    assert (error_line["http_status"], error_line["api_code"]) == (429, "429")
    assert (error_line["message"], error_line["hint"]) == ("too many requests", "rate_limited")
    await poller.poll_once(account("a"))
    assert polls(state, "a").failing_since == bad.started_at  # the run goes on
    source.behaviour.pop("a")
    await poller.poll_once(account("a"))
    assert polls(state, "a").failing_since is None


@on_virtual_time
async def test_unexpected_exception_is_internal_and_does_not_kill_the_loop(logs) -> None:
    source = FakeSource()
    source.behaviour["a"] = KeyError("boom")
    poller, state = make_poller([account("a", interval=0.05)], source, logs)
    await run_for(poller, 0.3)
    expected = planned(interval=0.05, window=0.01, until=0.3)
    assert len(expected) >= 3
    assert source.calls["a"] == exactly(expected)  # the loop polled on, on schedule
    assert polls(state, "a").errors == {Reason.INTERNAL: len(expected)}
    assert len(logs.events("poll_internal_error")) == len(expected)


@on_virtual_time
async def test_outer_guard_times_out_a_source_that_ignores_its_timeout(logs) -> None:
    source = FakeSource()
    source.behaviour["a"] = "hang"
    poller, _ = make_poller([account("a")], source, logs, timeout_grace=0.05)
    snapshot = await asyncio.wait_for(poller.poll_once(account("a", timeout=0.05)), 2)
    assert snapshot.reason is Reason.TIMEOUT
    # Given up at exactly the request's timeout plus the grace, not at the 2 s guard.
    assert snapshot.duration == exactly(0.1)
    assert asyncio.get_running_loop().time() == exactly(0.1)


@on_virtual_time
async def test_polls_of_one_account_never_overlap(logs) -> None:
    source = FakeSource()
    source.behaviour["slow"] = 0.15  # slower than its interval
    poller, state = make_poller([account("slow", interval=0.05, timeout=0.05)], source, logs)
    await run_for(poller, 0.8)
    calls = source.calls["slow"]
    # Each poll starts the moment the one before it has finished: back to back, never over.
    first = first_delay(random.Random(SEED), 0.05, 0.01)
    assert calls == exactly([first + 0.15 * n for n in range(6)])
    assert source.max_in_flight["slow"] == 1
    assert source.in_flight["slow"] == 0  # stop() cancelled the one in flight
    assert polls(state, "slow").last is not None
    assert polls(state, "slow").last.duration == exactly(0.15)


@on_virtual_time
async def test_a_hanging_account_does_not_block_the_others(logs) -> None:
    source = FakeSource()
    source.behaviour["stuck"] = "hang"
    accounts = [account("stuck", interval=1.0, timeout=1.0), account("fine", interval=0.05)]
    poller, state = make_poller(accounts, source, logs)
    poller.start()
    try:
        await asyncio.sleep(0.6)
        assert len(source.calls["stuck"]) == 1
        assert polls(state, "stuck").last is None
        assert not state.ready
        assert polls(state, "fine").last is not None
        assert polls(state, "fine").last.ok
        await asyncio.sleep(1.9)
    finally:
        await poller.stop()
    # The hung poll was cut off at exactly its timeout plus the grace, then polled again.
    stuck = source.calls["stuck"]
    assert stuck == exactly([stuck[0], stuck[0] + 2.0])
    last = polls(state, "stuck").last
    assert last is not None
    assert last.reason is Reason.TIMEOUT
    assert (last.started_at, last.duration) == (exactly(EPOCH + stuck[0]), exactly(2.0))
    # Meanwhile the other account kept its own schedule throughout, unaffected.
    fine = source.calls["fine"]
    assert fine[0] <= 0.01
    assert 0.025 <= gaps(fine)[0] <= 0.075 + 1e-9
    assert gaps(fine)[1:] == exactly([0.05] * (len(fine) - 2))
    assert fine[-1] >= 2.5 - 0.05
    assert polls(state, "fine").errors == {}


@on_virtual_time
async def test_polls_keep_their_slot(logs) -> None:
    source = FakeSource()
    poller, _ = make_poller([account("a", interval=0.1)], source, logs)
    await run_for(poller, 1.051)
    calls = source.calls["a"]
    assert calls == exactly(planned(interval=0.1, window=0.01, until=1.051))
    # After the first poll (within the startup window), every poll in the account's slot:
    # the only account has phase 0, so on the interval's multiples, exactly.
    assert calls[1:] == exactly([0.1 * n for n in range(1, 11)])


@on_virtual_time
async def test_accounts_poll_in_list_order_spread_over_the_interval(logs) -> None:
    """The body lists accounts in this order: polls landing between two scrapes are
    neighbours there, so a scrape re-renders few chunks."""
    source = FakeSource()
    accounts = [account(f"a{i}", interval=1.0) for i in range(4)]
    poller, _ = make_poller(accounts, source, logs)
    await run_for(poller, 3.9)
    for index, item in enumerate(accounts):
        phase = index / len(accounts)
        first, *later = source.calls[item.name]
        # Its slots (phase, phase + 1, ...) from half an interval after the first poll on.
        slots = [phase + k for k in range(4) if first + 0.5 <= phase + k < 3.9]
        assert later == exactly(slots)
        assert len(later) >= 3


@on_virtual_time
async def test_first_round_is_spread_over_the_startup_window(logs) -> None:
    source = FakeSource()
    accounts = [account(f"a{i}", interval=10, timeout=1) for i in range(50)]
    poller, state = make_poller(accounts, source, logs, window=0.3)
    await run_for(poller, 0.31)
    rng = random.Random(SEED)  # each loop draws its first delay as it starts, in order
    expected = [first_delay(rng, 10, 0.3) for _ in accounts]
    assert [source.calls[a.name] for a in accounts] == [[exactly(t)] for t in expected]
    assert state.ready
    assert max(expected) <= 0.3
    assert max(expected) - min(expected) > 0.15  # spread out, not all at once


@on_virtual_time
async def test_a_thousand_accounts_start_within_one_second(logs) -> None:
    source = FakeSource()
    accounts = [account(f"a{i:04}", interval=60, timeout=1) for i in range(1000)]
    poller, state = make_poller(accounts, source, logs, window=None)  # the default window
    rng = random.Random(SEED)
    expected = [first_delay(rng, 60, startup_window(1000)) for _ in accounts]
    poller.start()
    try:
        await asyncio.sleep(max(expected) - 1e-6)
        assert state.waiting() == 1  # ready only with the last first poll...
        assert not state.ready
        await asyncio.sleep(1e-6)
        assert state.ready  # ...which came within the second
    finally:
        await poller.stop()
    assert [source.calls[a.name] for a in accounts] == [[exactly(t)] for t in expected]
    assert 0.99 < max(expected) <= 1.0
    # Spread, not bunched: no 10 ms of the window holds more than 3 % of the first polls.
    per_slot = [0] * 100
    for t in expected:
        per_slot[min(99, int(t * 100))] += 1
    assert max(per_slot) <= 30


@on_virtual_time
async def test_stop_cancels_everything_quickly(logs) -> None:
    source = FakeSource()
    accounts = [account(f"h{i}", interval=5, timeout=5) for i in range(20)]
    for a in accounts:
        source.behaviour[a.name] = "hang"
    poller, _ = make_poller(accounts, source, logs)
    poller.start()
    await asyncio.sleep(0.1)
    assert sum(source.in_flight.values()) == 20
    loop = asyncio.get_running_loop()
    started = loop.time()
    await poller.stop()
    assert loop.time() == started  # stopping waits for no timer at all
    assert all(count == 0 for count in source.in_flight.values())


@pytest.mark.parametrize("reason", list(Reason))
@on_virtual_time
async def test_every_reason_is_recorded(logs, reason: Reason) -> None:
    source = FakeSource()
    source.behaviour["a"] = FetchError(reason, "x")
    poller, state = make_poller([account("a")], source, logs)
    await poller.poll_once(account("a"))
    assert polls(state, "a").errors == {reason: 1}


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    rng = random.Random(4)
    for retry, ceiling in ((0, 1.0), (1, 2.0), (2, 4.0), (5, 10.0)):
        delays = [backoff_delay(rng, 1.0, retry, cap=10.0) for _ in range(2000)]
        assert 0 <= min(delays) < ceiling * 0.05
        assert ceiling * 0.95 < max(delays) <= ceiling


@on_virtual_time
async def test_transient_failures_are_retried_within_the_poll(logs) -> None:
    source = FakeSource()
    source.behaviour["a"] = [
        FetchError(Reason.CONNECTION, "reset"),
        FetchError(Reason.HTTP_ERROR, "HTTP 503", status=503),
        "ok",
    ]
    acct = account("a", interval=2, timeout=0.1, retries=2, backoff=0.02)
    poller, state = make_poller([acct], source, logs)
    snapshot = await poller.poll_once(acct)
    assert snapshot.ok
    assert snapshot.attempts == 3
    assert snapshot.failures == (Reason.CONNECTION, Reason.HTTP_ERROR)
    assert polls(state, "a").errors == {Reason.CONNECTION: 1, Reason.HTTP_ERROR: 1}
    # Each retry waits exactly its full-jitter backoff: ≤ 20 ms, then ≤ 40 ms.
    rng = random.Random(SEED)
    first, second = (backoff_delay(rng, 0.02, retry, cap=1.0) for retry in (0, 1))
    assert source.calls["a"] == exactly([0.0, first, first + second])
    assert snapshot.duration == exactly(first + second)
    assert len(logs.events("poll")) == 1  # one canonical line per poll
    retries = logs.events("poll_attempt_failed")
    assert [line["retry_in_s"] for line in retries] == [round(first, 3), round(second, 3)]


@on_virtual_time
async def test_retries_are_bounded(logs) -> None:
    source = FakeSource()
    source.behaviour["a"] = [FetchError(Reason.TIMEOUT, "slow")] * 10
    acct = account("a", interval=2, timeout=0.1, retries=2, backoff=0.01)
    poller, _ = make_poller([acct], source, logs)
    snapshot = await poller.poll_once(acct)
    assert (snapshot.reason, snapshot.attempts, len(source.calls["a"])) == (Reason.TIMEOUT, 3, 3)
    rng = random.Random(SEED)
    first, second = (backoff_delay(rng, 0.01, retry, cap=1.0) for retry in (0, 1))
    assert source.calls["a"] == exactly([0.0, first, first + second])
    assert asyncio.get_running_loop().time() == exactly(first + second)  # no third wait


@pytest.mark.parametrize(
    "error",
    [
        FetchError(Reason.AUTH, "HTTP 401", status=401),
        FetchError(Reason.API_ERROR, "code=1"),
        FetchError(Reason.INVALID_RESPONSE, "junk"),
        FetchError(Reason.HTTP_ERROR, "HTTP 404", status=404),
        FetchError(Reason.TLS, "bad cert"),
    ],
    ids=lambda e: e.detail,
)
@on_virtual_time
async def test_permanent_failures_are_not_retried(logs, error: FetchError) -> None:
    source = FakeSource()
    source.behaviour["a"] = error
    acct = account("a", interval=2, timeout=0.1, retries=3, backoff=0.01)
    poller, _ = make_poller([acct], source, logs)
    snapshot = await poller.poll_once(acct)
    assert snapshot.reason is error.reason
    assert len(source.calls["a"]) == 1
    assert asyncio.get_running_loop().time() == 0.0  # no backoff either


@on_virtual_time
async def test_retry_after_is_never_undercut(logs) -> None:
    source = FakeSource()
    source.behaviour["a"] = [FetchError(Reason.RATE_LIMITED, "429", retry_after=0.4), "ok"]
    acct = account("a", interval=3, timeout=0.1, retries=2, backoff=0.001)
    poller, _ = make_poller([acct], source, logs)
    snapshot = await poller.poll_once(acct)
    assert snapshot.ok
    assert source.calls["a"] == exactly([0.0, 0.4])  # the Retry-After, not the ≤ 1 ms backoff


@on_virtual_time
async def test_retry_after_beyond_the_interval_delays_the_next_poll(logs) -> None:
    source = FakeSource()
    source.behaviour["a"] = [FetchError(Reason.RATE_LIMITED, "429", retry_after=0.6)] + ["ok"] * 9
    acct = account("a", interval=0.2, timeout=0.05, retries=2, backoff=0.001)
    poller, state = make_poller([acct], source, logs)
    await run_for(poller, 0.9)
    calls = source.calls["a"]
    # The retry was drawn, found not to fit in the interval, and dropped; the next poll
    # then waited out the whole Retry-After.
    expected = planned(0.2, 0.01, 0.9, deferrals={0: 0.6}, retry_draws={0: 1})
    assert calls == exactly(expected)
    assert calls[1] == exactly(calls[0] + 0.6)
    assert polls(state, "a").last is not None
    assert polls(state, "a").last.ok


@on_virtual_time
async def test_no_retry_when_it_would_not_fit_in_the_interval(logs) -> None:
    source = FakeSource()
    source.behaviour["a"] = [FetchError(Reason.RATE_LIMITED, "429", retry_after=0.5), "ok"]
    acct = account("a", interval=0.5, timeout=0.1, retries=2, backoff=0.001)
    poller, _ = make_poller([acct], source, logs)
    snapshot = await poller.poll_once(acct)
    assert snapshot.reason is Reason.RATE_LIMITED
    assert snapshot.retry_after == 0.5
    assert len(source.calls["a"]) == 1
    assert asyncio.get_running_loop().time() == 0.0  # it did not wait, either


@on_virtual_time
async def test_auth_failure_retries_once_only_if_the_secret_changed(logs) -> None:
    source = FakeSource()
    acct = account("a", interval=2, timeout=0.1, retries=3, backoff=0.01)
    poller, _ = make_poller([acct], source, logs)
    source.behaviour["a"] = FetchError(Reason.AUTH, "HTTP 401", status=401)
    assert not (await poller.poll_once(acct)).ok
    assert len(source.calls["a"]) == 1  # unchanged secret: wait for the next interval

    source.rotated.add("a")  # the next check finds a new secret, which the upstream accepts
    snapshot = await poller.poll_once(acct)
    assert snapshot.ok
    assert snapshot.attempts == 2
    assert len(source.calls["a"]) == 3
    assert asyncio.get_running_loop().time() == 0.0  # the retry after a rotation is at once


@on_virtual_time
async def test_clock_skew_is_recorded_in_the_snapshot(logs) -> None:
    source = FakeSource()
    source.skew = -120.25
    poller, _ = make_poller([account("a")], source, logs)
    assert (await poller.poll_once(account("a"))).clock_skew == -120.25


@on_virtual_time
async def test_update_adds_removes_and_restarts_only_changed_accounts(logs) -> None:
    source = FakeSource()
    keep, drop, change = account("keep"), account("drop"), account("change", timeout=1.0)
    source.behaviour["change"] = 0.5
    poller, state = make_poller([keep, drop, change], source, logs)
    poller.start()
    try:
        await asyncio.sleep(0.25)  # "change" is in the middle of its slow first poll
        assert source.in_flight["change"] == 1
        del source.behaviour["change"]
        changed = account("change", interval=0.2)
        result = await poller.update([keep, changed, account("new")])
        assert result == (1, 1, 1)
        assert source.in_flight["change"] == 0  # its poll in flight was cancelled
        assert set(state.accounts) == {"keep", "change", "new"}
        drop_calls = len(source.calls["drop"])
        await asyncio.sleep(0.3)
        assert len(source.calls["drop"]) == drop_calls
        assert polls(state, "new").last is not None
        assert polls(state, "change").last.duration < 0.5  # a poll of the new config
    finally:
        await poller.stop()
    # The restarted and the added account began afresh: their first polls came within the
    # startup window after the update, at 0.25 s.
    assert all(t < 0.25 for t in source.calls["drop"])
    for name in ("change", "new"):
        after = [t for t in source.calls[name] if t >= 0.25]
        assert after
        assert after[0] <= 0.25 + 0.01
    # The unchanged account kept its slots through the update (phase 0 of 0.1 s, then
    # phase 0 of three accounts again), as if nothing had happened.
    assert source.calls["keep"][1:] == exactly([0.1 * n for n in range(1, 6)])


@on_virtual_time
async def test_a_wake_starts_at_most_a_batch_and_the_rest_on_the_next_turn(logs) -> None:
    """100 accounts due at the same instant (a window of 0): the loop turns between
    batches of BATCH, so a probe waits for the first steps of 16 polls, not of 100."""
    source = FakeSource()
    loop = asyncio.get_running_loop()
    turns = itertools.count()
    turn = [0]

    def tick() -> None:  # once a turn of the loop, while polls are still to start
        turn[0] = next(turns)
        if len(started) < 100:
            handle[0] = loop.call_soon(tick)

    handle = [loop.call_soon(tick)]
    started: list[int] = []
    fetch = source.fetch

    async def counted(*args):
        started.append(turn[0])
        return await fetch(*args)

    source.fetch = counted  # type: ignore[method-assign]
    accounts = [account(f"t{i:03d}", interval=10.0) for i in range(100)]
    poller, _ = make_poller(accounts, source, logs, window=0.0)
    try:
        await run_for(poller, 0.5)
    finally:
        handle[0].cancel()
    assert len(started) == 100
    assert all(calls == [0.0] for calls in source.calls.values())  # all at once, in time
    per_turn = collections.Counter(started)
    assert max(per_turn.values()) == BATCH
    assert len(per_turn) >= 100 // BATCH + 1


@on_virtual_time
async def test_at_most_max_concurrency_polls_run_and_the_due_ones_wait_in_order(logs) -> None:
    source = FakeSource()
    accounts = [account(f"s{i}", interval=10.0, timeout=2.0) for i in range(10)]
    for a in accounts:
        source.behaviour[a.name] = 1.0
    in_flight: list[int] = []
    fetch = source.fetch

    async def counted(*args):
        in_flight.append(sum(source.in_flight.values()) + 1)
        return await fetch(*args)

    source.fetch = counted  # type: ignore[method-assign]
    poller, state = make_poller(accounts, source, logs, window=0.0, max_concurrency=3)
    await run_for(poller, 4.5)
    assert max(in_flight) == 3
    # Three at a time, a second each, in list order: 0-2 at 0 s, 3-5 at 1 s, ...
    firsts = [source.calls[a.name][0] for a in accounts]
    assert firsts == exactly([0.0] * 3 + [1.0] * 3 + [2.0] * 3 + [3.0])
    assert state.ready


@on_virtual_time
async def test_a_reload_spreads_old_and_new_accounts_over_the_interval_again(logs) -> None:
    source = FakeSource()
    first = [account(f"a{i}", interval=1.0) for i in range(4)]
    poller, _ = make_poller(first, source, logs)
    poller.start()
    try:
        await asyncio.sleep(2.05)
        added = [account(f"b{i}", interval=1.0) for i in range(4)]
        await poller.update([*first, *added])
        await asyncio.sleep(3.0)
    finally:
        await poller.stop()
    # Two intervals after the reload, eight accounts in eight slots, an eighth apart.
    last = sorted(round(source.calls[a.name][-1] % 1.0, 6) for a in [*first, *added])
    assert last == exactly([i / 8 for i in range(8)])


@on_virtual_time
async def test_a_huge_retry_after_is_capped_and_each_deferral_logged(logs) -> None:
    source = FakeSource()
    huge = FetchError(Reason.RATE_LIMITED, "429", retry_after=86400.0)
    source.behaviour["a"] = [huge, "ok", huge] + ["ok"] * 20
    acct = account("a", interval=0.1, timeout=0.05, retries=0)
    poller, _ = make_poller([acct], source, logs, retry_after_cap=0.3)
    await run_for(poller, 1.301)
    calls = source.calls["a"]
    # Deferred by the cap, not by a day, and each time exactly by the cap.
    assert calls == exactly(planned(0.1, 0.01, 1.301, deferrals={0: 0.3, 2: 0.3}))
    assert calls[1] == exactly(calls[0] + 0.3)
    assert calls[3] == exactly(calls[2] + 0.3)
    assert len(calls) >= 6
    deferred = logs.events("poll_deferred")
    assert [(e["account"], e["retry_after_s"], e["applied_s"], e["capped"]) for e in deferred] == [
        ("a", 86400.0, 0.3, True)
    ] * 2
    assert {e["level"] for e in deferred} == {"warning"}


@on_virtual_time
async def test_a_retry_after_within_the_cap_is_applied_in_full_and_logged(logs) -> None:
    source = FakeSource()
    source.behaviour["a"] = [FetchError(Reason.RATE_LIMITED, "429", retry_after=0.4)] + ["ok"] * 9
    acct = account("a", interval=0.1, timeout=0.05)
    poller, _ = make_poller([acct], source, logs, retry_after_cap=5)
    await run_for(poller, 0.701)
    calls = source.calls["a"]
    assert calls == exactly(planned(0.1, 0.01, 0.701, deferrals={0: 0.4}))
    assert calls[1] == exactly(calls[0] + 0.4)
    (line,) = logs.events("poll_deferred")
    assert (line["retry_after_s"], line["applied_s"], line["capped"]) == (0.4, 0.4, False)


@on_virtual_time
async def test_a_retry_after_within_the_interval_is_not_logged(logs) -> None:
    source = FakeSource()
    source.behaviour["a"] = [FetchError(Reason.RATE_LIMITED, "429", retry_after=0.05), "ok"]
    poller, _ = make_poller([account("a", interval=0.1)], source, logs)
    await run_for(poller, 0.401)
    calls = source.calls["a"]
    assert calls == exactly(planned(0.1, 0.01, 0.401, deferrals={0: 0.05}))
    assert calls[1] - calls[0] >= 0.05
    assert logs.events("poll_deferred") == []


@on_virtual_time
async def test_notices_of_the_source_are_logged_as_warnings(logs) -> None:
    source = FakeSource()
    source.notices["a"].append(("server_date_ignored", {"date": "Thu, 01 Jan 1970"}))
    poller, _ = make_poller([account("a")], source, logs)
    snapshot = await poller.poll_once(account("a"))
    (line,) = logs.events("server_date_ignored")
    assert (line["account"], line["date"], line["level"]) == ("a", "Thu, 01 Jan 1970", "warning")
    assert line["trace_id"] == snapshot.trace_id
    await poller.poll_once(account("a"))
    assert len(logs.events("server_date_ignored")) == 1


@on_virtual_time
async def test_update_tells_the_source_to_forget_removed_and_changed_accounts(logs) -> None:
    source = FakeSource()
    keep, drop, change = account("keep"), account("drop"), account("change")
    poller, _ = make_poller([keep, drop, change], source, logs)
    poller.start()
    try:
        await poller.update([keep, account("change", interval=0.2), account("new")])
    finally:
        await poller.stop()
    ((gone, kept),) = source.forgotten
    assert sorted(gone) == ["change", "drop"]
    assert kept == ["keep"]  # only what stays as it was keeps its cached files


@on_virtual_time
async def test_the_virtual_clock_jumps_to_each_timer_exactly(logs) -> None:
    """The ground the tests above stand on: sleeps and timeouts end at their due time."""
    loop = asyncio.get_running_loop()
    assert loop.time() == 0.0
    await asyncio.sleep(3600)
    assert loop.time() == 3600.0
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.25):
            await asyncio.sleep(10)
    assert loop.time() == 3600.25
    await asyncio.gather(*(asyncio.sleep(0.1 * n) for n in range(1, 4)))
    assert loop.time() == exactly(3600.55)


def test_retry_after_cap_is_the_interval_or_ten_minutes() -> None:
    assert RETRY_AFTER_CAP == 600.0
    assert retry_after_cap(60.0) == 600.0
    assert retry_after_cap(3600.0) == 3600.0
    assert retry_after_cap(1.0, cap=0.5) == 1.0


def _refuse(data: object, kilobyte: int) -> object:
    raise FetchError(Reason.INVALID_RESPONSE, "data.thing is missing")


@on_virtual_time
async def test_each_collector_polls_on_its_own_interval_and_fails_on_its_own(logs) -> None:
    """A second endpoint is one more definition: its collector gets a loop of its own, at
    its own interval, and its failures touch neither the overview's state nor koodrive_up."""
    extra = Endpoint("extra", "/koodrive/ose/v1/test/extra", parse=_refuse, metrics=())
    collectors = (CollectorConfig("overview", 1.0, 3.0), CollectorConfig("extra", 4.0, 12.0))
    acct = account("a", interval=1.0, timeout=0.5, retries=0)
    acct = dataclasses.replace(acct, collectors=collectors)
    source = FakeSource()
    endpoints = {**ENDPOINTS, "extra": extra}
    poller, state = make_poller([acct], source, logs, endpoints=endpoints)
    assert not state.ready
    await run_for(poller, 12.05)
    overview, extra_calls = (source.collector_calls[("a", name)] for name in ("overview", "extra"))
    assert 10 <= len(overview) <= 13  # 1 s ± 10 %, the second poll 0.5-1.5 s after the first
    assert 2 <= len(extra_calls) <= 4  # 4 s ± 10 %
    assert all(gap >= 0.9 * 1.0 - 1e-9 for gap in gaps(overview[1:]))
    assert all(gap >= 0.9 * 4.0 - 1e-9 for gap in gaps(extra_calls[1:]))
    assert state.ready
    assert polls(state, "a").last.ok
    assert polls(state, "a").errors == {}
    failed = polls(state, "a", "extra")
    assert failed.last.reason is Reason.INVALID_RESPONSE
    assert failed.last_success is None
    assert failed.errors == {Reason.INVALID_RESPONSE: len(extra_calls)}
    now = EPOCH + asyncio.get_running_loop().time()
    body = Exposition(state, clock=lambda: now, process_metrics=False).render().decode()
    assert 'koodrive_up{account="a"} 1\n' in body
    assert 'koodrive_space_used_bytes{account="a"} 5000\n' in body
