"""Hostile clients against the running exporter, over real loopback sockets.

Each test drives one attack class with real connections and asserts the bound that holds
it: connections that never finish a handshake or a head, scrapers that never read, floods
of guesses, passwords past bcrypt's 72 bytes, live web-config changes that would weaken
security, and reloads of files that are not configs at all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import socket
import ssl
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import bcrypt
import pytest
from aiohttp import web
from support import (
    HASH,
    PASSWORD,
    SCRIPT,
    TLS_AND_AUTH,
    FakeSource,
    LogCapture,
    Served,
    account,
    basic,
    connect_from,
    connector_from,
    fetch,
    reap,
    serve_guarded,
    socket_from,
    start_pair,
    two_account_config,
    wait_for,
    wait_metrics,
)

from exporter.core.settings import Config
from exporter.web.edge import BODY_PIECE
from exporter.web.server import ACCESS, EDGE, EXPOSITION, Settings, create_app, serve

AUTH_ONLY = f"basic_auth_users:\n  alice: {HASH}\n"
IDENTITY = {"Accept-Encoding": "identity"}
TLS_ONLY = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"


def stand_in(served, body: bytes) -> None:
    """Serve `body` as the /metrics body, whatever the state holds."""

    async def render_async(*_: object, gzipped: bool = False) -> bytes:
        return body

    served.app[EXPOSITION].render_async = render_async


def port_of(served: Served) -> int:
    return int(served.url.rsplit(":", 1)[1])


async def open_raw(
    served: Served, source: str = "127.0.0.1", rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket_from(source)
    if rcvbuf is not None:  # a tiny receive window, so a client that never reads stalls fast
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return await connect_from(source, port_of(served), sock)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sent before it closed the connection; fails if it did not."""
    data = b""
    async with asyncio.timeout(seconds):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                data += chunk
    return data


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, web_yaml: str, **settings: object) -> AsyncIterator[Served]:
    async for item in serve_guarded(tmp_path, web_yaml, **settings):
        yield item


# --- connections that never finish ------------------------------------------------------


async def test_tls_handshake_counts_against_the_head_deadline(tmp_path: Path) -> None:
    """Connections that never send a ClientHello are closed by the head deadline."""
    async with serving(tmp_path, TLS_ONLY, read_header_timeout=0.5) as served:
        started = time.monotonic()
        pending = [await open_raw(served) for _ in range(30)]
        for reader, _ in pending:
            assert await closed_within(reader, 3) == b""
        assert time.monotonic() - started < 1.5  # the 0.5 s deadline, with room for a busy CI
        await wait_for(lambda: not served.app[EDGE].connections, 2)
        for _, writer in pending:
            writer.close()


async def test_connection_cap_evicts_unfinished_connections_and_probes_still_answer(
    tmp_path: Path,
) -> None:
    """Three times the cap in never-handshaking connections; probes keep answering."""
    async with serving(tmp_path, TLS_ONLY, max_connections=40) as served:
        edge = served.app[EDGE]
        flood = [await open_raw(served, "127.0.0.2") for _ in range(120)]
        await asyncio.sleep(0.1)
        assert len(edge.connections) == 40
        assert edge.refused == 80  # the flooding address holds them all: refused at once
        for _ in range(5):
            started = time.monotonic()
            assert (await fetch(served, "/-/healthy"))[0] == 200
            assert (await fetch(served, "/metrics"))[0] == 200
            assert time.monotonic() - started < 1.0
        # The first probe evicted the flood's oldest connection; the slot stayed free after.
        assert edge.evicted == 1
        assert await closed_within(flood[0][0], 1) == b""
        for _, writer in flood:
            writer.close()


async def test_pending_tls_connections_cost_at_most_the_cap(tmp_path: Path) -> None:
    """asyncio's TLS layer allocates 256 KiB per connection (its public API has no knob):
    the connection cap is what bounds them, the flooding address refused past it."""
    async with serving(tmp_path, TLS_ONLY, max_connections=100) as served:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            pending = [await open_raw(served, "127.0.0.3") for _ in range(300)]
            await wait_for(lambda: served.app[EDGE].refused == 200, 5)
            await asyncio.sleep(0.1)
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert len(served.app[EDGE].connections) == 100
        assert (await fetch(served, "/-/healthy"))[0] == 200  # another address gets in
        for _, writer in pending:
            writer.close()
        print(f"{held / 100 / 1024:.0f} KiB per pending TLS connection")
        assert held < 100 * 300 * 1024, f"{held / 1024 / 1024:.1f} MiB for 100 connections"


async def test_new_connection_is_refused_when_every_connection_is_busy(tmp_path: Path) -> None:
    async with serving(tmp_path, "", max_connections=3, write_timeout=5) as served:
        stand_in(served, b"#" * (16 << 20))
        stalled = []
        for _ in range(3):  # three scrapes that never read: busy until the write deadline
            reader, writer = await open_raw(served, rcvbuf=4096)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            stalled.append((reader, writer))
        await wait_for(lambda: all(c.busy for c in served.app[EDGE].connections), 3)
        reader, writer = await open_raw(served)
        assert await closed_within(reader, 1) == b""
        assert served.app[EDGE].refused >= 1
        for _, w in (*stalled, (reader, writer)):
            w.close()


@pytest.mark.parametrize(
    "sent",
    [
        b"\r\n\r\n",
        b"\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n",
        b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n",
        b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n\r\n\r\nGET /metri",
    ],
    ids=["blank-lines-only", "blank-lines-then-partial", "pipelined-partial", "partial-after"],
)
async def test_head_deadline_cannot_be_sidestepped(tmp_path: Path, sent: bytes) -> None:
    async with serving(tmp_path, "", read_header_timeout=0.5) as served:
        reader, writer = await open_raw(served)
        writer.write(sent)
        started = time.monotonic()
        received = await closed_within(reader, 3)
        assert time.monotonic() - started < 1.5
        # A complete request in front of the partial one was still answered.
        assert received.count(b"HTTP/1.1 200") == sent.count(b"/-/healthy")
        writer.close()


async def test_head_dripped_byte_by_byte_is_cut_off(tmp_path: Path) -> None:
    async with serving(tmp_path, "", read_header_timeout=0.5) as served:
        reader, writer = await open_raw(served)
        started = time.monotonic()
        with contextlib.suppress(ConnectionError):
            for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.02)
                if reader.at_eof() or writer.is_closing():
                    break
        assert await closed_within(reader, 2) == b""
        assert time.monotonic() - started < 1.5
        writer.close()


async def test_head_size_is_capped(tmp_path: Path) -> None:
    """98 lines of 8 KB, each under aiohttp's line limit, never finishing the head."""
    async with serving(tmp_path, "") as served:
        reader, writer = await open_raw(served)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(ConnectionError):
            for index in range(98):
                writer.write(f"X-H{index}: ".encode() + b"a" * 8000 + b"\r\n")
                await writer.drain()
        received = await closed_within(reader, 3)
        assert received.startswith(b"HTTP/1.1 431 ")
        writer.close()
        assert (await fetch(served, "/metrics"))[0] == 200


# --- scrapers that never read -----------------------------------------------------------


async def test_scrape_slot_is_held_until_the_body_is_written(tmp_path: Path) -> None:
    """Real non-reading clients fill --web.max-requests; the next scrape gets 503.

    Each holds about a piece in its transport, not a copy of the 8 MiB body, and the pause
    deadline (write_timeout) closes them and frees their slots.
    """
    big = b"#" * (8 << 20)
    async with serving(tmp_path, "", max_requests=5, write_timeout=1.0) as served:
        stand_in(served, big)
        access, edge = served.app[ACCESS], served.app[EDGE]
        stalled = []
        for _ in range(5):
            reader, writer = await open_raw(served, rcvbuf=4096)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            stalled.append((reader, writer))
        await wait_for(lambda: access.scrapes == 5, 3)
        status, _, body = await fetch(served, "/metrics")
        assert (status, body) == (503, "too many concurrent scrapes\n")
        held = [c.app_transport.get_write_buffer_size() for c in edge.connections if c.busy]
        assert len(held) == 5
        assert max(held) <= BODY_PIECE + 64 * 1024
        await wait_for(lambda: access.scrapes == 0, 4)
        for reader, writer in stalled:
            received = await closed_within(reader, 2)
            assert len(received) < len(big)
            writer.close()
        status, _, body = await fetch(served, "/metrics", headers=IDENTITY)
        assert (status, len(body)) == (200, len(big))


async def test_tls_scrapers_that_never_read_hold_a_piece_and_are_cut(tmp_path: Path) -> None:
    big = b"#" * (8 << 20)
    async with serving(tmp_path, TLS_ONLY, write_timeout=1.0) as served:
        stand_in(served, big)
        access, edge = served.app[ACCESS], served.app[EDGE]
        stalled = []
        for _ in range(4):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port_of(served)))
            sock.setblocking(False)
            reader, writer = await asyncio.open_connection(
                sock=sock, ssl=served.client_context(), server_hostname="127.0.0.1"
            )
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            stalled.append((reader, writer))
        await wait_for(lambda: access.scrapes == 4, 5)
        await asyncio.sleep(0.2)
        for connection in edge.connections:
            assert connection.app_transport.get_write_buffer_size() < 1 << 20
        await wait_for(lambda: access.scrapes == 0, 5)
        for _, writer in stalled:
            writer.transport.abort()


async def test_a_slow_reader_that_keeps_reading_gets_the_whole_body(tmp_path: Path) -> None:
    """The stall deadline is for a client that reads nothing, not for one that is slow.

    About 4 MiB read 128 KiB at a time over ~2.5 s, over twice the write_timeout; each
    read makes room in the transport, which is what counts as progress.
    """
    big = bytes(range(256)) * (4 << 12)
    async with serving(tmp_path, "", write_timeout=1.0) as served:
        stand_in(served, big)
        reader, writer = await open_raw(served, rcvbuf=4096)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n")
        started = time.monotonic()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"Content-Length: %d" % len(big) in head
        received = bytearray()
        while len(received) < len(big):
            received += await reader.readexactly(min(128 * 1024, len(big) - len(received)))
            await asyncio.sleep(0.08)
        assert bytes(received) == big
        assert time.monotonic() - started > 2 * 1.0
        writer.close()


async def test_head_of_a_large_body_sends_headers_only(tmp_path: Path) -> None:
    big = b"#" * (1 << 20)
    async with serving(tmp_path, "") as served:
        stand_in(served, big)
        reader, writer = await open_raw(served)
        writer.write(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n")
        writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = await closed_within(reader, 3)
        head, _, rest = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"Content-Length: 1048576" in head
        assert rest.startswith(b"HTTP/1.1 200 ")  # the next response, no body in between
        writer.close()


# --- basic auth -------------------------------------------------------------------------


def hash_of(password: bytes, cost: int = 4) -> str:
    return bcrypt.hashpw(password[:72], bcrypt.gensalt(cost)).decode()


def auth_header(user: str, password: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(user.encode() + b":" + password).decode()}


async def test_password_longer_than_72_bytes_gets_the_exporter_toolkit_verdict(
    tmp_path: Path,
) -> None:
    long = b"p" * 72 + b"-and-then-some-more-bytes-that-bcrypt-never-reads"
    web_yaml = f"basic_auth_users:\n  alice: {hash_of(long)}\n"
    async with serving(tmp_path, web_yaml) as served:
        assert (await fetch(served, "/metrics", headers=auth_header("alice", long)))[0] == 200
        # Go's bcrypt reads 72 bytes: a different tail is the same password to it.
        other_tail = b"p" * 72 + b"anything"
        assert (await fetch(served, "/metrics", headers=auth_header("alice", other_tail)))[0] == 200
        assert (await fetch(served, "/metrics", headers=auth_header("alice", b"p" * 71)))[0] == 401


async def test_a_flood_of_guesses_does_not_delay_a_login_from_elsewhere(tmp_path: Path) -> None:
    cost = 10
    web_yaml = f"basic_auth_users:\n  alice: {hash_of(PASSWORD.encode(), cost)}\n"
    async with serving(tmp_path, web_yaml) as served:
        port = port_of(served)
        connector = connector_from("127.0.0.2", limit=0)
        async with aiohttp.ClientSession(connector=connector) as attacker:

            async def guess(index: int) -> int:
                url = f"http://127.0.0.1:{port}/metrics"
                async with attacker.get(url, headers=basic("alice", f"guess-{index}")) as r:
                    return r.status

            flood = [asyncio.create_task(guess(index)) for index in range(200)]
            await asyncio.sleep(0.2)  # the flood is in flight
            started = time.monotonic()
            status, _, _ = await fetch(served, "/metrics", headers=basic("alice", PASSWORD))
            took = time.monotonic() - started
            statuses = await asyncio.gather(*flood)
        assert status == 200
        assert took < 2.0, f"a correct login took {took:.2f}s during the flood"
        assert set(statuses) <= {401, 429}
        assert statuses.count(429) > 150  # one check at a time for the flooding address


async def test_unknown_and_cheap_users_take_as_long_as_the_costliest(tmp_path: Path) -> None:
    web_yaml = f"basic_auth_users:\n  slow: {hash_of(b'x', 12)}\n  fast: {hash_of(b'y', 4)}\n"
    async with serving(tmp_path, web_yaml) as served:

        async def timed(user: str, password: str) -> float:
            started = time.monotonic()
            assert (await fetch(served, "/metrics", headers=basic(user, password)))[0] == 401
            return time.monotonic() - started

        await timed("warm", "up")
        slow = min([await timed("slow", f"w{i}") for i in range(2)])
        fast = min([await timed("fast", f"w{i}") for i in range(2)])
        unknown = min([await timed("nobody", f"w{i}") for i in range(2)])
        assert fast > 0.7 * slow, (fast, slow)
        assert unknown > 0.7 * slow, (unknown, slow)


# --- live web config changes ------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "basic_auth_us", "{}\n", "basic_auth_users: {}\n"])
async def test_a_live_change_cannot_turn_basic_auth_off(tmp_path: Path, content: str) -> None:
    async with serving(tmp_path, AUTH_ONLY) as served:
        assert (await fetch(served, "/metrics"))[0] == 401
        await asyncio.sleep(0.01)
        (served.directory / "web.yml").write_text(content)
        assert not served.app[ACCESS].refresh()
        assert (await fetch(served, "/metrics"))[0] == 401
        assert (await fetch(served, "/metrics", headers=basic("alice", PASSWORD)))[0] == 200


# --- reloads and signals ----------------------------------------------------------------

NOT_A_CONFIG = ["? [a, b]: c\n", "accounts:\n  - name: 2024-13-45\n", "accounts: [*nope]\n"]


@pytest.mark.parametrize("text", NOT_A_CONFIG, ids=["complex-key", "bad-date", "alias"])
async def test_reload_of_a_broken_file_is_a_clean_error(tmp_path: Path, text: str) -> None:
    simulator, exporter, _, url, config = await start_pair(tmp_path, "--web.enable-lifecycle")
    try:
        await wait_metrics(url, lambda t: 'koodrive_up{account="beta"} 1' in t)
        config.write_text(text)
        async with aiohttp.ClientSession() as session, session.post(url + "/-/reload") as r:
            status, body = r.status, await r.text()
        assert status == 500
        assert body.strip()
        assert "Internal Server Error" not in body
        text_after = await wait_metrics(
            url, lambda t: "koodrive_exporter_config_last_reload_successful 0" in t
        )
        assert 'koodrive_up{account="beta"} 1' in text_after  # the old config still runs
        exporter.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        exporter.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(exporter.wait(), 10) == 0
        assert exporter.stderr is not None
        stderr = (await exporter.stderr.read()).decode()
        assert "Traceback" not in stderr
        assert "never retrieved" not in stderr
    finally:
        await reap(exporter, simulator)


# From about 40 ms on: before that the interpreter itself is starting, and no Python code
# (so no handler) runs yet.
@pytest.mark.parametrize("delay", [0.1, 0.2, 0.3, 0.5])
async def test_sigterm_right_after_start_exits_cleanly(tmp_path: Path, delay: float) -> None:
    config = two_account_config("http://127.0.0.1:9", tmp_path)
    process = await asyncio.create_subprocess_exec(
        str(SCRIPT), f"--config.file={config}", "--web.listen-address=127.0.0.1:0",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await asyncio.sleep(delay)
        process.send_signal(signal.SIGTERM)
        try:
            status = await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            assert process.stderr is not None
            pytest.fail(
                "still running 10 s after SIGTERM:\n" + (await process.stderr.read()).decode()
            )
        assert status == 0
    finally:
        await reap(process)


async def test_a_second_sigterm_during_shutdown_still_exits_cleanly(tmp_path: Path) -> None:
    simulator, exporter, _, url, _ = await start_pair(tmp_path)
    try:
        await wait_metrics(url, lambda t: 'koodrive_up{account="beta"} 1' in t)
        for _ in range(3):
            exporter.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.002)
        assert await asyncio.wait_for(exporter.wait(), 10) == 0
    finally:
        await reap(exporter, simulator)


async def test_tls_scrape_still_works_through_the_guard(tmp_path: Path) -> None:
    async with serving(tmp_path, TLS_AND_AUTH) as served:
        status, headers, body = await fetch(
            served, "/metrics", headers={**basic("alice", PASSWORD), **IDENTITY}
        )
        assert status == 200
        assert int(headers["Content-Length"]) == len(body.encode())
        context = served.client_context()
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(served), ssl=context)
        assert isinstance(writer.get_extra_info("ssl_object"), ssl.SSLObject)
        writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()


# --- the same verdict as exporter-toolkit -----------------------------------------------

TOOLKIT_CASES = {
    "exact": b"p" * 72,
    "longer, same first 72 bytes": b"p" * 72 + b"-tail-bcrypt-never-reads",
    "shorter": b"p" * 71,
    "other 72nd byte": b"p" * 71 + b"q",
    "empty": b"",
    "with colon": b"p" * 72 + b":x",
    "not utf-8": b"p" * 72 + b"\xff\xfe",
}


async def test_basic_auth_verdicts_match_exporter_toolkit(
    tmp_path: Path, prometheus_binary: str
) -> None:
    """Debian's Prometheus reads the same web config with exporter-toolkit (Go's bcrypt)."""
    web_yaml = f"basic_auth_users:\n  alice: {hash_of(b'p' * 72)}\n"
    (tmp_path / "prom").mkdir()
    (tmp_path / "prom" / "web.yml").write_text(web_yaml)
    (tmp_path / "prom" / "prometheus.yml").write_text("global: {}\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        prom_port = sock.getsockname()[1]
    prometheus = await asyncio.create_subprocess_exec(
        prometheus_binary,
        f"--config.file={tmp_path / 'prom' / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'prom' / 'data'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
        f"--web.config.file={tmp_path / 'prom' / 'web.yml'}",
        "--log.level=error",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as session:

            async def toolkit(password: bytes) -> int:
                url = f"http://127.0.0.1:{prom_port}/-/healthy"
                async with session.get(url, headers=auth_header("alice", password)) as r:
                    return r.status

            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    if await toolkit(b"p" * 72) == 200:
                        break
                assert time.monotonic() < deadline, "prometheus did not start"
                await asyncio.sleep(0.1)
            expected = {name: await toolkit(pw) for name, pw in TOOLKIT_CASES.items()}
        async with serving(tmp_path, web_yaml, protect_probes=True) as served:
            ours = {
                name: (await fetch(served, "/-/healthy", headers=auth_header("alice", pw)))[0]
                for name, pw in TOOLKIT_CASES.items()
            }
        print(f"exporter-toolkit verdicts: {expected}")
        assert ours == expected
        assert expected["longer, same first 72 bytes"] == 200
    finally:
        prometheus.terminate()
        await asyncio.wait_for(prometheus.wait(), 10)


# --- live TLS changes apply whole, and never weaken -------------------------------------

MTLS = TLS_ONLY + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"


async def test_a_live_tls_tightening_applies_to_new_connections(tmp_path: Path) -> None:
    async with serving(tmp_path, TLS_ONLY) as served:
        assert (await fetch(served, "/-/healthy"))[0] == 200
        await asyncio.sleep(0.01)
        (served.directory / "web.yml").write_text(MTLS + "  min_version: TLS13\n")
        assert served.app[ACCESS].refresh()
        with pytest.raises(aiohttp.ClientError):  # no client certificate: refused now
            await fetch(served, "/-/healthy")
        with_cert = served.client_context()
        served.ca.issue_cert("prometheus@example.com").configure_cert(with_cert)
        assert (await fetch(served, "/-/healthy", ssl=with_cert))[0] == 200
        old = served.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
        served.ca.issue_cert("prometheus@example.com").configure_cert(old)
        with pytest.raises(aiohttp.ClientError):  # TLS 1.2 refused now
            await fetch(served, "/-/healthy", ssl=old)


@pytest.mark.parametrize(
    "weaker", [TLS_ONLY, MTLS.replace("RequireAndVerifyClientCert", "VerifyClientCertIfGiven")]
)
async def test_a_live_change_cannot_drop_client_certificates(tmp_path: Path, weaker: str) -> None:
    async with serving(tmp_path, MTLS) as served:
        await asyncio.sleep(0.01)
        (served.directory / "web.yml").write_text(weaker)
        assert not served.app[ACCESS].refresh()
        with pytest.raises(aiohttp.ClientError):
            await fetch(served, "/-/healthy")


def test_ipv6_clients_are_counted_per_64() -> None:
    from exporter.web.edge import client_group

    assert client_group("2001:db8:1:2:aaaa::1") == client_group("2001:db8:1:2:bbbb::2")
    assert client_group("2001:db8:1:2::1") != client_group("2001:db8:1:3::1")
    assert client_group("127.0.0.1") == "127.0.0.1"
    assert client_group("fe80::1%eth0") == "fe80::/64"


async def test_a_busy_connection_is_not_cut_by_the_head_deadline() -> None:
    """A request with a body leaves the scanner owing a head; the answer still comes."""
    release = asyncio.Event()

    async def slow(_: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 5)
        return web.Response(text="done\n")

    app = create_app(
        Config(accounts=(account("acme", interval=5, timeout=1),)),
        LogCapture().log,
        Settings(source_factory=lambda _s: FakeSource(), read_header_timeout=0.3),
    )
    app.router.add_post("/slow", app[ACCESS].guarded(app[EDGE], slow))
    stop, urls = asyncio.Event(), []
    task = asyncio.create_task(serve(app, "127.0.0.1:0", LogCapture().log, stop, urls.extend))
    await wait_for(lambda: bool(urls))
    try:
        port = int(urls[0].rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        await asyncio.sleep(1.0)  # three head deadlines while the handler runs
        release.set()
        assert (await reader.readuntil(b"done\n")).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        stop.set()
        await task
