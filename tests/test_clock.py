"""HTTP dates, Retry-After and the clock-skew estimator."""

from __future__ import annotations

import random
import time

import pytest

from exporter.upstream.clock import (
    PLAUSIBLE_SKEW,
    RETRY_AFTER_LIMIT,
    SkewEstimator,
    parse_http_date,
    parse_retry_after,
)

EPOCH = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example


def test_http_date() -> None:
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == EPOCH
    for bad in (None, "", "yesterday", "Sun, 32 Nov 1994 08:49:37 GMT"):
        assert parse_http_date(bad) is None


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850, still to be accepted
        "Sun Nov  6 08:49:37 1994",  # obsolete asctime, GMT by definition
        " Sun, 06 Nov 1994 08:49:37 GMT ",
    ],
)
def test_the_three_rfc_9110_date_forms(value: str) -> None:
    assert parse_http_date(value) == EPOCH


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 -2359",  # a numeric zone is not HTTP: a day of skew
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "Sun, 06 Nov 1994 08:49:37 -0000",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 gmt",
        "Fri, 31 Dec 9999 23:59:59 -2359",  # past year 9999 once converted
        "Sun, 06 Nov 1994 08:49:37",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun, 29 Feb 2023 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sat, 01 Jan 0000 00:00:00 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT" + " " * 100,
        "9" * 100_000,
    ],
)
def test_dates_outside_rfc_9110_are_refused_not_converted(value: str) -> None:
    assert parse_http_date(value) is None


def test_extreme_but_well_formed_dates_parse_without_raising() -> None:
    assert parse_http_date("Fri, 31 Dec 9999 23:59:59 GMT") == 253402300799.0
    assert parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT") == 0.0
    assert parse_http_date("Sun, 06 Nov 1994 08:49:60 GMT") == EPOCH + 22  # leap second


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1", 1.0),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Sun, 06 Nov 1994 08:49:47 GMT", 10.0),
        ("Sun, 06 Nov 1994 08:49:30 GMT", 0.0),  # in the past: no wait, never negative
        ("99999999", 86400.0),  # capped at a day
        ("99999999999999999999", RETRY_AFTER_LIMIT),
        ("9" * 1_000_000, RETRY_AFTER_LIMIT),  # int() of this would refuse or crawl
        ("0" * 1_000 + "7", 7.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", RETRY_AFTER_LIMIT),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
        ("Sun, 06 Nov 1994 08:49:47 -2359", None),
        ("-5", None),
        ("-99999999999999999999", None),
        ("1.5", None),
        ("1e400", None),
        ("inf", None),
        ("NaN", None),
        ("٣", None),  # a digit to str.isdigit, not to HTTP
        ("soon", None),
        ("", None),
        (None, None),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=EPOCH) == seconds


def test_skew_jumps_at_once_then_smooths_truncation_noise() -> None:
    rng = random.Random(5)
    estimator = SkewEstimator()
    true_offset = -120.0
    for step in range(200):
        local = 1_000_000.0 + step * 1.37
        server = local + true_offset + rng.uniform(0, 0.02)  # plus a little network delay
        estimator.observe(float(int(server)), sent_at=local, received_at=local + 0.02)
        if step == 0:
            assert abs(estimator.offset - true_offset) <= 1.0  # one sample is enough
    assert estimator.offset == pytest.approx(true_offset, abs=0.3)


@pytest.mark.parametrize(
    "bad",
    [
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "Thu, 01 Jan 1970 00:00:00 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT",  # a day and a second before the local clock below
    ],
)
def test_implausible_dates_are_ignored_and_counted(bad: str) -> None:
    local = EPOCH + PLAUSIBLE_SKEW + 1.5
    estimator = SkewEstimator()
    assert estimator.observe(local - 3.5, local, local)  # a sane 3 s skew first
    server_date = parse_http_date(bad)
    assert server_date is not None
    for run in range(1, 4):
        assert not estimator.observe(server_date, local, local)
        assert estimator.ignored == run
        assert estimator.offset == pytest.approx(-3.0)
    assert estimator.observe(local + 10.0, local, local)  # the next sane date is taken
    assert estimator.ignored == 0
    assert estimator.offset == pytest.approx(10.5)


def test_a_first_implausible_date_leaves_no_estimate() -> None:
    estimator = SkewEstimator()
    now = time.time()
    assert not estimator.observe(253402300799.0, now, now)
    assert not estimator.observe(0.0, now, now)
    assert estimator.offset is None
    assert estimator.observe(now - 1, now, now)
    assert estimator.offset == pytest.approx(-0.5)


def test_skew_follows_a_stepped_clock_immediately() -> None:
    estimator = SkewEstimator()
    for t in range(10):
        estimator.observe(1000.0 + t, 1000.0 + t, 1000.0 + t)
    assert estimator.offset == pytest.approx(0.5)
    estimator.observe(2000.0 + 300, 2000.0, 2000.0)
    assert estimator.offset == pytest.approx(300.5)
