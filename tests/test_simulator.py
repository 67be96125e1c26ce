"""The simulator enforces the documented auth rules, independently of the client."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from support import APP_ID, APP_SECRET, TOKEN, two_account_config

from exporter.core.config import load_config
from exporter.core.endpoints import QUOTA_TIERS, SUBSCRIPTION
from exporter.core.model import Usage
from exporter.sim.simulator import (
    DAY,
    DUPLICATE_KEYS_BODY,
    Fault,
    FaultKind,
    Growth,
    Simulator,
    quota_tiers,
    start_simulator,
    subscription_body,
)
from exporter.upstream.signing import AppCredentials, TokenCredentials, request_headers

PATH = "/koodrive/ose/v1/space/usage/overview"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[tuple[Simulator, str, Clock]]:
    clock = Clock()
    simulator = Simulator(
        load_config(two_account_config("http://127.0.0.1:1", tmp_path)), clock=clock
    )
    runner, url = await start_simulator(simulator)
    try:
        yield simulator, url, clock
    finally:
        await runner.cleanup()


def headers_for(url: str, *, now: float, app: bool = True, **overrides: str) -> dict[str, str]:
    host = url.removeprefix("http://")
    credentials = (
        AppCredentials(app_id=APP_ID, app_secret=APP_SECRET) if app else TokenCredentials(TOKEN)
    )
    headers = request_headers(
        credentials,
        host=overrides.pop("sign_host", host),
        user_id="1505084218764547200" if app else "1505084218764547201",
        now=now,
        trace_id=overrides.pop("trace_id", "T" * 58),
        path=PATH,
    )
    headers["Host"] = host
    headers.update(overrides)
    return {k: v for k, v in headers.items() if v != "<drop>"}


async def get(url: str, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(url + PATH, headers=headers) as r:
        return r.status, await r.json()


async def test_signed_and_token_requests_are_accepted(sim) -> None:
    simulator, url, clock = sim
    status, body = await get(url, headers_for(url, now=clock.now))
    assert status == 200
    assert body["code"] == 0
    assert body["data"] == {
        "totalAllocation": simulator.usage("acme").allocation_kb,
        "totalCapacity": simulator.usage("acme").capacity_kb,
        "totalUsed": simulator.usage("acme").used_kb,
    }
    status, _ = await get(url, headers_for(url, now=clock.now, app=False))
    assert status == 200
    assert simulator.outcomes["accepted"] == 2


async def test_x_date_fourteen_minutes_old_is_accepted(sim) -> None:
    _, url, clock = sim
    assert (await get(url, headers_for(url, now=clock.now - 14 * 60)))[0] == 200


REJECTIONS = {
    "missing X-Date": ({"X-Date": "<drop>"}, 0, 400, "X-Date is required"),
    "missing X-User-Id": ({"X-User-Id": "<drop>"}, 0, 400, "X-User-Id is required"),
    "missing Authorization": ({"Authorization": "<drop>"}, 0, 400, "Authorization"),
    "X-Date not basic ISO": ({"X-Date": "2024-09-09T03:33:25Z"}, 0, 400, "X-Date format"),
    "X-Date impossible day": ({"X-Date": "20240231T000000Z"}, 0, 400, "X-Date format"),
    "X-Date two seconds ahead": ({}, 2, 401, "later than the server time"),
    "X-Date sixteen minutes old": ({}, -16 * 60, 401, "older than 15 minutes"),
    "short trace id": ({"trace_id": "T" * 57}, 0, 400, "X-Traceid"),
    "trace id with symbols": ({"trace_id": "-" * 58}, 0, 400, "X-Traceid"),
    "unknown user": ({"X-User-Id": "999"}, 0, 401, "unknown X-User-Id"),
    "host signed without port": ({"sign_host": "127.0.0.1"}, 0, 401, "signature mismatch"),
    "forged signature": (
        {
            "Authorization": f"HMAC-SHA256 AppId={APP_ID},SignedHeaders=host;x-date;x-user-id,"
            f"Signature={'0' * 64}"
        },
        0,
        401,
        "signature mismatch",
    ),
    "wrong AppId": (
        {
            "Authorization": "HMAC-SHA256 AppId=other,"
            "SignedHeaders=host;x-date;x-user-id,Signature=0"
        },
        0,
        401,
        "unknown AppId",
    ),
    "too few signed headers": (
        {"Authorization": f"HMAC-SHA256 AppId={APP_ID},SignedHeaders=x-date,Signature=0"},
        0,
        401,
        "SignedHeaders",
    ),
    "bearer instead of HMAC": ({"Authorization": TOKEN}, 0, 401, "malformed Authorization"),
}


@pytest.mark.parametrize(
    ("overrides", "shift", "status", "message"), REJECTIONS.values(), ids=REJECTIONS.keys()
)
async def test_rejections(sim, overrides: dict[str, str], shift: int, status: int, message: str):
    simulator, url, clock = sim
    got, body = await get(url, headers_for(url, now=clock.now + shift, **overrides))
    assert got == status
    assert message in str(body["msg"])
    assert body["code"] == (13000102 if status == 400 else 401)
    assert APP_SECRET not in str(body)
    assert simulator.outcomes["accepted"] == 0


async def test_wrong_token_is_rejected(sim) -> None:
    _, url, clock = sim
    headers = headers_for(url, now=clock.now, app=False, Authorization="Bearer+guess")
    status, body = await get(url, headers)
    assert (status, body["msg"]) == (401, "invalid access token")


async def test_server_clock_offset_moves_the_window(sim) -> None:
    simulator, url, clock = sim
    simulator.clock_offset = -120  # server two minutes behind the client
    status, body = await get(url, headers_for(url, now=clock.now))
    assert (status, body["msg"]) == (401, "X-Date is later than the server time")
    assert (await get(url, headers_for(url, now=clock.now - 121)))[0] == 200


async def test_usage_grows_over_time_and_can_be_pinned(sim) -> None:
    simulator, _, clock = sim
    before = simulator.usage("acme")
    clock.now += DAY
    after = simulator.usage("acme")
    assert after.capacity_kb == before.capacity_kb
    growth = Growth.for_account("acme")
    assert after.used_kb - before.used_kb == pytest.approx(growth.growth_kb_per_day, rel=0.05)
    assert 0.005 * after.capacity_kb <= after.used_kb - before.used_kb <= 0.031 * after.capacity_kb
    pinned = Usage(allocation_kb=1, capacity_kb=100, used_kb=95)
    simulator.set_usage("acme", pinned)
    clock.now += DAY
    assert simulator.usage("acme") == pinned
    with pytest.raises(KeyError):
        simulator.set_usage("nobody", pinned)


def test_growth_curves_differ_between_accounts_and_are_sane() -> None:
    curves = [Growth.for_account(f"tenant-{i}") for i in range(200)]
    assert len({c.capacity_kb for c in curves}) > 1
    for curve in curves:
        usage = curve.at(random.uniform(0, 30 * DAY))
        assert 0 < usage.allocation_kb <= usage.capacity_kb
        assert usage.used_kb > 0


def test_usage_never_shrinks_so_forecasts_stay_positive() -> None:
    growth = Growth.for_account("acme")
    samples = [growth.at(t * 600.0).used_kb for t in range(24 * 6 * 3)]  # 3 days, 10 min apart
    assert all(b >= a for a, b in itertools.pairwise(samples))
    assert samples[-1] > samples[0]


async def raw_get(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(url + PATH, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


SENDABLE = [
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "Thu, 01 Jan 1970 00:00:00 -2359",
    "not a date at all",
    "",
    "x" * 5000,
]


@pytest.mark.parametrize("date", SENDABLE, ids=lambda v: v[:20] or "empty")
async def test_any_date_header_can_be_sent(sim, date: str) -> None:
    simulator, url, clock = sim
    simulator.set_fault("acme", Fault(FaultKind.DATE, date=date))
    status, headers, body = await raw_get(url, headers_for(url, now=clock.now))
    assert (status, headers["Date"]) == (200, date)
    assert simulator.outcomes["accepted"] == 1  # otherwise a normal answer
    assert b'"code": 0' in body


async def test_date_override_goes_with_any_kind_and_rejections(sim) -> None:
    simulator, url, clock = sim
    simulator.set_fault("acme", Fault(FaultKind.RATE_LIMIT, retry_after="-5", date="junk"))
    status, headers, _ = await raw_get(url, headers_for(url, now=clock.now))
    assert (status, headers["Date"], headers["Retry-After"]) == (429, "junk", "-5")
    status, headers, _ = await raw_get(url, headers_for(url, now=clock.now + 60))
    assert (status, headers["Date"]) == (401, "junk")


@pytest.mark.parametrize("retry_after", ["99999999999999999999", "-1", "soon", "9" * 4000])
async def test_any_retry_after_can_be_sent(sim, retry_after: str) -> None:
    simulator, url, clock = sim
    simulator.set_fault("acme", Fault(FaultKind.RATE_LIMIT, retry_after=retry_after))
    status, headers, _ = await raw_get(url, headers_for(url, now=clock.now))
    assert (status, headers["Retry-After"]) == (429, retry_after)


async def test_duplicate_keys_are_sent_raw(sim) -> None:
    simulator, url, clock = sim
    simulator.set_fault("acme", Fault(FaultKind.DUPLICATE_KEYS))
    status, _, body = await raw_get(url, headers_for(url, now=clock.now))
    assert (status, body) == (200, DUPLICATE_KEYS_BODY)
    assert body.count(b'"code"') == 2


async def test_admin_api_takes_date_and_any_retry_after(sim) -> None:
    _, url, clock = sim
    fault = {"kind": "rate_limit", "retry_after": "9" * 30, "date": "Thu, 01 Jan 1970 00:00:00 GMT"}
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{url}/-/sim/accounts/acme/fault", json=fault) as response:
            assert response.status == 200
            assert (await response.json())["fault"]["date"] == fault["date"]
        async with session.put(
            f"{url}/-/sim/accounts/beta/fault", json={"kind": "duplicate_keys"}
        ) as response:
            assert response.status == 200
    status, headers, _ = await raw_get(url, headers_for(url, now=clock.now))
    assert (status, headers["Retry-After"], headers["Date"]) == (429, "9" * 30, fault["date"])
    status, _, body = await raw_get(url, headers_for(url, now=clock.now, app=False))
    assert (status, body) == (200, DUPLICATE_KEYS_BODY)


def test_fault_from_json_accepts_any_sendable_string() -> None:
    fault = Fault.from_json({"kind": "date", "date": "Fri, 31 Dec 9999 23:59:59 -2359"})
    assert (fault.kind, fault.date) == (FaultKind.DATE, "Fri, 31 Dec 9999 23:59:59 -2359")
    assert Fault.from_json({"kind": "rate_limit", "retry_after": 120}).retry_after == "120"
    assert Fault.from_json({"kind": "rate_limit", "retry_after": "-1e9"}).retry_after == "-1e9"
    assert Fault.from_json({"kind": "hang"}) == Fault(FaultKind.HANG)


@pytest.mark.parametrize(
    "document",
    [
        {"kind": "date", "date": "a\r\nX-Injected: 1"},
        {"kind": "date", "date": "\x00"},
        {"kind": "date", "date": 5.5},
        {"kind": "date", "date": "x" * 70_000},
        {"kind": "rate_limit", "retry_after": None},
        {"kind": "rate_limit", "retry_after": True},
        {"kind": "rate_limit", "retry_after": ["1"]},
        {"kind": "latency", "seconds": "1"},
        {"kind": "latency", "seconds": float("nan")},
        {"kind": "latency", "seconds": 10**400},
        {"kind": "http_5xx", "status": 99999},
        {"kind": "http_5xx", "status": 502.5},
        {"kind": "api_error", "code": True},
        {"kind": "nope"},
        {"kind": "date", "when": "x"},
        {"kind": "hang", "collector": "nope"},
        {"kind": "hang", "collector": 1},
        {"date": "x"},
        ["kind", "date"],
    ],
    ids=repr,
)
def test_fault_from_json_stays_strict(document: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - every message names its own key
        Fault.from_json(document)


# --- the subscription and quota-tier endpoints -----------------------------------------


def signed(url: str, now: float, path: str, query: tuple[tuple[str, str], ...] = ()) -> dict:
    host = url.removeprefix("http://")
    credentials = AppCredentials(app_id=APP_ID, app_secret=APP_SECRET)
    return request_headers(
        credentials, host=host, user_id="1505084218764547200", now=now, trace_id="T" * 58,
        path=path, query=query,
    )  # fmt: skip


async def get_path(url: str, path: str, query: tuple[tuple[str, str], ...], now: float):
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + path, params=query, headers=signed(url, now, path, query)) as r,
    ):
        return r.status, await r.json()


@pytest.mark.parametrize("name", ["acme", "beta", "x", "tenant-00042"])
def test_subscription_and_tiers_agree_with_the_overview(name: str) -> None:
    usage = Growth.for_account(name).at(3 * DAY)
    data = subscription_body(usage, name)["data"]
    assert data["spaceUsed"] == usage.used_kb
    assert data["spaceCapacity"] == usage.capacity_kb // (1024 * 1024)
    types = ("dept", "personal", "group")
    assert sum(data[f"{t}SpaceUsed"] for t in types) == data["spaceUsed"]
    assert sum(data[f"{t}SpaceQuotaUsed"] for t in types) == data["spaceQuotaUsed"]
    quotas = sum(data[f"{t}SpaceQuota"] for t in (*types, "reserved"))
    assert quotas == data["spaceCapacity"]
    assert 0 < data["userCount"] <= data["userMaxCount"]
    tiers = quota_tiers(usage, name)
    assert 5 <= len(tiers) <= 8
    assert sum(t["totalUsed"] for t in tiers) == usage.used_kb
    assert sum(t["totalCapacity"] for t in tiers) == usage.capacity_kb
    assert sum(t["totalAllocation"] for t in tiers) == usage.allocation_kb
    # Both parse as the exporter reads them.
    assert SUBSCRIPTION.parse(data, 1024).users == data["userCount"]
    assert len(QUOTA_TIERS.parse(tiers, 1024).used) == len(tiers)


async def test_tiers_are_served_a_capped_page_at_a_time(sim) -> None:
    simulator, url, clock = sim
    simulator.max_page = 2
    tiers = quota_tiers(simulator.usage("acme"), "acme")
    status, body = await get_path(
        url, QUOTA_TIERS.path, (("limit", "100"), ("offset", "1")), clock.now
    )
    assert status == 200
    assert (body["data"], body["total"]) == (tiers[1:3], len(tiers))
    status, body = await get_path(
        url, QUOTA_TIERS.path, (("limit", "1"), ("offset", "0")), clock.now
    )
    assert body["data"] == tiers[:1]
    status, body = await get_path(url, QUOTA_TIERS.path, (("offset", str(len(tiers))),), clock.now)
    assert (status, body["data"]) == (200, [])


@pytest.mark.parametrize(
    "query", [(("limit", "0"),), (("offset", "-1"),), (("limit", "x"),), (("limit", "1e3"),)]
)
async def test_bad_paging_parameters_are_refused(sim, query) -> None:
    _, url, clock = sim
    status, body = await get_path(url, QUOTA_TIERS.path, query, clock.now)
    assert (status, body["code"]) == (400, 13000102)


async def test_a_query_signed_differently_is_refused(sim) -> None:
    _, url, clock = sim
    headers = signed(url, clock.now, QUOTA_TIERS.path, (("limit", "5"), ("offset", "0")))
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + QUOTA_TIERS.path + "?limit=5&offset=1", headers=headers) as r,
    ):
        assert (r.status, (await r.json())["msg"]) == (401, "signature mismatch")


async def test_a_fault_can_target_one_collector(sim) -> None:
    simulator, url, clock = sim
    simulator.set_fault("acme", Fault(FaultKind.HTTP_5XX, status=502, collector="subscription"))
    status, _ = await get_path(url, SUBSCRIPTION.path, (), clock.now)
    assert status == 502
    status, _ = await get(url, headers_for(url, now=clock.now))
    assert status == 200
    status, _ = await get_path(url, QUOTA_TIERS.path, (), clock.now)
    assert status == 200
    async with aiohttp.ClientSession() as session:
        fault = {"kind": "api_error", "collector": "quota_tiers"}
        async with session.put(f"{url}/-/sim/accounts/acme/fault", json=fault) as response:
            assert (await response.json())["fault"]["collector"] == "quota_tiers"
    status, body = await get_path(url, QUOTA_TIERS.path, (), clock.now)
    assert (status, body["code"]) == (200, 13000201)
