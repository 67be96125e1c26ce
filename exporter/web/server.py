"""The aiohttp application: wires config, poller, state and exposition, and serves HTTP.

The client session and the poller live in a cleanup_ctx, so they start when the app starts
and stop, in reverse order, when it stops: no task or connection outlives the app.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import MappingProxyType

import aiohttp
import structlog
from aiohttp import web

from ..core.config import AccountConfig, Config, ConfigError, load_config
from ..core.exposition import OPENMETRICS, REBUILD_AFTER, TEXT, Exposition, Format
from ..core.poller import Poller, Source
from ..core.sharding import owned
from ..core.state import ExporterState
from ..upstream.client import USER_AGENT, KooDriveClient
from ..upstream.credentials import CredentialStore
from .guard import (
    KEEPALIVE_TIMEOUT,
    MAX_CONNECTIONS,
    READ_HEADER_TIMEOUT,
    WRITE_BUDGET,
    WRITE_TIMEOUT,
    HttpGuard,
    listen,
)
from .landing import render_landing
from .webconfig import WebConfig

# See _freeze_when_ready.
REFREEZE_EVERY = 1.0
FULL_COLLECTION_EVERY = 3600.0
RESERVED_PATHS = frozenset({"/", "/-/healthy", "/-/ready", "/-/reload"})


@dataclass(frozen=True, slots=True)
class Settings:
    telemetry_path: str = "/metrics"
    # Seconds over which the first round is spread; None grows it with the account count.
    startup_window: float | None = None
    # The file reloads read; None (demo, tests) means reloading is not possible.
    config_file: str | None = None
    # Allow POST /-/reload (SIGHUP always works), as Prometheus' --web.enable-lifecycle.
    enable_lifecycle: bool = False
    # The exporter-toolkit web config (TLS, basic auth, headers) and the file it came from,
    # re-read when it or its certificate files change.
    web_config: WebConfig | None = None
    web_config_file: str | None = None
    # Concurrent scrapes of the telemetry path before answering 503.
    max_requests: int = 40
    # Open connections; at the cap an idle or unfinished one makes room, else refused.
    max_connections: int = MAX_CONNECTIONS
    # Require basic auth on /-/healthy and /-/ready too (kubelet probes then need it).
    protect_probes: bool = False
    # A client that starts a request must send its whole head within this time.
    read_header_timeout: float = READ_HEADER_TIMEOUT
    # A response body that makes no progress for this long closes its connection.
    write_timeout: float = WRITE_TIMEOUT
    # What the buffers of clients that are not keeping up may hold in all (guard.WRITE_BUDGET).
    write_budget: int = WRITE_BUDGET
    # Sharding: this replica polls the accounts that rendezvous hashing gives index of count.
    shard_count: int = 1
    shard_index: int = 0
    # Tests swap the real client for a fake; None means the real KooDrive client.
    source_factory: Callable[[aiohttp.ClientSession], Source] | None = None
    # Freeze the garbage collector's view of what exists once every account has polled
    # (the command line does; a test process, which builds many apps, does not).
    freeze_gc: bool = False


@dataclass(slots=True)
class Runtime:
    """The mutable part of a running app (an aiohttp app is frozen once started)."""

    config: Config
    poller: Poller | None = None
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    background: set[asyncio.Task[object]] = field(default_factory=set)


SETTINGS = web.AppKey("settings", Settings)
RUNTIME = web.AppKey("runtime", Runtime)
STATE = web.AppKey("state", ExporterState)
EXPOSITION = web.AppKey("exposition", Exposition)
LOG = web.AppKey("log", structlog.typing.FilteringBoundLogger)
GUARD = web.AppKey("guard", HttpGuard)
# What a scrape's Accept and Accept-Encoding asked for, and what it gets: scrapers send the
# same few headers every time, so the parse (a tenth of a small scrape's cost) runs once per
# pair. Cleared when full, so varied headers cost a parse each, never memory.
NEGOTIATED = web.AppKey("negotiated", dict[tuple[str, str], tuple[Format, bool]])
NEGOTIATED_SIZE = 64


def create_app(
    config: Config,
    log: structlog.typing.FilteringBoundLogger,
    settings: Settings | None = None,
) -> web.Application:
    settings = settings or Settings()
    check_telemetry_path(settings.telemetry_path)
    state = ExporterState(_mine(config, settings), loaded_at=time.time())
    exposition = Exposition(state, rebuild_after=REBUILD_AFTER)

    guard = HttpGuard(
        settings.web_config,
        settings.web_config_file,
        log,
        max_requests=settings.max_requests,
        max_connections=settings.max_connections,
        protect_probes=settings.protect_probes,
        read_header_timeout=settings.read_header_timeout,
        write_timeout=settings.write_timeout,
        write_budget=settings.write_budget,
    )
    app = web.Application(
        handler_args={"max_field_size": 8190, "max_line_size": 8190, "max_headers": 100},
        client_max_size=64 * 1024,
    )
    app[GUARD] = guard
    app[NEGOTIATED] = {}
    app[SETTINGS] = settings
    app[RUNTIME] = Runtime(config=config)
    app[STATE] = state
    app[EXPOSITION] = exposition
    app[LOG] = log
    app.cleanup_ctx.append(_polling)
    app.on_response_prepare.append(guard.add_headers)
    app.router.add_get(settings.telemetry_path, guard.guarded(_metrics, scrape=True))
    app.router.add_get("/", guard.guarded(_index))
    app.router.add_get("/-/healthy", guard.guarded(_healthy, probe=True))
    app.router.add_get("/-/ready", guard.guarded(_ready, probe=True))
    app.router.add_post("/-/reload", guard.guarded(_reload))
    return app


async def reload_config(app: web.Application) -> tuple[bool, str]:
    """Re-read the config file and adopt it; on any error keep running the old one."""
    runtime, state, log = app[RUNTIME], app[STATE], app[LOG]
    path = app[SETTINGS].config_file
    async with runtime.reload_lock:
        if path is None or runtime.poller is None:
            log.warning("reload_ignored", why="no config file (demo mode) or not running")
            return False, "nothing to reload: no config file (demo mode) or not running"
        try:
            config = await asyncio.to_thread(load_config, path)
            mine = _mine(config, app[SETTINGS])
            added, removed, changed = await runtime.poller.update(mine, config.max_concurrency)
        except Exception as exc:  # whatever failed, the old config stays
            errors = exc.errors if isinstance(exc, ConfigError) else [_unexpected(exc)]
            state.reloaded(False, time.time())
            log.error("reload_failed", config_file=path, errors=errors)
            return False, "\n".join(errors)
        _warn_insecure(config, log)
        runtime.config = config
        state.reloaded(True, time.time())
        log.info(
            "reloaded",
            config_file=path,
            accounts=len(mine),
            added=added,
            removed=removed,
            changed=changed,
        )
        return (
            True,
            f"{len(mine)} accounts: {added} added, {removed} removed, {changed} changed",
        )


def _mine(config: Config, settings: Settings) -> tuple[AccountConfig, ...]:
    """The accounts of the config this replica polls; the state holds them from then on."""
    return owned(config.accounts, settings.shard_count, settings.shard_index)


def _unexpected(exc: BaseException) -> str:
    """A bug's report for the operator: its type, and a short cut of its text."""
    text = str(exc)
    return f"unexpected {type(exc).__name__}: {text[:120]}{'…' if len(text) > 120 else ''}"


def _warn_insecure(config: Config, log: structlog.typing.FilteringBoundLogger) -> None:
    for account in config.accounts:
        if account.insecure_skip_verify:
            log.warning(
                "insecure_skip_verify",
                account=account.name,
                endpoint=account.endpoint,
                why="upstream TLS certificates are NOT verified for this account",
            )


def request_reload(app: web.Application) -> None:
    """Start a reload from a signal handler, keeping a reference so the task is not lost."""
    runtime = app[RUNTIME]
    task: asyncio.Task[object] = asyncio.create_task(reload_config(app))
    runtime.background.add(task)
    task.add_done_callback(runtime.background.discard)
    task.add_done_callback(lambda done: _report(done, app[LOG]))


def _report(task: asyncio.Task[object], log: structlog.typing.FilteringBoundLogger) -> None:
    """Retrieve a background task's failure, so it is logged once and never as a traceback."""
    if not task.cancelled() and task.exception() is not None:
        log.error("reload_failed", errors=[_unexpected(task.exception())])  # type: ignore[arg-type]


async def _freeze_when_ready(
    state: ExporterState,
    refreeze: float = REFREEZE_EVERY,
    full: float = FULL_COLLECTION_EVERY,
) -> None:
    """Keep what lives long out of the garbage collector's view, so that no collection has
    to walk it with the loop stopped.

    Once every account has polled, everything that exists (modules, config, the loop's
    machinery, the accounts' state) is frozen. Polls keep making long-lived objects (each
    loop's sleep: its future, timer handle and context; each snapshot), tens of thousands
    an interval at 10,000 accounts, and a full collection of them took 60-100 ms every few
    seconds (bench/live.py, 20 s interval). So every `refreeze` seconds the young
    generations are collected (a few ms: a second's worth of objects) and what survived
    is frozen too; acyclic garbage is still
    freed by reference counting, frozen or not. A cycle frozen while alive that dies later
    would never be collected, so every `full` seconds everything is unfrozen and collected
    once: one full collection an hour instead of one every few seconds."""
    while not state.ready:  # noqa: ASYNC110 - a property of the state, not an event
        await asyncio.sleep(1.0)
    gc.collect()
    gc.freeze()
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(refreeze)
        if time.monotonic() - last_full >= full:
            gc.unfreeze()
            gc.collect()
            last_full = time.monotonic()
        else:
            gc.collect(1)
        gc.freeze()


def check_telemetry_path(path: str) -> None:
    if not path.startswith("/") or path in RESERVED_PATHS or any(c.isspace() for c in path):
        raise ValueError(
            f"--web.telemetry-path must start with / and not be one of {sorted(RESERVED_PATHS)}"
        )


async def _polling(app: web.Application) -> AsyncIterator[None]:
    settings, runtime = app[SETTINGS], app[RUNTIME]
    session = aiohttp.ClientSession(
        # No connector cap: the poller's max_concurrency bounds requests in flight (and so
        # the keep-alive pool per upstream host), and follows reloads.
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
        headers={"User-Agent": USER_AGENT},
    )
    source: Source
    if settings.source_factory is not None:
        source = settings.source_factory(session)
    else:
        source = KooDriveClient(session, CredentialStore())
    poller = Poller(
        source,
        app[STATE],
        app[LOG],
        rng=random.Random(),  # noqa: S311 - scheduling jitter
        startup_window=settings.startup_window,
        max_concurrency=runtime.config.max_concurrency,
    )
    poller.start()
    runtime.poller = poller
    runtime.background.add(asyncio.create_task(app[GUARD].watch(), name="web-config-watch"))
    runtime.background.add(asyncio.create_task(app[GUARD].sweep(), name="slow-client-sweep"))
    settle = app[EXPOSITION].settle()
    runtime.background.add(asyncio.create_task(settle, name="exposition-settle"))
    if settings.freeze_gc:
        freeze = _freeze_when_ready(app[STATE])
        runtime.background.add(asyncio.create_task(freeze, name="gc-freeze"))
    _warn_insecure(runtime.config, app[LOG])
    try:
        yield
    finally:
        runtime.poller = None
        for task in list(runtime.background):
            task.cancel()
        await asyncio.gather(*runtime.background, return_exceptions=True)
        await poller.stop()
        await session.close()


# Per (OpenMetrics?, gzipped?): the body depends on Accept and Accept-Encoding, so caches must
# key on both.
_HEADERS = MappingProxyType(
    {
        (fmt.openmetrics, gzipped): MappingProxyType(
            {
                "Content-Type": fmt.content_type,
                "Vary": "Accept, Accept-Encoding",
                **({"Content-Encoding": "gzip"} if gzipped else {}),
            }
        )
        for fmt in (TEXT, OPENMETRICS)
        for gzipped in (False, True)
    }
)


async def _metrics(request: web.Request) -> web.StreamResponse:
    # Repeated fields of one header are one comma-separated list (RFC 9110, 5.3).
    asked = (
        ",".join(request.headers.getall("Accept", ())),
        ",".join(request.headers.getall("Accept-Encoding", ())),
    )
    negotiated = request.app[NEGOTIATED]
    choice = negotiated.get(asked)
    if choice is None:
        choice = (OPENMETRICS if wants_openmetrics(asked[0]) else TEXT, accepts_gzip(asked[1]))
        if len(negotiated) >= NEGOTIATED_SIZE:
            negotiated.clear()
        negotiated[asked] = choice
    fmt, gzipped = choice
    body = await request.app[EXPOSITION].render_async(fmt, gzipped=gzipped)
    return await request.app[GUARD].send_body(request, _HEADERS[fmt.openmetrics, gzipped], body)


def accepts_gzip(header: str) -> bool:
    """True when Accept-Encoding gives gzip a q above 0: its own q if listed, else that of *."""
    found: dict[str, float] = {}
    for item in header.split(",")[:MAX_ACCEPT_ITEMS]:
        coding, *params = item.split(";")
        name = coding.strip().lower()
        if name not in ("gzip", "*") or name in found:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        found[name] = quality if 0 <= quality <= 1 else 0.0
    return found.get("gzip", found.get("*", 0.0)) > 0


# Elements of Accept / Accept-Encoding looked at: real clients send a handful, and the
# bound keeps an 8 KiB header of tiny ranges from costing milliseconds per scrape.
MAX_ACCEPT_ITEMS = 64
# The two bodies on offer, as (type, subtype, parameters) for matching Accept's media ranges.
_OPENMETRICS_OFFER = ("application", "openmetrics-text", {"version": "1.0.0", "charset": "utf-8"})
_TEXT_OFFER = ("text", "plain", {"version": "0.0.4", "charset": "utf-8"})
# Media-range parameters every body here satisfies, whatever their value.
_ANY = frozenset({"escaping"})


def wants_openmetrics(header: str) -> bool:
    """True when Accept ranks OpenMetrics 1.0.0 strictly above the 0.0.4 text.

    Each body gets the q of the most specific media range matching it (RFC 9110, 12.5.1),
    and a range matches only when each of its parameters is one the body has: a range
    asking for another version is not an offer for it. `escaping` is always satisfied:
    every name here is a legacy Prometheus name, which no escaping scheme changes. So
    Prometheus 2 (OpenMetrics 1.0.0 at q=1) and Prometheus 3 (OpenMetrics 1.0.0 with
    `escaping=allow-utf-8` at q=0.6, text 0.0.4 at q=0.3) both get OpenMetrics. A tie, no
    header, or nothing matching means the text format, which every scraper reads.
    """
    items = header.split(",")[:MAX_ACCEPT_ITEMS]
    ranges = [parsed for item in items if (parsed := _media_range(item))]
    openmetrics = _quality(ranges, *_OPENMETRICS_OFFER)
    return openmetrics > 0 and openmetrics > _quality(ranges, *_TEXT_OFFER)


def _media_range(item: str) -> tuple[str, str, dict[str, str], float] | None:
    """(type, subtype, parameters without q, q) of one Accept element; None if unusable."""
    media, *pairs = item.split(";")
    kind, slash, subtype = media.strip().lower().partition("/")
    if not slash or not kind or not subtype:
        return None
    params: dict[str, str] = {}
    quality = 1.0
    for pair in pairs:
        key, _, value = pair.partition("=")
        key, value = key.strip().lower(), value.strip().strip('"').lower()
        if key != "q":
            params[key] = value
            continue
        try:
            quality = float(value)
        except ValueError:
            return None
        if not 0 <= quality <= 1:
            return None
        break  # what follows q are accept-extensions, not media-type parameters
    return kind, subtype, params, quality


def _quality(
    ranges: list[tuple[str, str, dict[str, str], float]],
    kind: str,
    subtype: str,
    offered: dict[str, str],
) -> float:
    best: tuple[int, int, int] | None = None
    quality = 0.0
    for range_kind, range_subtype, params, q in ranges:
        if range_kind not in ("*", kind) or range_subtype not in ("*", subtype):
            continue
        if any(offered.get(key) != value for key, value in params.items() if key not in _ANY):
            continue
        specificity = (range_kind != "*", range_subtype != "*", len(params))
        if best is None or specificity > best:
            best, quality = specificity, q
    return quality


async def _reload(request: web.Request) -> web.Response:
    if not request.app[SETTINGS].enable_lifecycle:
        return web.Response(status=403, text="Lifecycle API is not enabled.\n")
    ok, message = await reload_config(request.app)
    return web.Response(status=200 if ok else 500, text=message + "\n")


async def _healthy(_: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def _ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.ready:
        return web.Response(text="ready\n")
    return web.Response(
        status=503, text=f"waiting for the first poll of {state.waiting()} account(s)\n"
    )


async def _index(request: web.Request) -> web.Response:
    page = render_landing(request.app[STATE], request.app[SETTINGS].telemetry_path, time.time())
    return web.Response(text=page, content_type="text/html")


def parse_listen_address(address: str) -> tuple[str | None, int]:
    """`:9877` (all interfaces), `127.0.0.1:9877`, `[::1]:9877` -> (host, port)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid listen address {address!r}: use host:port or :port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host or None), int(port_text)


async def serve(
    app: web.Application,
    address: str,
    log: structlog.typing.FilteringBoundLogger,
    stop: asyncio.Event,
    on_ready: Callable[[list[str]], None] | None = None,
) -> None:
    """Run `app` until `stop` is set, then shut everything down within a few seconds."""
    host, port = parse_listen_address(address)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=2.0,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
    )
    await runner.setup()
    guard = app[GUARD]
    listener: asyncio.Server | None = None
    try:
        assert runner.server is not None
        listener = await listen(runner.server, guard, host, port)
        scheme = "https" if guard.tls else "http"
        urls = [_url(sock.getsockname(), scheme) for sock in listener.sockets]
        log.info("listening", urls=urls, telemetry_path=app[SETTINGS].telemetry_path)
        if on_ready is not None:
            on_ready(urls)
        await stop.wait()
        log.info("shutting_down")
    finally:
        if listener is not None:
            listener.close()  # no new connections; aiohttp then drains the open ones
        guard.close_pending()
        await runner.cleanup()


def _url(address: tuple[str, int] | tuple[str, int, int, int] | object, scheme: str) -> str:
    host, port = address[0], address[1]  # type: ignore[index]
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"
