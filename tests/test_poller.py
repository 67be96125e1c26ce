"""The scheduler: no overlap per account, jitter, independence of accounts, snapshots."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from support import FakeSource, account

from exporter.core.model import FetchError, Reason
from exporter.core.poller import (
    JITTER,
    RETRY_AFTER_CAP,
    Poller,
    backoff_delay,
    first_delay,
    next_delay,
    retry_after_cap,
    startup_window,
)
from exporter.core.state import ExporterState


async def run_for(poller: Poller, seconds: float) -> None:
    """Run the poller's loops for a while, then stop them (also when the test fails)."""
    poller.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        await poller.stop()


def make_poller(accounts, source, logs, state=None, window=0.01) -> tuple[Poller, ExporterState]:
    state = state or ExporterState(accounts)
    poller = Poller(accounts, source, state, logs.log, rng=random.Random(3), startup_window=window)
    return poller, state


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


def test_next_delay_jitters_plus_minus_ten_percent() -> None:
    rng = random.Random(2)
    delays = [next_delay(rng, 60) for _ in range(5000)]
    assert 60 * (1 - JITTER) <= min(delays) < 54.2
    assert 65.8 < max(delays) <= 60 * (1 + JITTER)
    assert len({round(d, 6) for d in delays}) > 4900  # no lockstep


async def test_success_snapshot_is_converted_to_bytes(logs) -> None:
    source = FakeSource()
    poller, state = make_poller([account("a")], source, logs)
    snapshot = await poller.poll_once(account("a"))
    assert snapshot.ok
    assert snapshot.usage is not None
    assert (snapshot.usage.allocated, snapshot.usage.capacity, snapshot.usage.used) == (
        1000,
        10000,
        5000,
    )
    assert state.accounts["a"].last_success is snapshot
    assert state.ready
    (line,) = logs.events("poll")
    assert line["account"] == "a"
    assert line["outcome"] == "success"
    assert line["trace_id"] == snapshot.trace_id
    assert "duration_ms" in line


async def test_failure_keeps_the_last_success_and_counts_the_reason(logs) -> None:
    source = FakeSource()
    poller, state = make_poller([account("a")], source, logs)
    good = await poller.poll_once(account("a"))
    source.behaviour["a"] = FetchError(Reason.RATE_LIMITED, "HTTP 429")
    bad = await poller.poll_once(account("a"))
    assert not bad.ok
    assert bad.reason is Reason.RATE_LIMITED
    assert state.accounts["a"].last is bad
    assert state.accounts["a"].last_success is good
    assert state.accounts["a"].errors == {Reason.RATE_LIMITED: 1}
    error_line = logs.events("poll")[-1]
    assert error_line["outcome"] == "error"
    assert error_line["reason"] == "rate_limited"
    assert error_line["level"] == "warning"


async def test_unexpected_exception_is_internal_and_does_not_kill_the_loop(logs) -> None:
    source = FakeSource()
    source.behaviour["a"] = KeyError("boom")
    poller, state = make_poller([account("a", interval=0.05)], source, logs)
    await run_for(poller, 0.3)
    assert state.accounts["a"].errors[Reason.INTERNAL] >= 3
    assert logs.events("poll_internal_error")


async def test_outer_guard_times_out_a_source_that_ignores_its_timeout(logs) -> None:
    source = FakeSource()
    source.behaviour["a"] = "hang"
    state = ExporterState([account("a")])
    poller = Poller([account("a")], source, state, logs.log, timeout_grace=0.05)
    snapshot = await asyncio.wait_for(poller.poll_once(account("a", timeout=0.05)), 2)
    assert snapshot.reason is Reason.TIMEOUT


async def test_polls_of_one_account_never_overlap(logs) -> None:
    source = FakeSource()
    source.behaviour["slow"] = 0.15  # slower than its interval
    poller, _state = make_poller([account("slow", interval=0.05, timeout=0.05)], source, logs)
    await run_for(poller, 0.8)
    assert source.max_in_flight["slow"] == 1
    assert len(source.calls["slow"]) >= 3
    assert source.in_flight["slow"] == 0  # stop() cancelled the one in flight


async def test_a_hanging_account_does_not_block_the_others(logs) -> None:
    source = FakeSource()
    source.behaviour["stuck"] = "hang"
    accounts = [account("stuck", interval=1.0, timeout=1.0), account("fine", interval=0.05)]
    poller, state = make_poller(accounts, source, logs)
    await run_for(poller, 0.6)
    assert len(source.calls["stuck"]) == 1
    assert len(source.calls["fine"]) >= 8
    assert state.accounts["fine"].last is not None
    assert state.accounts["fine"].last.ok
    assert state.accounts["stuck"].last is None
    assert not state.ready


async def test_interval_is_respected_with_jitter(logs) -> None:
    source = FakeSource()
    poller, _ = make_poller([account("a", interval=0.1)], source, logs)
    await run_for(poller, 1.05)
    calls = source.calls["a"]
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert 7 <= len(calls) <= 14
    # After the first poll the phase is re-drawn within 0.5-1.5 intervals; then ±10 %
    # (the upper bounds leave room for a busy CI machine's late wake-ups).
    assert 0.049 <= gaps[0] <= 0.19, gaps
    assert all(0.089 <= gap <= 0.15 for gap in gaps[1:]), gaps


async def test_first_round_is_spread_over_the_startup_window(logs) -> None:
    source = FakeSource()
    accounts = [account(f"a{i}", interval=10, timeout=1) for i in range(50)]
    poller, state = make_poller(accounts, source, logs, window=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await run_for(poller, 0.45)
    firsts = sorted(calls[0] - started for calls in source.calls.values())
    assert len(firsts) == 50
    assert state.ready
    assert firsts[-1] <= 0.5
    assert firsts[-1] - firsts[0] > 0.15  # spread out, not all at once


async def test_stop_cancels_everything_quickly(logs) -> None:
    source = FakeSource()
    accounts = [account(f"h{i}", interval=5, timeout=5) for i in range(20)]
    for a in accounts:
        source.behaviour[a.name] = "hang"
    poller, _ = make_poller(accounts, source, logs)
    poller.start()
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await poller.stop()
    assert loop.time() - started < 0.5
    assert all(count == 0 for count in source.in_flight.values())


@pytest.mark.parametrize("reason", list(Reason))
async def test_every_reason_is_recorded(logs, reason: Reason) -> None:
    source = FakeSource()
    source.behaviour["a"] = FetchError(reason, "x")
    poller, state = make_poller([account("a")], source, logs)
    await poller.poll_once(account("a"))
    assert state.accounts["a"].errors == {reason: 1}


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    rng = random.Random(4)
    for retry, ceiling in ((0, 1.0), (1, 2.0), (2, 4.0), (5, 10.0)):
        delays = [backoff_delay(rng, 1.0, retry, cap=10.0) for _ in range(2000)]
        assert 0 <= min(delays) < ceiling * 0.05
        assert ceiling * 0.95 < max(delays) <= ceiling


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
    assert state.accounts["a"].errors == {Reason.CONNECTION: 1, Reason.HTTP_ERROR: 1}
    assert len(logs.events("poll")) == 1  # one canonical line per poll
    assert len(logs.events("poll_attempt_failed")) == 2


async def test_retries_are_bounded(logs) -> None:
    source = FakeSource()
    source.behaviour["a"] = [FetchError(Reason.TIMEOUT, "slow")] * 10
    acct = account("a", interval=2, timeout=0.1, retries=2, backoff=0.01)
    poller, _ = make_poller([acct], source, logs)
    snapshot = await poller.poll_once(acct)
    assert (snapshot.reason, snapshot.attempts, len(source.calls["a"])) == (Reason.TIMEOUT, 3, 3)


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
async def test_permanent_failures_are_not_retried(logs, error: FetchError) -> None:
    source = FakeSource()
    source.behaviour["a"] = error
    acct = account("a", interval=2, timeout=0.1, retries=3, backoff=0.01)
    poller, _ = make_poller([acct], source, logs)
    snapshot = await poller.poll_once(acct)
    assert snapshot.reason is error.reason
    assert len(source.calls["a"]) == 1


async def test_retry_after_is_never_undercut(logs) -> None:
    source = FakeSource()
    source.behaviour["a"] = [FetchError(Reason.RATE_LIMITED, "429", retry_after=0.4), "ok"]
    acct = account("a", interval=3, timeout=0.1, retries=2, backoff=0.001)
    poller, _ = make_poller([acct], source, logs)
    snapshot = await poller.poll_once(acct)
    first, second = source.calls["a"]
    assert snapshot.ok
    assert second - first >= 0.4


async def test_retry_after_beyond_the_interval_delays_the_next_poll(logs) -> None:
    source = FakeSource()
    source.behaviour["a"] = [FetchError(Reason.RATE_LIMITED, "429", retry_after=0.6)] + ["ok"] * 9
    acct = account("a", interval=0.2, timeout=0.05, retries=2, backoff=0.001)
    poller, state = make_poller([acct], source, logs)
    await run_for(poller, 0.9)
    calls = source.calls["a"]
    assert calls[1] - calls[0] >= 0.6  # neither a retry nor the next poll came sooner
    assert state.accounts["a"].last is not None
    assert state.accounts["a"].last.ok


async def test_no_retry_when_it_would_not_fit_in_the_interval(logs) -> None:
    source = FakeSource()
    source.behaviour["a"] = [FetchError(Reason.RATE_LIMITED, "429", retry_after=0.5), "ok"]
    acct = account("a", interval=0.5, timeout=0.1, retries=2, backoff=0.001)
    poller, _ = make_poller([acct], source, logs)
    snapshot = await poller.poll_once(acct)
    assert snapshot.reason is Reason.RATE_LIMITED
    assert snapshot.retry_after == 0.5
    assert len(source.calls["a"]) == 1


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


async def test_clock_skew_is_recorded_in_the_snapshot(logs) -> None:
    source = FakeSource()
    source.skew = -120.25
    poller, _ = make_poller([account("a")], source, logs)
    assert (await poller.poll_once(account("a"))).clock_skew == -120.25


async def test_update_adds_removes_and_restarts_only_changed_accounts(logs) -> None:
    source = FakeSource()
    keep, drop, change = account("keep"), account("drop"), account("change")
    poller, state = make_poller([keep, drop, change], source, logs)
    poller.start()
    try:
        await asyncio.sleep(0.25)
        kept_task = poller._tasks["keep"]
        changed = account("change", interval=0.2)
        result = await poller.update([keep, changed, account("new")])
        assert result == (1, 1, 1)
        assert poller._tasks["keep"] is kept_task
        assert set(state.accounts) == {"keep", "change", "new"}
        assert state.accounts["change"].last is not None  # data kept until the next poll
        drop_calls = len(source.calls["drop"])
        await asyncio.sleep(0.3)
        assert len(source.calls["drop"]) == drop_calls
        assert state.accounts["new"].last is not None
    finally:
        await poller.stop()


async def test_due_times_snap_to_ticks_so_polls_wake_the_loop_together(logs) -> None:
    source = FakeSource()
    accounts = [account(f"t{i}", interval=1.0, timeout=0.1) for i in range(20)]
    poller, _ = make_poller(accounts, source, logs, window=0.05)
    await run_for(poller, 2.3)
    # After the first round every poll starts on a 50 ms tick (interval / 20).
    later = [t for calls in source.calls.values() for t in calls[1:]]
    assert later
    assert all(abs(t / 0.05 - round(t / 0.05)) < 0.2 for t in later), later


async def test_a_huge_retry_after_is_capped_and_each_deferral_logged(logs) -> None:
    source = FakeSource()
    huge = FetchError(Reason.RATE_LIMITED, "429", retry_after=86400.0)
    source.behaviour["a"] = [huge, "ok", huge] + ["ok"] * 20
    acct = account("a", interval=0.1, timeout=0.05, retries=0)
    state = ExporterState([acct])
    poller = Poller(
        [acct], source, state, logs.log, rng=random.Random(3), startup_window=0.01,
        retry_after_cap=0.3,
    )  # fmt: skip
    await run_for(poller, 1.3)
    calls = source.calls["a"]
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert 0.29 <= gaps[0] <= 0.5, gaps  # deferred by the cap, not by a day
    assert 0.29 <= gaps[2] <= 0.5, gaps
    assert len(calls) >= 6
    deferred = logs.events("poll_deferred")
    assert [(e["account"], e["retry_after_s"], e["applied_s"], e["capped"]) for e in deferred] == [
        ("a", 86400.0, 0.3, True)
    ] * 2
    assert {e["level"] for e in deferred} == {"warning"}


async def test_a_retry_after_within_the_cap_is_applied_in_full_and_logged(logs) -> None:
    source = FakeSource()
    source.behaviour["a"] = [FetchError(Reason.RATE_LIMITED, "429", retry_after=0.4)] + ["ok"] * 9
    acct = account("a", interval=0.1, timeout=0.05)
    poller = Poller(
        [acct], source, ExporterState([acct]), logs.log, rng=random.Random(3),
        startup_window=0.01, retry_after_cap=5,
    )  # fmt: skip
    await run_for(poller, 0.7)
    calls = source.calls["a"]
    assert calls[1] - calls[0] >= 0.4
    (line,) = logs.events("poll_deferred")
    assert (line["retry_after_s"], line["applied_s"], line["capped"]) == (0.4, 0.4, False)


async def test_a_retry_after_within_the_interval_is_not_logged(logs) -> None:
    source = FakeSource()
    source.behaviour["a"] = [FetchError(Reason.RATE_LIMITED, "429", retry_after=0.05), "ok"]
    poller, _ = make_poller([account("a", interval=0.1)], source, logs)
    await run_for(poller, 0.4)
    assert len(source.calls["a"]) >= 2
    assert logs.events("poll_deferred") == []


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


def test_retry_after_cap_is_the_interval_or_ten_minutes() -> None:
    assert RETRY_AFTER_CAP == 600.0
    assert retry_after_cap(60.0) == 600.0
    assert retry_after_cap(3600.0) == 3600.0
    assert retry_after_cap(1.0, cap=0.5) == 1.0
