"""HTTP dates, Retry-After and the clock-skew estimator."""

from __future__ import annotations

import random

import pytest

from exporter.clock import SkewEstimator, parse_http_date, parse_retry_after

EPOCH = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example


def test_http_date() -> None:
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == EPOCH
    for bad in (None, "", "yesterday", "Sun, 32 Nov 1994 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"):
        assert parse_http_date(bad) is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1", 1.0),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Sun, 06 Nov 1994 08:49:47 GMT", 10.0),
        ("Sun, 06 Nov 1994 08:49:30 GMT", 0.0),  # in the past: no wait, never negative
        ("99999999", 86400.0),  # capped at a day
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        (None, None),
    ],
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


def test_skew_follows_a_stepped_clock_immediately() -> None:
    estimator = SkewEstimator()
    for t in range(10):
        estimator.observe(1000.0 + t, 1000.0 + t, 1000.0 + t)
    assert estimator.offset == pytest.approx(0.5)
    estimator.observe(2000.0 + 300, 2000.0, 2000.0)
    assert estimator.offset == pytest.approx(300.5)
