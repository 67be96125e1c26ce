"""HTTP endpoints of the exporter, with a scripted upstream behind the poller."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest
from support import FakeSource, account, samples, value

from exporter import __version__
from exporter.core.config import load_config
from exporter.core.model import FetchError, Reason
from exporter.core.settings import Config
from exporter.web.offloop import keep_frozen, read_config
from exporter.web.server import (
    Settings,
    check_telemetry_path,
    create_app,
    parse_listen_address,
)

PROMETHEUS_3 = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
PROMETHEUS_2 = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def app_with(source: FakeSource, logs, accounts, **settings):
    config = Config(accounts=tuple(accounts))
    factory = lambda _session: source  # noqa: E731
    return create_app(config, logs.log, Settings(source_factory=factory, **settings))


async def test_health_readiness_and_metrics(aiohttp_client, logs) -> None:
    source = FakeSource()
    source.behaviour["slow"] = 0.3
    accounts = [account("fast", interval=5, timeout=1), account("slow", interval=5, timeout=1)]
    client = await aiohttp_client(app_with(source, logs, accounts, startup_window=0.01))

    healthy = await client.get("/-/healthy")
    assert (healthy.status, await healthy.text()) == (200, "OK\n")
    not_ready = await client.get("/-/ready")
    assert not_ready.status == 503
    assert "1 account" in await not_ready.text() or "2 account" in await not_ready.text()

    for _ in range(100):
        if (await client.get("/-/ready")).status == 200:
            break
        await asyncio.sleep(0.02)
    assert (await client.get("/-/ready")).status == 200

    metrics = await client.get("/metrics")
    assert metrics.status == 200
    assert metrics.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = await metrics.text()
    assert value(text, "koodrive_space_used_bytes", account="fast") == 5000
    assert value(text, "koodrive_space_capacity_bytes", account="slow") == 10000
    assert value(text, "koodrive_up", account="slow") == 1
    assert value(text, "process_resident_memory_bytes") > 0
    assert value(text, "python_gc_objects_collected_total", generation="0") is not None


async def test_scrapes_never_wait_for_a_hung_upstream(aiohttp_client, logs) -> None:
    source = FakeSource()
    source.behaviour["stuck"] = "hang"
    client = await aiohttp_client(
        app_with(source, logs, [account("stuck", interval=5, timeout=5)], startup_window=0.01)
    )
    await asyncio.sleep(0.1)
    assert source.in_flight["stuck"] == 1
    started = time.perf_counter()
    for _ in range(20):
        assert (await client.get("/metrics")).status == 200
    assert time.perf_counter() - started < 1.0
    assert (await client.get("/-/healthy")).status == 200
    assert (await client.get("/-/ready")).status == 503


async def test_landing_page(aiohttp_client, logs) -> None:
    source = FakeSource()
    source.behaviour["<b>down</b>"] = FetchError(Reason.AUTH, "HTTP 401")
    accounts = [account("up-one", interval=5, timeout=1), account("<b>down</b>", interval=5)]
    client = await aiohttp_client(
        app_with(source, logs, accounts, startup_window=0.01, telemetry_path="/probe")
    )
    for _ in range(100):
        if (await client.get("/-/ready")).status == 200:
            break
        await asyncio.sleep(0.02)
    page = await (await client.get("/")).text()
    assert __version__ in page
    assert 'href="/probe"' in page
    assert "up-one" in page
    assert "50.0% of" in page  # 5000 of 10000 bytes
    assert "&lt;b&gt;down&lt;/b&gt;" in page
    assert "<b>down</b>" not in page
    assert "down: auth" in page
    # The down account first, and why: status, since when, the hint, escaped.
    assert page.index("&lt;b&gt;down&lt;/b&gt;") < page.index("up-one")
    assert "1 down, 1 up." in page
    assert "failing since" in page
    assert "KooDrive refused the token" in page
    assert (await client.get("/probe")).status == 200
    assert (await client.get("/metrics")).status == 404


async def test_wrong_methods_and_paths(aiohttp_client, logs) -> None:
    client = await aiohttp_client(app_with(FakeSource(), logs, [account("a", interval=5)]))
    assert (await client.post("/metrics")).status == 405
    assert (await client.get("/nope")).status == 404
    assert (await client.head("/metrics")).status == 200


async def test_stopping_the_app_stops_every_poll(aiohttp_client, logs) -> None:
    source = FakeSource()
    accounts = [account(f"h{i}", interval=5, timeout=5) for i in range(5)]
    for a in accounts:
        source.behaviour[a.name] = "hang"
    client = await aiohttp_client(app_with(source, logs, accounts, startup_window=0.01))
    await asyncio.sleep(0.1)
    assert sum(source.in_flight.values()) == 5
    await client.close()
    assert sum(source.in_flight.values()) == 0
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("poll:")]


@pytest.mark.parametrize("path", ["metrics", "/", "/-/healthy", "/-/ready", "/a b"])
def test_bad_telemetry_paths(path: str) -> None:
    with pytest.raises(ValueError, match="telemetry-path"):
        check_telemetry_path(path)


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        (":9877", (None, 9877)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:9877", ("::1", 9877)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_listen_addresses(address: str, parsed: tuple[str | None, int]) -> None:
    assert parse_listen_address(address) == parsed


@pytest.mark.parametrize("address", ["9877", "host:", "host:port", ":70000", ""])
def test_bad_listen_addresses(address: str) -> None:
    with pytest.raises(ValueError, match="listen address"):
        parse_listen_address(address)


async def test_gzip_scrape(aiohttp_client, logs) -> None:
    import gzip as gzip_module

    source = FakeSource()
    client = await aiohttp_client(
        app_with(source, logs, [account("a", interval=5)], startup_window=0.01)
    )
    await asyncio.sleep(0.1)
    response = await client.get(
        "/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Vary"] == "Accept, Accept-Encoding"
    text = gzip_module.decompress(await response.read()).decode()
    assert value(text, "koodrive_up", account="a") == 1
    plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers


@pytest.mark.parametrize(
    ("accept", "encoding", "openmetrics", "gzipped"),
    [
        (PROMETHEUS_2, "gzip", True, True),
        (PROMETHEUS_3, "gzip", True, True),
        ("text/plain;version=0.0.4;q=0.6,*/*;q=0.2", "gzip", False, True),  # scrape_protocols
        ("*/*", "gzip, deflate, br", False, True),  # a browser
        ("", "", False, False),  # curl
        ("application/openmetrics-text", "identity", True, False),
        # prometheus_client's own negotiation reads no q-values: a listed type or coding wins.
        ("application/openmetrics-text;q=0, */*", "gzip;q=0", True, True),
    ],
)
async def test_negotiation_is_prometheus_clients(
    aiohttp_client, logs, accept: str, encoding: str, openmetrics: bool, gzipped: bool
) -> None:
    client = await aiohttp_client(app_with(FakeSource(), logs, [account("a", interval=5)]))
    response = await client.get(
        "/metrics",
        headers={"Accept": accept, "Accept-Encoding": encoding},
        auto_decompress=False,
    )
    assert (response.headers["Content-Type"] == OPENMETRICS_TYPE) is openmetrics
    assert (response.headers.get("Content-Encoding") == "gzip") is gzipped


async def test_openmetrics_scrape_plain_and_gzipped(aiohttp_client, logs) -> None:
    import gzip as gzip_module

    source = FakeSource()
    source.behaviour["b"] = FetchError(Reason.AUTH, "HTTP 401")
    accounts = [account("a", interval=5), account("b", interval=5)]
    client = await aiohttp_client(app_with(source, logs, accounts, startup_window=0.01))
    for _ in range(100):
        if (await client.get("/-/ready")).status == 200:
            break
        await asyncio.sleep(0.02)

    response = await client.get("/metrics", headers={"Accept": PROMETHEUS_2})
    assert response.headers["Content-Type"] == OPENMETRICS_TYPE
    assert response.headers["Vary"] == "Accept, Accept-Encoding"
    text = await response.text()
    assert text.startswith("# HELP koodrive_space_capacity_bytes ")
    assert text.endswith("# EOF\n")
    assert "# TYPE koodrive_poll_errors counter\n" in text
    parsed = samples(text, openmetrics=True)
    assert parsed[("koodrive_up", frozenset({("account", "a")}))] == 1
    errors = ("koodrive_poll_errors_total", frozenset({("account", "b"), ("reason", "auth")}))
    assert parsed[errors] >= 1
    assert ("process_cpu_seconds_total", frozenset()) in parsed

    packed = await client.get(
        "/metrics",
        headers={"Accept": PROMETHEUS_2, "Accept-Encoding": "gzip"},
        auto_decompress=False,
    )
    assert packed.headers["Content-Type"] == OPENMETRICS_TYPE
    assert packed.headers["Content-Encoding"] == "gzip"
    unpacked = gzip_module.decompress(await packed.read()).decode()
    assert samples(unpacked, openmetrics=True)[errors] >= 1

    prometheus_3 = await client.get("/metrics", headers={"Accept": PROMETHEUS_3})
    assert prometheus_3.headers["Content-Type"] == OPENMETRICS_TYPE
    assert (await prometheus_3.text()).endswith("# EOF\n")

    for accept in ("*/*", None):
        headers = {"Accept": accept} if accept else {}
        text_response = await client.get("/metrics", headers=headers)
        assert text_response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        body = await text_response.text()
        assert "# EOF" not in body
        assert value(body, "koodrive_up", account="b") == 0


async def test_repeated_accept_fields_are_one_list(aiohttp_client, logs) -> None:
    client = await aiohttp_client(app_with(FakeSource(), logs, [account("a", interval=5)]))
    response = await client.get(
        "/metrics",
        headers=[
            ("Accept", "text/plain;version=0.0.4;q=0.3"),
            ("Accept", "application/openmetrics-text;version=1.0.0;q=0.9"),
        ],
    )
    assert response.headers["Content-Type"] == OPENMETRICS_TYPE


def test_a_broken_clock_cannot_make_the_histogram_invalid() -> None:
    from exporter.core.model import DurationHistogram

    histogram = DurationHistogram()
    for duration in (-0.5, float("nan"), float("inf"), 0.01):
        histogram.observe(duration)
    assert histogram.total >= 0
    assert histogram.counts[0] == 3  # -0.5, NaN (as 0) and 0.01
    assert sum(histogram.counts) == 4


async def test_the_collector_view_is_frozen_before_the_first_poll(aiohttp_client, logs):
    """A full garbage collection over 10,000 accounts' objects stopped the loop for 87 ms
    (bench/gc_pauses.py); frozen from the start, it has a fraction of them to walk."""
    source = FakeSource()
    before = gc.get_freeze_count()
    client = await aiohttp_client(
        app_with(
            source, logs, [account("a", interval=5, timeout=1)], startup_window=0.01, freeze_gc=True
        )
    )
    try:
        assert gc.get_freeze_count() > before  # already, as the app started
        for _ in range(100):
            if (await client.get("/-/ready")).status == 200:
                break
            await asyncio.sleep(0.05)
        assert (await client.get("/-/ready")).status == 200
    finally:
        gc.unfreeze()


class _Cycle:
    """Half of a reference cycle, which only the cycle collector can free."""

    def __init__(self) -> None:
        self.other: object = self


async def test_survivors_are_refrozen_and_a_full_collection_comes_round() -> None:
    """Objects made after the first freeze are frozen by the next re-freeze; a cycle frozen
    while alive and dropped later is collected by the periodic full collection only."""
    gc.freeze()
    freezer = asyncio.create_task(keep_frozen(refreeze=0.02, full=0.5))
    try:
        cycle = _Cycle()
        collected = asyncio.Event()
        finalizer = weakref.finalize(cycle, collected.set)
        frozen = gc.get_freeze_count()
        for _ in range(100):  # the next re-freeze takes the new cycle in
            await asyncio.sleep(0.01)
            if gc.get_freeze_count() > frozen:
                break
        assert gc.get_freeze_count() > frozen
        del cycle
        gc.collect()  # what the automatic collector does: the frozen cycle survives it
        assert finalizer.alive
        async with asyncio.timeout(3):
            await collected.wait()  # the full collection came round and freed it
    finally:
        freezer.cancel()
        gc.unfreeze()


def test_a_reload_keeps_the_config_objects_of_unchanged_accounts(tmp_path) -> None:
    """What the poller, the state and the exposition built for an account stays theirs
    across a reload that does not change it: they recognise it by identity."""
    path = tmp_path / "config.yaml"
    entry = '  - {{name: {0}, user_id: "1", endpoint: "http://127.0.0.1:1", auth: {{token: t}}{1}}}'
    path.write_text("accounts:\n" + "\n".join(entry.format(n, "") for n in "abc") + "\n")
    current = load_config(str(path))
    lines = [entry.format("a", ""), entry.format("b", ", interval: 30s"), entry.format("d", "")]
    path.write_text("accounts:\n" + "\n".join(lines) + "\n")
    for frozen in (False, True):
        config = read_config(str(path), frozen, current)
        a, b, d = config.accounts
        assert a is current.accounts[0]
        assert b is not current.accounts[1]
        assert b.interval == 30.0
        assert d.name == "d"
    gc.unfreeze()
