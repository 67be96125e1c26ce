"""The client against a loopback upstream answering every documented and malformed body."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from exporter.core.endpoints import OVERVIEW
from exporter.core.model import FetchError, Reason, Usage, UsageBytes
from exporter.core.settings import AccountConfig, Secret, SecretRef, TokenAuth
from exporter.upstream.client import BODY_LIMIT, KooDriveClient, parse_answer, target_of
from exporter.upstream.credentials import CredentialStore

NOW = 1_725_852_805.75  # 2024-09-09T03:33:25.75Z
OK_DATA = {"totalAllocation": 43, "totalCapacity": 1051187, "totalUsed": 33085606}
DOC_EXAMPLE = {"data": OK_DATA, "code": 0, "msg": "success"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Upstream:
    """A loopback server whose answer each test sets; it records the requests it saw."""

    def __init__(self) -> None:
        self.handler: Handler = self.json(DOC_EXAMPLE)
        self.requests: list[web.Request] = []

    @staticmethod
    def json(document: Any, status: int = 200) -> Handler:
        return Upstream.raw(json.dumps(document).encode(), status)

    @staticmethod
    def raw(body: bytes, status: int = 200, **headers: str) -> Handler:
        async def handler(_: web.Request) -> web.Response:
            return web.Response(body=body, status=status, headers=headers)

        return handler

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        return await self.handler(request)


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, TestServer]]:
    up = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", up.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield up, server
    finally:
        await server.close()


def account(endpoint: str, timeout: float = 2.0) -> AccountConfig:
    return AccountConfig(
        name="acme",
        user_id="1505084218764547200",
        auth=TokenAuth(token=SecretRef(key="token", value=Secret("Bearer+tok"))),
        endpoint=endpoint,
        interval=max(timeout, 1.0),
        timeout=timeout,
        language="zh-CN",
    )


def parse_overview(body: bytes) -> object:
    """The overview's parse of a 200 body, in KB (a kilobyte of 1)."""
    return parse_answer(OVERVIEW, body, 1)


async def fetch(endpoint: str, timeout: float = 2.0) -> UsageBytes:
    async with aiohttp.ClientSession() as session:
        client = KooDriveClient(session, CredentialStore(), clock=lambda: NOW, rng=random.Random(1))
        return await client.fetch(account(endpoint, timeout), OVERVIEW, client.new_trace_id())


def base(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def test_documented_example_is_parsed_and_request_is_well_formed(upstream) -> None:
    up, server = upstream
    usage = await fetch(base(server))
    assert usage == Usage(allocation_kb=43, capacity_kb=1051187, used_kb=33085606).in_bytes(1024)
    (request,) = up.requests
    assert request.method == "GET"
    assert request.path == "/koodrive/ose/v1/space/usage/overview"
    assert request.headers["Host"] == f"127.0.0.1:{server.port}"
    # The clock says 03:33:25.75; X-Date is 2 s earlier (x_date_margin), truncated.
    assert request.headers["X-Date"] == "20240909T033323Z"
    assert request.headers["X-User-Id"] == "1505084218764547200"
    assert request.headers["Authorization"] == "Bearer+tok"
    assert request.headers["language"] == "zh-CN"
    assert re.fullmatch(r"[A-Za-z0-9]{58}", request.headers["X-Traceid"])
    assert request.headers["User-Agent"].startswith("koodrive-exporter/")


VALID_BODIES = {
    "code as string": {"code": "0", "msg": "成功", "data": OK_DATA},
    "numeric strings": {
        "code": 0,
        "data": {"totalAllocation": "43", "totalCapacity": "1051187", "totalUsed": "33085606"},
    },
    "integral floats": {
        "code": 0,
        "data": {"totalAllocation": 43.0, "totalCapacity": 1051187.0, "totalUsed": 33085606},
    },
    "extra fields": {"code": 0, "msg": "ok", "data": {**OK_DATA, "quota": "5"}, "extra": [1]},
}


@pytest.mark.parametrize("body", VALID_BODIES.values(), ids=VALID_BODIES.keys())
async def test_tolerated_variants(upstream, body: dict[str, Any]) -> None:
    up, server = upstream
    up.handler = Upstream.json(body)
    assert await fetch(base(server)) == Usage(43, 1051187, 33085606).in_bytes(1024)


def with_data(**fields: Any) -> dict[str, Any]:
    return {"code": 0, "msg": "success", "data": {**OK_DATA, **fields}}


FAILURES: dict[str, tuple[Handler, Reason]] = {
    "non-zero code": (Upstream.json({"code": 13000201, "msg": "inner"}), Reason.API_ERROR),
    "non-zero string code": (Upstream.json({"code": "13000301", "msg": "x"}), Reason.API_ERROR),
    "gateway auth code": (
        Upstream.json({"error_code": "APIGW.0301", "error_msg": "x"}),
        Reason.AUTH,
    ),
    "gateway other code": (Upstream.json({"error_code": "APIGW.0101"}), Reason.API_ERROR),
    "no code": (Upstream.json({"msg": "success", "data": OK_DATA}), Reason.INVALID_RESPONSE),
    "bool code": (Upstream.json({"code": False, "data": OK_DATA}), Reason.INVALID_RESPONSE),
    "main-docs example without data": (
        Upstream.json({"code": 0, "msg": "success"}),
        Reason.INVALID_RESPONSE,
    ),
    "main-docs zh example, trailing comma": (
        Upstream.raw('{"code":0,"msg":"成功",}'.encode()),
        Reason.INVALID_RESPONSE,
    ),
    "data null": (Upstream.json({"code": 0, "data": None}), Reason.INVALID_RESPONSE),
    "data list": (Upstream.json({"code": 0, "data": [OK_DATA]}), Reason.INVALID_RESPONSE),
    "field missing": (
        Upstream.json({"code": 0, "data": {"totalCapacity": 1, "totalUsed": 1}}),
        Reason.INVALID_RESPONSE,
    ),
    "field null": (Upstream.json(with_data(totalUsed=None)), Reason.INVALID_RESPONSE),
    "field bool": (Upstream.json(with_data(totalUsed=True)), Reason.INVALID_RESPONSE),
    "field negative": (Upstream.json(with_data(totalUsed=-1)), Reason.INVALID_RESPONSE),
    "field above int64": (Upstream.json(with_data(totalUsed=2**63)), Reason.INVALID_RESPONSE),
    "field fraction": (Upstream.json(with_data(totalUsed=1.5)), Reason.INVALID_RESPONSE),
    "field junk string": (Upstream.json(with_data(totalUsed="12kb")), Reason.INVALID_RESPONSE),
    "field object": (Upstream.json(with_data(totalUsed={"v": 1})), Reason.INVALID_RESPONSE),
    "truncated JSON": (Upstream.raw(b'{"code":0,"data":{"totalAll'), Reason.INVALID_RESPONSE),
    "empty body": (Upstream.raw(b""), Reason.INVALID_RESPONSE),
    "HTML": (Upstream.raw(b"<html>maintenance</html>"), Reason.INVALID_RESPONSE),
    "JSON array": (Upstream.json([DOC_EXAMPLE]), Reason.INVALID_RESPONSE),
    "not UTF-8": (Upstream.raw(b'{"code":0,"msg":"\xff\xfe"}'), Reason.INVALID_RESPONSE),
    "deeply nested": (Upstream.raw(b"[" * 200_000), Reason.INVALID_RESPONSE),
    "HTTP 400 auth failed": (
        Upstream.json({"code": 13000102, "msg": "validation"}, 400),
        Reason.AUTH,
    ),
    "HTTP 401": (Upstream.json({"code": 401, "msg": "unauthorized"}, 401), Reason.AUTH),
    "HTTP 403": (Upstream.raw(b"forbidden", 403), Reason.AUTH),
    "HTTP 429": (Upstream.raw(b"slow down", 429, **{"Retry-After": "1"}), Reason.RATE_LIMITED),
    "HTTP 500": (Upstream.json({"code": 13000201, "msg": "inner"}, 500), Reason.HTTP_ERROR),
    "HTTP 503 HTML": (Upstream.raw(b"<h1>down</h1>", 503), Reason.HTTP_ERROR),
    "HTTP 404": (Upstream.raw(b"", 404), Reason.HTTP_ERROR),
    "redirect not followed": (
        Upstream.raw(b"", 302, Location="https://elsewhere.invalid/"),
        Reason.HTTP_ERROR,
    ),
    "gateway auth code on 500": (
        Upstream.json({"error_code": "APIGW.0303", "error_msg": "bad app auth"}, 500),
        Reason.AUTH,
    ),
    "body over 1 MiB": (Upstream.raw(b" " * (BODY_LIMIT + 1)), Reason.INVALID_RESPONSE),
}
# Bodies a lenient parser reads as a success, or chokes on in unexpected ways.
HOSTILE_JSON: dict[str, bytes] = {
    "duplicate code, last one 0": (
        b'{"code":1,"msg":"x","data":{"totalAllocation":1,"totalCapacity":2,"totalUsed":1},'
        b'"code":0}'
    ),
    "duplicate code, both 0": b'{"code":0,"code":0,"data":' + json.dumps(OK_DATA).encode() + b"}",
    "duplicate data": (
        b'{"code":0,"data":{"totalAllocation":1},"data":' + json.dumps(OK_DATA).encode() + b"}"
    ),
    "duplicate total inside data": (
        b'{"code":0,"data":{"totalAllocation":1,"totalCapacity":2,"totalUsed":9,"totalUsed":1}}'
    ),
    "1e999": b'{"code":0,"data":{"totalAllocation":1,"totalCapacity":1e999,"totalUsed":1}}',
    "-1e999 code": b'{"code":-1e999,"data":{}}',
    "10,000-digit integer": (
        b'{"code":0,"data":{"totalAllocation":1,"totalCapacity":'
        + b"9" * 10_000
        + b',"totalUsed":1}}'
    ),
    "10,000-digit code": b'{"code":' + b"1" * 10_000 + b"}",
    "NaN": b'{"code":0,"data":{"totalAllocation":NaN,"totalCapacity":1,"totalUsed":1}}',
    "Infinity": b'{"code":0,"data":{"totalAllocation":Infinity,"totalCapacity":1,"totalUsed":1}}',
    "deeply nested objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "deeply nested in data": b'{"code":0,"data":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize(("handler", "reason"), FAILURES.values(), ids=FAILURES.keys())
async def test_failures_are_typed(upstream, handler: Handler, reason: Reason) -> None:
    up, server = upstream
    up.handler = handler
    with pytest.raises(FetchError) as info:
        await fetch(base(server))
    assert info.value.reason is reason
    assert len(info.value.detail) <= 200


@pytest.mark.parametrize("body", HOSTILE_JSON.values(), ids=HOSTILE_JSON.keys())
async def test_hostile_json_is_invalid_response_never_an_exception(upstream, body) -> None:
    up, server = upstream
    up.handler = Upstream.raw(body)
    with pytest.raises(FetchError) as info:
        await fetch(base(server))
    assert info.value.reason is Reason.INVALID_RESPONSE
    assert len(info.value.detail) <= 200


@pytest.mark.parametrize("body", HOSTILE_JSON.values(), ids=HOSTILE_JSON.keys())
def test_parse_overview_refuses_hostile_json(body: bytes) -> None:
    with pytest.raises(FetchError) as info:
        parse_overview(body)
    assert info.value.reason is Reason.INVALID_RESPONSE


def test_duplicate_keys_are_named_in_the_detail() -> None:
    with pytest.raises(FetchError) as info:
        parse_overview(HOSTILE_JSON["duplicate code, last one 0"])
    assert info.value.detail == "body is refused: duplicate key 'code'"


async def test_error_bodies_with_duplicate_keys_keep_the_status_reason(upstream) -> None:
    up, server = upstream
    up.handler = Upstream.raw(b'{"code":"APIGW.0301","code":1}', 500)
    with pytest.raises(FetchError) as info:
        await fetch(base(server))
    assert (info.value.reason, info.value.api_code) == (Reason.HTTP_ERROR, None)


DATES = {
    "year 9999": "Fri, 31 Dec 9999 23:59:59 GMT",
    "year 9999, -2359": "Fri, 31 Dec 9999 23:59:59 -2359",
    "1970": "Thu, 01 Jan 1970 00:00:00 GMT",
    "now, -2359": "Mon, 09 Sep 2024 03:33:25 -2359",
    "now, +0000": "Mon, 09 Sep 2024 03:33:25 +0000",
    "garbage": "yesterday",
}


@pytest.mark.parametrize("date", DATES.values(), ids=DATES.keys())
async def test_an_unusable_date_is_ignored_noted_once_and_never_wedges(upstream, date) -> None:
    up, server = upstream
    good = "Mon, 09 Sep 2024 03:33:35 GMT"  # 10 s ahead of NOW (minus the Date truncation)

    def answer(value: str) -> Handler:
        return Upstream.raw(json.dumps(DOC_EXAMPLE).encode(), Date=value)

    async with aiohttp.ClientSession() as session:
        client = KooDriveClient(session, CredentialStore(), clock=lambda: NOW, rng=random.Random(1))
        acct = account(base(server))
        up.handler = answer(good)
        await client.fetch(acct, OVERVIEW, client.new_trace_id())
        assert client.clock_skew(acct) == pytest.approx(9.75)
        up.handler = answer(date)
        for _ in range(3):  # each answer succeeds, and the estimate stays where it was
            assert (
                await client.fetch(acct, OVERVIEW, client.new_trace_id())
            ).used == 33085606 * 1024
            assert client.clock_skew(acct) == pytest.approx(9.75)
        x_dates = [request.headers["X-Date"] for request in up.requests]
        assert set(x_dates) == {"20240909T033323Z", "20240909T033333Z"}
        ((event, fields),) = client.drain_notices(acct)  # once per run, not per answer
        assert event == "server_date_ignored"
        assert fields["date"] == date
        assert client.drain_notices(acct) == []
        up.handler = answer(good)
        await client.fetch(acct, OVERVIEW, client.new_trace_id())
        up.handler = answer(date)
        await client.fetch(acct, OVERVIEW, client.new_trace_id())
        assert len(client.drain_notices(acct)) == 1  # a new run is noted again


async def test_a_first_answer_with_an_absurd_date_leaves_no_skew(upstream) -> None:
    up, server = upstream
    up.handler = Upstream.raw(json.dumps(DOC_EXAMPLE).encode(), Date=DATES["1970"])
    async with aiohttp.ClientSession() as session:
        client = KooDriveClient(session, CredentialStore(), clock=lambda: NOW, rng=random.Random(1))
        acct = account(base(server))
        for _ in range(2):
            await client.fetch(acct, OVERVIEW, client.new_trace_id())
        assert client.clock_skew(acct) is None
        assert [r.headers["X-Date"] for r in up.requests] == ["20240909T033323Z"] * 2


async def test_huge_retry_after_is_parsed_without_raising(upstream) -> None:
    up, server = upstream
    up.handler = Upstream.raw(b"", 429, **{"Retry-After": "9" * 4000})
    with pytest.raises(FetchError) as info:
        await fetch(base(server))
    assert (info.value.reason, info.value.retry_after) == (Reason.RATE_LIMITED, 86400.0)


async def test_api_error_keeps_code_and_message(upstream) -> None:
    up, server = upstream
    up.handler = Upstream.json({"code": 13000201, "msg": "inner server invoke failure"})
    with pytest.raises(FetchError) as info:
        await fetch(base(server))
    assert info.value.api_code == "13000201"
    assert "inner server invoke failure" in info.value.detail


async def test_chunked_body_over_limit_is_cut_off(upstream) -> None:
    up, server = upstream

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"x" * 65536
        for _ in range(10 * 16):  # 10 MiB unless the client stops reading first
            await response.write(chunk)
        return response

    up.handler = endless
    with pytest.raises(FetchError) as info:
        await fetch(base(server))
    assert info.value.reason is Reason.INVALID_RESPONSE
    assert "limit" in info.value.detail


async def test_gzip_body_is_accepted(upstream) -> None:
    up, server = upstream
    up.handler = Upstream.raw(
        gzip.compress(json.dumps(DOC_EXAMPLE).encode()), **{"Content-Encoding": "gzip"}
    )
    assert (await fetch(base(server))).used == 33085606 * 1024


async def test_slow_answer_times_out(upstream) -> None:
    up, server = upstream

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response(DOC_EXAMPLE)

    up.handler = slow
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(FetchError) as info:
        await fetch(base(server), timeout=0.3)
    assert info.value.reason is Reason.TIMEOUT
    assert loop.time() - started < 1.5


async def test_connection_reset_is_a_connection_error(upstream) -> None:
    up, server = upstream

    async def reset(request: web.Request) -> web.Response:
        assert request.transport is not None
        sock = request.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        request.transport.close()
        await asyncio.sleep(0.1)
        return web.Response()

    up.handler = reset
    with pytest.raises(FetchError) as info:
        await fetch(base(server))
    assert info.value.reason is Reason.CONNECTION


async def test_refused_connection() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FetchError) as info:
        await fetch(f"http://127.0.0.1:{port}")
    assert info.value.reason is Reason.CONNECTION


async def test_tls_to_a_plain_http_server_is_a_tls_error(upstream) -> None:
    _, server = upstream
    with pytest.raises(FetchError) as info:
        await fetch(f"https://127.0.0.1:{server.port}")
    assert info.value.reason is Reason.TLS


async def test_garbage_instead_of_http_is_invalid_response() -> None:
    async def garbage(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(FetchError) as info:
            await fetch(f"http://127.0.0.1:{port}")
    finally:
        server.close()
        await server.wait_closed()
    assert info.value.reason is Reason.INVALID_RESPONSE


@pytest.mark.parametrize(
    ("endpoint", "host", "path"),
    [
        ("https://intl.myhuaweicloud-koodrive.com", "intl.myhuaweicloud-koodrive.com", ""),
        ("https://intl.myhuaweicloud-koodrive.com:443", "intl.myhuaweicloud-koodrive.com", ""),
        ("https://example.com:8443/prefix", "example.com:8443", "/prefix"),
        ("http://127.0.0.1:9878", "127.0.0.1:9878", ""),
        ("http://[::1]:9878", "[::1]:9878", ""),
    ],
)
def test_host_header_matches_what_aiohttp_would_send(endpoint: str, host: str, path: str) -> None:
    url, sent_host, signed_path = target_of(endpoint, "/koodrive/ose/v1/space/usage/overview")
    assert sent_host == host
    assert signed_path == f"{path}/koodrive/ose/v1/space/usage/overview"
    assert str(url).endswith("/koodrive/ose/v1/space/usage/overview")


def test_parse_overview_is_usable_without_http() -> None:
    assert parse_overview(json.dumps(DOC_EXAMPLE).encode()) == UsageBytes(43, 1051187, 33085606)
