"""Endpoints are data: a definition written here is signed, sent, paged and parsed by the
client without a line of it knowing the endpoint, over real loopback HTTP.

The loopback upstream checks every request's app signature, query string included, with the
simulator's own verifier, which reads the docs independently of `signing`.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import DOC_SUBSCRIPTION

from exporter.core.endpoints import (
    ENDPOINTS,
    OVERVIEW,
    QUOTA_TIERS,
    SUBSCRIPTION,
    Endpoint,
)
from exporter.core.metrics import METRICS
from exporter.core.model import FetchError, Reason
from exporter.core.settings import AccountConfig, AppAuth, Secret, SecretRef
from exporter.sim.simulator import verify_app_auth
from exporter.upstream.client import MAX_PAGES, KooDriveClient
from exporter.upstream.credentials import CredentialStore

APP_ID, APP_SECRET = "app-id", "app-secret"
OMIT = object()
PAGED = Endpoint(
    name="paged_test",
    path="/koodrive/ose/v1/test/paged",
    parse=lambda items, kilobyte: [item["n"] * kilobyte for item in items],
    metrics=(),
    paged=True,
)
BOUNDED = Endpoint(
    name="bounded_test",
    path="/koodrive/ose/v1/test/paged",
    parse=lambda items, kilobyte: len(items),
    metrics=(),
    paged=True,
    max_items=10,
)
SINGLE = Endpoint(
    name="single_test",
    path="/koodrive/ose/v1/test/single",
    parse=lambda data, kilobyte: data["value"] * kilobyte,
    metrics=(),
)


@dataclass
class PagingUpstream:
    """Serves `items` a page at a time, at most `server_page` items whatever the `limit`."""

    items: list[dict[str, int]] = field(default_factory=list)
    server_page: int = 3
    total: object = None  # None: the true count; OMIT: no `total` at all
    ignore_limit: bool = False
    seen: list[tuple[int, int]] = field(default_factory=list)  # (limit, offset) per request
    signatures: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        failure = verify_app_auth(request, APP_ID, APP_SECRET)
        if failure:
            self.refusals.append(failure)
            return web.json_response({"code": 401, "msg": failure}, status=401)
        self.signatures.append(request.headers["Authorization"])
        if request.path == SINGLE.path:
            return web.json_response({"code": 0, "msg": "success", "data": {"value": 7}})
        limit, offset = int(request.query["limit"]), int(request.query["offset"])
        self.seen.append((limit, offset))
        size = self.server_page if self.ignore_limit else min(limit, self.server_page)
        page = self.items[offset : offset + size]
        document = {"code": 0, "msg": "success", "data": page}
        if self.total is not OMIT:
            document["total"] = len(self.items) if self.total is None else self.total
        return web.json_response(document)


@pytest.fixture
async def paging() -> AsyncIterator[tuple[PagingUpstream, str]]:
    upstream = PagingUpstream()
    app = web.Application()
    app.router.add_get("/{tail:.*}", upstream.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield upstream, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def app_account(endpoint: str, page_size: int = 5) -> AccountConfig:
    secret = SecretRef(key="app_secret", value=Secret(APP_SECRET))
    return AccountConfig(
        name="acme",
        user_id="1505084218764547200",
        auth=AppAuth(app_id=APP_ID, secret=secret),
        endpoint=endpoint,
        kilobyte=1,
        page_size=page_size,
    )


async def fetch(endpoint_url: str, endpoint: Endpoint, page_size: int = 5) -> object:
    async with aiohttp.ClientSession() as session:
        client = KooDriveClient(session, CredentialStore(), rng=random.Random(1))
        account = app_account(endpoint_url, page_size)
        return await client.fetch(account, endpoint, client.new_trace_id())


async def test_pages_follow_the_items_collected_and_each_is_signed_with_its_query(paging) -> None:
    upstream, url = paging
    upstream.items = [{"n": n} for n in range(8)]
    assert await fetch(url, PAGED) == list(range(8))
    # The server gives 3 where 5 were asked: short pages go on while `total` says more.
    assert upstream.seen == [(5, 0), (5, 3), (5, 6)]
    assert upstream.refusals == []
    assert len(set(upstream.signatures)) == 3  # the query is signed: each page differs


async def test_an_empty_page_ends_paging_even_if_total_says_more(paging) -> None:
    upstream, url = paging
    upstream.items = [{"n": n} for n in range(4)]
    upstream.total = 10
    assert await fetch(url, PAGED) == [0, 1, 2, 3]
    assert upstream.seen == [(5, 0), (5, 3), (5, 4)]


async def test_a_numeric_string_total_is_read(paging) -> None:
    upstream, url = paging
    upstream.items = [{"n": n} for n in range(2)]
    upstream.total = "2"
    assert await fetch(url, PAGED) == [0, 1]
    assert upstream.seen == [(5, 0)]


@pytest.mark.parametrize(
    ("total", "detail"),
    [
        (OMIT, "total is missing"),
        ("many", "total is not an integer"),
        (-1, "total is out of range"),
        (True, "total is not an integer"),
    ],
)
async def test_a_bad_total_is_an_invalid_response(paging, total: object, detail: str) -> None:
    upstream, url = paging
    upstream.items = [{"n": 1}]
    upstream.total = total
    with pytest.raises(FetchError) as info:
        await fetch(url, PAGED)
    assert info.value.reason is Reason.INVALID_RESPONSE
    assert detail in info.value.detail


async def test_an_upstream_that_never_finishes_paging_is_cut_at_the_page_limit(paging) -> None:
    upstream, url = paging
    upstream.items = [{"n": n} for n in range(MAX_PAGES + 50)]
    upstream.server_page = 1
    upstream.total = 10**9
    with pytest.raises(FetchError) as info:
        await fetch(url, PAGED, page_size=1)
    assert info.value.reason is Reason.INVALID_RESPONSE
    assert f"more than {MAX_PAGES} pages" in info.value.detail
    assert len(upstream.seen) == MAX_PAGES


async def test_a_total_beyond_what_the_endpoint_reads_is_refused_before_any_page_is_kept(
    paging,
) -> None:
    upstream, url = paging
    upstream.items = [{"n": n} for n in range(3)]
    upstream.total = 11
    with pytest.raises(FetchError) as info:
        await fetch(url, BOUNDED)
    assert (info.value.reason, info.value.api_code) == (Reason.INVALID_RESPONSE, "0")
    assert info.value.detail == "total of 11 items, more than the 10 read"
    assert upstream.seen == [(5, 0)]
    upstream.total = 10
    assert await fetch(url, BOUNDED) == 3  # within bounds: read until an empty page


async def test_a_page_longer_than_asked_is_refused(paging) -> None:
    upstream, url = paging
    upstream.items = [{"n": n} for n in range(8)]
    upstream.server_page, upstream.ignore_limit = 8, True
    with pytest.raises(FetchError) as info:
        await fetch(url, PAGED, page_size=5)
    assert info.value.detail == "a page of 8 items where 5 were asked for"


async def test_data_that_is_not_a_list_is_an_invalid_response(paging) -> None:
    upstream, url = paging
    upstream.total = 1
    upstream.items = _NotAList()  # type: ignore[assignment]
    with pytest.raises(FetchError) as info:
        await fetch(url, PAGED)
    assert "not a list" in info.value.detail


class _NotAList:
    """Sliced like a list, but serialises as an object."""

    def __getitem__(self, _: slice) -> dict[str, int]:
        return {"n": 1}

    def __len__(self) -> int:
        return 1


async def test_an_unpaged_endpoint_sends_no_query(paging) -> None:
    upstream, url = paging
    assert await fetch(url, SINGLE) == 7
    assert upstream.seen == []
    assert upstream.refusals == []


def test_every_endpoint_feeds_only_metrics_in_the_table() -> None:
    for endpoint in ENDPOINTS.values():
        for metric in endpoint.metrics:
            (row,) = [m for m in METRICS if m.name == metric.name]
            assert row.source == endpoint.name
    assert OVERVIEW.name in ENDPOINTS


# --- the subscription and quota-tier parsers ------------------------------------------


@pytest.mark.parametrize("kilobyte", [1024, 1000])
@pytest.mark.parametrize("as_strings", [False, True], ids=["numbers", "strings"])
def test_the_documented_subscription_example(kilobyte: int, as_strings: bool) -> None:
    data = {k: str(v) for k, v in DOC_SUBSCRIPTION.items()} if as_strings else DOC_SUBSCRIPTION
    sub = SUBSCRIPTION.parse(data, kilobyte)
    gb = kilobyte**3
    assert (sub.capacity, sub.users, sub.users_limit) == (10240 * gb, 20, 100)
    assert sub.product_type == {("1",): 1}
    assert sub.type_quota == {
        ("department",): 6144 * gb, ("personal",): 2048 * gb, ("group",): 2048 * gb,
        ("reserved",): 0,
    }  # fmt: skip
    assert sub.type_quota_assigned == {
        ("department",): 42 * gb,
        ("personal",): 35 * gb,
        ("group",): 250 * gb,
    }
    assert sub.type_used == {
        ("department",): 1975057 * kilobyte,
        ("personal",): 3933426 * kilobyte,
        ("group",): 1844815 * kilobyte,
    }
    assert sum(sub.type_used.values()) == 7753298 * kilobyte  # consistent, as documented


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"userCount": None}, "data.userCount is missing"),
        ({"spaceCapacity": -1}, "data.spaceCapacity is out of range"),
        ({"deptSpaceQuota": 1.5}, "data.deptSpaceQuota is not an integer (float)"),
        ({"groupSpaceUsed": True}, "data.groupSpaceUsed is not an integer (bool)"),
        ({"productType": None}, "data.productType is not a printable string"),
        ({"productType": "a\nb"}, "data.productType is not a printable string"),
        ({"productType": "x" * 65}, "data.productType is longer than 64"),
        ({"productType": ["1"]}, "data.productType is not a printable string"),
    ],
)
def test_a_doubtful_subscription_is_an_invalid_response(change: dict, detail: str) -> None:
    data = {k: v for k, v in (DOC_SUBSCRIPTION | change).items() if v is not None}
    with pytest.raises(FetchError) as info:
        SUBSCRIPTION.parse(data, 1024)
    assert (info.value.reason, info.value.detail) == (Reason.INVALID_RESPONSE, detail)


def test_a_numeric_product_type_is_read_as_its_text() -> None:
    assert SUBSCRIPTION.parse(DOC_SUBSCRIPTION | {"productType": 2}, 1024).product_type == {
        ("2",): 1
    }


def tier(quota: object, used: object = 0) -> dict[str, object]:
    return {"quota": quota, "totalAllocation": 1, "totalCapacity": 2, "totalUsed": used}


def test_tiers_are_keyed_by_their_quota_in_bytes() -> None:
    tiers = QUOTA_TIERS.parse([tier("1"), tier(5, "3")], 1000)
    assert tiers.allocated == {("1",): 1000, ("5",): 1000}
    assert tiers.capacity == {("1",): 2000, ("5",): 2000}
    assert tiers.used == {("1",): 0, ("5",): 3000}
    assert QUOTA_TIERS.parse([], 1024).used == {}  # a tenant without tiers: no series


@pytest.mark.parametrize(
    ("items", "detail"),
    [
        ([tier("1"), tier("1")], "data[1].quota '1' repeats"),
        (["x"], "data[0] is not an object"),
        ([tier("")], "data[0].quota is not a printable string"),
        ([tier("1", -5)], "data[0].totalUsed is out of range"),
        ([{"quota": "1"}], "data[0].totalAllocation is missing"),
        ([tier(str(n)) for n in range(1001)], "more than 1000 quota tiers"),
    ],
    ids=["repeated", "not-object", "empty-quota", "negative", "missing", "too-many"],
)
def test_doubtful_tiers_are_an_invalid_response(items: list, detail: str) -> None:
    with pytest.raises(FetchError) as info:
        QUOTA_TIERS.parse(items, 1024)
    assert (info.value.reason, info.value.detail) == (Reason.INVALID_RESPONSE, detail)
