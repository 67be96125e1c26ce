"""The second hostile probe's findings on the HTTP edge (D4-D7, R1, R2), each with real
clients over loopback and with other values of its class than the probe used.

(D1-D3, what an upstream answer may hold, are in test_answer_sinks.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from support import (
    HASH,
    PASSWORD,
    FakeSource,
    LogCapture,
    basic,
    connect_from,
    connector_from,
    matrix_config,
    socket_from,
    wait_for,
)

from exporter.core.config import load_config
from exporter.web import server as server_module
from exporter.web.edge import MAX_BODY_BYTES
from exporter.web.server import EDGE, Settings, create_app, serve
from exporter.web.webconfig import load_web_config


@dataclass
class Running:
    url: str
    port: int
    logs: LogCapture
    app: object
    config: Path


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, accounts: int = 1, web_yaml: str = "", **settings: object
) -> AsyncIterator[Running]:
    names = [f"a{index}" for index in range(accounts)]
    path = matrix_config(tmp_path, "http://127.0.0.1:9", names, interval="1h", timeout="1s")
    (tmp_path / "web.yml").write_text(web_yaml, encoding="utf-8")
    logs = LogCapture("info")
    app = create_app(
        load_config(path),
        logs.log,
        Settings(
            source_factory=lambda _s: FakeSource(),
            startup_window=0.01,
            config_file=str(path),
            enable_lifecycle=True,
            web_config=load_web_config(tmp_path / "web.yml"),
            web_config_file=str(tmp_path / "web.yml"),
            **settings,  # type: ignore[arg-type]
        ),
    )
    stop, urls = asyncio.Event(), []
    task = asyncio.create_task(serve(app, "127.0.0.1:0", logs.log, stop, urls.extend))
    await wait_for(lambda: bool(urls) or task.done())
    try:
        yield Running(urls[0], int(urls[0].rsplit(":", 1)[1]), logs, app, path)
    finally:
        stop.set()
        await task


async def exchange(port: int, request: bytes, source: str = "127.0.0.1") -> bytes:
    """Send raw bytes, read until the server closes (or 5 s pass)."""
    reader, writer = await connect_from(source, port)
    writer.write(request)
    data = b""
    with contextlib.suppress(ConnectionError, TimeoutError):
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):
                data += chunk
    writer.close()
    return data


class count_reloads:
    """Counts the reloads that run, by wrapping the server's reload_config until restored."""

    def __init__(self) -> None:
        self.count = 0
        self._real = server_module.reload_config

        async def counted(app):
            self.count += 1
            return await self._real(app)

        server_module.reload_config = counted  # type: ignore[assignment]

    def restore(self) -> None:
        server_module.reload_config = self._real  # type: ignore[assignment]


# --- D4: undecodable credentials ---------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"Basic \xc3\xa9", b"Basic \xff\xfe", b"Basic /w==", b"Basic \xe2\x80\xae", b"Basic ////"],
    ids=["e-acute", "latin1-bytes", "non-utf8-user", "rtl-override", "not-a-pair"],
)
async def test_undecodable_credentials_are_a_401_without_a_traceback(
    tmp_path: Path, value: bytes
) -> None:
    async with running(tmp_path, web_yaml=f"basic_auth_users:\n  alice: {HASH}\n") as served:
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: "
        answers = await asyncio.gather(
            *(exchange(served.port, request + value + b"\r\n\r\n") for _ in range(50))
        )
        assert {answer.split(b"\r\n", 1)[0] for answer in answers} == {b"HTTP/1.1 401 Unauthorized"}
        assert "Traceback" not in served.logs.text
        assert not served.logs.events("error")
        assert "error" not in served.logs.text.lower()
        ok = await exchange(
            served.port,
            b"GET /-/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + f"Authorization: {basic('alice', PASSWORD)['Authorization']}\r\n\r\n".encode(),
        )
        assert ok.split(b" ", 2)[1] in (b"200", b"503")


# --- D5: a flood of reloads cannot lock others out ---------------------------------------


async def test_waiting_reloads_are_evictable_and_coalesce(tmp_path: Path) -> None:
    """Sixty clients from one address (127.0.0.9, of this test alone: TIME_WAIT ports) loop
    POST /-/reload on a 2,000-account config with a cap of 20 connections; probes from
    another address are all answered, and the reloads run one at a time, each shared by
    every request that waited for it."""
    async with running(tmp_path, accounts=2000, max_connections=20) as served:
        runs = count_reloads()
        stop_at = time.monotonic() + 3.0
        statuses: list[int] = []

        async def flooder() -> None:
            connector = connector_from("127.0.0.9", limit=1)
            async with aiohttp.ClientSession(connector=connector) as session:
                while time.monotonic() < stop_at:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.post(served.url + "/-/reload") as response:
                            statuses.append(response.status)

        try:
            flood = [asyncio.create_task(flooder()) for _ in range(60)]
            await asyncio.sleep(0.3)
            probes = []
            async with aiohttp.ClientSession() as session:
                while time.monotonic() < stop_at:
                    started = time.monotonic()
                    async with session.get(served.url + "/-/healthy") as response:
                        probes.append((response.status, time.monotonic() - started))
                    await asyncio.sleep(0.05)
            await asyncio.gather(*flood)
        finally:
            runs.restore()
        assert probes
        assert {status for status, _ in probes} == {200}
        assert served.app[EDGE].evicted > 0  # the waiting reloads made room
        assert set(statuses) <= {200}
        assert len(statuses) > runs.count  # shared: fewer reloads ran than were answered


# --- D6: blank lines without end -----------------------------------------------------------


async def test_blank_lines_after_a_request_count_against_the_size_cap(tmp_path: Path) -> None:
    """A complete request, then CRLF streamed at full speed: cut after the edge's cap, long
    before the (10 s) head deadline, having cost the exporter no memory."""
    async with running(tmp_path) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"OK\n")).startswith(b"HTTP/1.1 200 OK")
        sent, started = 0, time.monotonic()
        with contextlib.suppress(ConnectionError):
            while sent < 64 << 20 and time.monotonic() - started < 5:
                writer.write(b"\r\n" * 8192)
                await writer.drain()
                sent += 16384
        writer.close()
        assert time.monotonic() - started < 4
        assert sent < 16 << 20  # what socket buffers took before the cut; the exporter kept none


@pytest.mark.parametrize("filler", [b"\r\n", b"\n", b"\r"])
async def test_dripped_blank_lines_meet_the_head_deadline(tmp_path: Path, filler: bytes) -> None:
    async with running(tmp_path, read_header_timeout=0.5) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        with contextlib.suppress(ConnectionError):
            while time.monotonic() - started < 4 and not reader.at_eof():
                writer.write(filler)
                await writer.drain()
                await asyncio.sleep(0.05)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.001):
                        await reader.read(65536)
        assert reader.at_eof() or writer.is_closing()
        assert time.monotonic() - started < 2.5
        writer.close()


# --- D7: a body is not a head ------------------------------------------------------------


def post(path: str, body: bytes, chunked: bool = False) -> bytes:
    method = b"POST" if path == "/-/reload" else b"GET"
    if chunked:
        pieces = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 8192]), body[i : i + 8192])
                          for i in range(0, len(body), 8192))  # fmt: skip
        framing, payload = b"Transfer-Encoding: chunked", pieces + b"0\r\n\r\n"
    else:
        framing, payload = b"Content-Length: %d" % len(body), body
    return b"%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s\r\n\r\n%s" % (
        method,
        path.encode(),
        framing,
        payload,
    )


@pytest.mark.parametrize("size", [1, 40_000, 60_000, MAX_BODY_BYTES])
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
async def test_a_body_up_to_the_cap_is_read_and_dropped(
    tmp_path: Path, size: int, chunked: bool
) -> None:
    async with running(tmp_path) as served:
        answer = await exchange(served.port, post("/-/reload", b"x" * size, chunked))
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        assert b"1 accounts: 0 added, 0 removed, 0 changed" in answer


@pytest.mark.parametrize("size", [MAX_BODY_BYTES + 1, 200_000, 4 << 20])
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("path", ["/-/reload", "/-/healthy"])
async def test_a_body_past_the_cap_is_a_413(
    tmp_path: Path, size: int, chunked: bool, path: str
) -> None:
    async with running(tmp_path) as served:
        answer = await exchange(served.port, post(path, b"x" * size, chunked))
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


async def test_a_get_with_a_small_body_is_answered(tmp_path: Path) -> None:
    async with running(tmp_path) as served:
        request = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        answer = await exchange(
            served.port, request + b"Content-Length: 5000\r\n\r\n" + b"y" * 5000
        )
        assert answer.startswith(b"HTTP/1.1 200 OK")


# --- R1: the landing page ----------------------------------------------------------------


async def test_the_landing_page_costs_one_render_however_many_ask(tmp_path: Path) -> None:
    async with running(tmp_path, accounts=3000) as served:
        renders = 0
        real = server_module.render_landing

        def counted(*args, **kwargs):
            nonlocal renders
            renders += 1
            return real(*args, **kwargs)

        server_module.render_landing = counted  # type: ignore[assignment]
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

                async def landing() -> int:
                    async with session.get(served.url + "/") as response:
                        await response.read()
                        return response.status

                statuses = await asyncio.gather(*(landing() for _ in range(200)))
        finally:
            server_module.render_landing = real  # type: ignore[assignment]
        assert set(statuses) == {200}
        assert renders <= 3  # one a second at most, however many ask


# --- R2: a reload loop cannot flood the log ------------------------------------------------


async def test_a_reload_loop_logs_the_outcome_once(tmp_path: Path) -> None:
    async with running(tmp_path) as served:
        async with aiohttp.ClientSession() as session:
            for _ in range(15):
                async with session.post(served.url + "/-/reload") as response:
                    assert response.status == 200
            served.config.write_text("accounts: [\n")
            for _ in range(15):
                async with session.post(served.url + "/-/reload") as response:
                    assert response.status == 500
        reloads = served.logs.events("reloaded") + served.logs.events("reload_failed")
        assert len(reloads) <= 3, [event["event"] for event in reloads]


def test_sockets_are_loopback_only() -> None:
    """The flood tests bind to 127.0.0.2 as a second client address: loopback, as required."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        assert sock.getsockname()[0].startswith("127.")


async def test_second_address_clients_take_their_port_only_at_connect() -> None:
    """The flood clients' sockets reserve no port at bind (a bind to port 0 alone fails
    once the suite's TIME_WAIT sockets have used that address's ports up), and connect."""
    with socket_from("127.0.0.2") as sock:
        assert sock.getsockname() == ("127.0.0.2", 0)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        _, writer = await connect_from("127.0.0.2", port)
        assert writer.get_extra_info("sockname")[0] == "127.0.0.2"
        assert writer.get_extra_info("sockname")[1] != 0
        writer.close()


# --- found by review of the new edge -------------------------------------------------------


async def test_a_promised_body_that_never_comes_meets_the_deadline_and_is_evictable(
    tmp_path: Path,
) -> None:
    """A request whose body never arrives is not complete: it stays under the head deadline
    and, not yet running a handler, can be evicted for a client from another address."""
    async with running(tmp_path, max_connections=4, read_header_timeout=1.0) as served:
        drips = []
        for _ in range(4):
            reader, writer = await connect_from("127.0.0.10", served.port)
            writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
            drips.append((reader, writer))
        await wait_for(lambda: len(served.app[EDGE].connections) == 4, 3)
        answer = await exchange(served.port, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK")  # evicted a drip to get in
        started = time.monotonic()
        for reader, writer in drips:
            with contextlib.suppress(ConnectionError):
                async with asyncio.timeout(3):
                    await reader.read()
            writer.close()
        assert time.monotonic() - started < 2.5


async def test_a_client_that_leaves_mid_body_logs_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(tmp_path) as served:
        for _ in range(5):
            _, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 9000\r\n\r\nab")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.transport.abort()
        await asyncio.sleep(0.2)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize(
    "accept",
    ["application/openmetrics-text; version=abc", "text/plain; version=1.x", "text/plain;version="],
)
async def test_an_accept_header_with_a_version_nobody_can_read_gets_text(
    tmp_path: Path, accept: str
) -> None:
    async with running(tmp_path) as served:
        request = (
            f"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAccept: {accept}\r\n\r\n"
        )
        answer = await exchange(served.port, request.encode())
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert b"Content-Type: text/plain; version=0.0.4" in answer


@pytest.mark.parametrize("expect", [False, True], ids=["late-body", "100-continue"])
async def test_a_reload_body_that_comes_after_its_head_is_read(
    tmp_path: Path, expect: bool
) -> None:
    async with running(tmp_path) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        head = (
            b"POST /-/reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 40000\r\n"
        )
        writer.write(head + (b"Expect: 100-continue\r\n" if expect else b"") + b"\r\n")
        if expect:
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
        await asyncio.sleep(0.2)
        writer.write(b"x" * 40000)
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]


@pytest.mark.parametrize(
    "first",
    [
        b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n",  # aiohttp's own 404
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",  # its own 405
        b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab",  # a body
    ],
    ids=["404", "405", "body"],
)
async def test_an_idle_keep_alive_outlives_the_head_deadline(tmp_path: Path, first: bytes) -> None:
    async with running(tmp_path, read_header_timeout=0.5) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(first)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        await asyncio.sleep(1.2)  # idle past the head deadline, within keep-alive
        writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"OK\n")).startswith(b"HTTP/1.1 200 OK")
        writer.close()


async def test_reloads_requested_without_end_run_half_the_time_at_most(tmp_path: Path) -> None:
    """Four clients loop POST /-/reload for 1.5 s: each reload waits as long as the last one
    took (0.1 s at least), so a few ms reloads run about ten times a second, not hundreds."""
    async with running(tmp_path) as served:
        runs = count_reloads()
        stop_at = time.monotonic() + 1.5
        answered = 0

        async def client() -> None:
            nonlocal answered
            async with aiohttp.ClientSession() as session:
                while time.monotonic() < stop_at:
                    async with session.post(served.url + "/-/reload") as response:
                        assert response.status == 200
                        answered += 1

        try:
            await asyncio.gather(*(client() for _ in range(4)))
        finally:
            runs.restore()
        assert 5 <= runs.count <= 17, runs.count
        assert answered >= runs.count
