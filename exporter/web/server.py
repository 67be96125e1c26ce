"""The aiohttp application: wires config, poller, state and exposition, and serves HTTP.

The client session and the poller live in a cleanup_ctx, so they start when the app starts
and stop, in reverse order, when it stops: no task or connection outlives the app.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import MappingProxyType

import aiohttp
import structlog
from aiohttp import web
from prometheus_client.exposition import choose_encoder, gzip_accepted

from ..core.exposition import OPENMETRICS, REBUILD_AFTER, TEXT, Exposition
from ..core.poller import Poller, Source
from ..core.settings import AccountConfig, Config, ConfigError
from ..core.sharding import owned
from ..core.state import ExporterState
from ..upstream.client import USER_AGENT, KooDriveClient
from ..upstream.credentials import CredentialStore
from .access import Access
from .edge import (
    KEEPALIVE_TIMEOUT,
    MAX_BODY_BYTES,
    MAX_CONNECTIONS,
    READ_HEADER_TIMEOUT,
    WRITE_TIMEOUT,
    Edge,
    listen,
    send_body,
)
from .landing import render_landing
from .offloop import freeze, keep_frozen, read_config
from .webconfig import WebConfig

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
    # Sharding: this replica polls the accounts that rendezvous hashing gives index of count.
    shard_count: int = 1
    shard_index: int = 0
    # Tests swap the real client for a fake; None means the real KooDrive client.
    source_factory: Callable[[aiohttp.ClientSession], Source] | None = None
    # Keep the garbage collector's view frozen from before the first poll on (the command
    # line does; a test process, which builds many apps, does not). See offloop.keep_frozen.
    freeze_gc: bool = False


# The least time between two reloads (see _reloads).
RELOAD_MIN_GAP = 0.1
# How long a rendered landing page is served again: however many clients ask, the page
# costs one render (~4 ms at 10,000 accounts) a second at most.
LANDING_TTL = 1.0


@dataclass(slots=True)
class Runtime:
    """The mutable part of a running app (an aiohttp app is frozen once started)."""

    config: Config
    poller: Poller | None = None
    background: set[asyncio.Task[object]] = field(default_factory=set)
    # The reload that runs, and the one every request that arrives meanwhile shares.
    reloading: asyncio.Task[None] | None = None
    next_reload: asyncio.Future[tuple[bool, str]] | None = None
    # What the last reload did, so that a repeat of the same outcome is not logged again.
    last_reload: tuple[bool, str] | None = None
    landing: tuple[float, bytes] = (float("-inf"), b"")


SETTINGS = web.AppKey("settings", Settings)
RUNTIME = web.AppKey("runtime", Runtime)
STATE = web.AppKey("state", ExporterState)
EXPOSITION = web.AppKey("exposition", Exposition)
LOG = web.AppKey("log", structlog.typing.FilteringBoundLogger)
ACCESS = web.AppKey("access", Access)
EDGE = web.AppKey("edge", Edge)


def create_app(
    config: Config,
    log: structlog.typing.FilteringBoundLogger,
    settings: Settings | None = None,
) -> web.Application:
    settings = settings or Settings()
    check_telemetry_path(settings.telemetry_path)
    state = ExporterState(_mine(config, settings), loaded_at=time.time())
    exposition = Exposition(state, rebuild_after=REBUILD_AFTER)

    access = Access(
        settings.web_config,
        settings.web_config_file,
        log,
        max_requests=settings.max_requests,
        protect_probes=settings.protect_probes,
    )
    edge = Edge(
        access.tls_choice,
        max_connections=settings.max_connections,
        read_header_timeout=settings.read_header_timeout,
        write_timeout=settings.write_timeout,
    )
    app = web.Application(
        handler_args={"max_field_size": 8190, "max_line_size": 8190, "max_headers": 100},
        client_max_size=MAX_BODY_BYTES,
    )
    app[ACCESS] = access
    app[EDGE] = edge
    app[SETTINGS] = settings
    app[RUNTIME] = Runtime(config=config)
    app[STATE] = state
    app[EXPOSITION] = exposition
    app[LOG] = log
    app.cleanup_ctx.append(_polling)
    app.on_response_prepare.append(_prepared)
    app.router.add_get(settings.telemetry_path, access.guarded(edge, _metrics, scrape=True))
    app.router.add_get("/", access.guarded(edge, _index))
    app.router.add_get("/-/healthy", access.guarded(edge, _healthy, probe=True))
    app.router.add_get("/-/ready", access.guarded(edge, _ready, probe=True))
    # A reload request only waits for a reload: it may be evicted, like an idle connection.
    app.router.add_post("/-/reload", access.guarded(edge, _reload, busy=False))
    return app


async def _prepared(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare, one handler for both jobs (a signal handler is a coroutine a
    response): the configured headers, and the end of a request the edge did not see."""
    app = request.app
    app[ACCESS].add_headers(response)
    app[EDGE].answered(request)


def request_reload(app: web.Application) -> asyncio.Future[tuple[bool, str]]:
    """The outcome of a reload that starts after this call; callers meanwhile share it.

    At most one reload runs. Requests that arrive while it runs (it may have read the file
    before their change) all get the one reload that follows it, so a flood of requests or
    signals costs two reloads, not one each; and the next starts no sooner than the last
    one took (at least RELOAD_MIN_GAP), so reloads hold the process half the time at most.
    """
    runtime = app[RUNTIME]
    if runtime.next_reload is None:
        runtime.next_reload = asyncio.get_running_loop().create_future()
        if runtime.reloading is None:
            runtime.reloading = asyncio.create_task(_reloads(app), name="reload")
            runtime.background.add(runtime.reloading)
    return runtime.next_reload


async def _reloads(app: web.Application) -> None:
    runtime = app[RUNTIME]
    try:
        while (waiting := runtime.next_reload) is not None:
            runtime.next_reload = None
            started = time.monotonic()
            try:
                outcome = await reload_config(app)
            except Exception as exc:  # reload_config keeps its own errors; this is a bug
                outcome = False, _unexpected(exc)
                app[LOG].error("reload_failed", errors=[outcome[1]])
            waiting.set_result(outcome)
            # Back to back, reloads requested without end would keep a core (and the GIL)
            # busy: the next one waits as long as this one took, so they take half at most.
            await asyncio.sleep(max(RELOAD_MIN_GAP, time.monotonic() - started))
    finally:
        runtime.background.discard(asyncio.current_task())  # type: ignore[arg-type]
        runtime.reloading = None


async def reload_config(app: web.Application) -> tuple[bool, str]:
    """Re-read the config file and adopt it; on any error keep running the old one.

    Only request_reload calls it, so reloads never overlap. An outcome the same as the last
    one is logged at debug level: a loop of reload requests cannot flood the log.
    """
    runtime, state, log = app[RUNTIME], app[STATE], app[LOG]
    path = app[SETTINGS].config_file
    if path is None or runtime.poller is None:
        log.warning("reload_ignored", why="no config file (demo mode) or not running")
        return False, "nothing to reload: no config file (demo mode) or not running"
    try:
        config = await asyncio.to_thread(read_config, path, app[SETTINGS].freeze_gc, runtime.config)
        mine = _mine(config, app[SETTINGS])
        added, removed, changed = await runtime.poller.update(mine, config.max_concurrency)
    except Exception as exc:  # whatever failed, the old config stays
        errors = exc.errors if isinstance(exc, ConfigError) else [_unexpected(exc)]
        state.reloaded(False, time.time())
        outcome = False, "\n".join(errors)
        level = log.debug if outcome == runtime.last_reload else log.error
        runtime.last_reload = outcome
        level("reload_failed", config_file=path, errors=errors)
        return outcome
    if _insecure(config) != _insecure(runtime.config):
        _warn_insecure(config, log)
    runtime.config = config
    state.reloaded(True, time.time())
    outcome = True, f"{len(mine)} accounts: {added} added, {removed} removed, {changed} changed"
    repeat = outcome == runtime.last_reload and not (added or removed or changed)
    runtime.last_reload = outcome
    (log.debug if repeat else log.info)(
        "reloaded",
        config_file=path,
        accounts=len(mine),
        added=added,
        removed=removed,
        changed=changed,
    )
    return outcome


def _mine(config: Config, settings: Settings) -> tuple[AccountConfig, ...]:
    """The accounts of the config this replica polls; the state holds them from then on."""
    return owned(config.accounts, settings.shard_count, settings.shard_index)


def _unexpected(exc: BaseException) -> str:
    """A bug's report for the operator: its type, and a short cut of its text."""
    text = str(exc)
    return f"unexpected {type(exc).__name__}: {text[:120]}{'…' if len(text) > 120 else ''}"


def _insecure(config: Config) -> list[tuple[str, str]]:
    """The accounts that skip TLS verification: a reload warns again when they change
    (comparing whole configs took 18 ms of the loop at 10,000 accounts)."""
    return [(a.name, a.endpoint) for a in config.accounts if a.insecure_skip_verify]


def _warn_insecure(config: Config, log: structlog.typing.FilteringBoundLogger) -> None:
    for account in config.accounts:
        if account.insecure_skip_verify:
            log.warning(
                "insecure_skip_verify",
                account=account.name,
                endpoint=account.endpoint,
                why="upstream TLS certificates are NOT verified for this account",
            )


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
    if settings.freeze_gc:
        freeze()  # the config, the app and the state, before the first poll
    poller.start()
    runtime.poller = poller
    runtime.background.add(asyncio.create_task(app[ACCESS].watch(), name="web-config-watch"))
    settle = app[EXPOSITION].settle()
    runtime.background.add(asyncio.create_task(settle, name="exposition-settle"))
    if settings.freeze_gc:
        runtime.background.add(asyncio.create_task(keep_frozen(), name="gc-freeze"))
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
    """The body prometheus_client would choose: OpenMetrics when Accept names it, gzip when
    Accept-Encoding does (its choose_encoder and gzip_accepted, which ignore q-values)."""
    accept = ",".join(request.headers.getall("Accept", ()))
    encoding = ",".join(request.headers.getall("Accept-Encoding", ()))
    try:
        fmt = OPENMETRICS if choose_encoder(accept)[1].startswith(_OPENMETRICS) else TEXT
    except (TypeError, ValueError):  # it compares versions it cannot parse (`version=abc`)
        fmt = TEXT
    gzipped = gzip_accepted(encoding)
    body = await request.app[EXPOSITION].render_async(fmt, gzipped=gzipped)
    headers = _HEADERS[fmt.openmetrics, gzipped]
    return await send_body(request, headers, body, request.app[SETTINGS].write_timeout)


_OPENMETRICS = "application/openmetrics-text"


async def _reload(request: web.Request) -> web.Response:
    if not request.app[SETTINGS].enable_lifecycle:
        return web.Response(status=403, text="Lifecycle API is not enabled.\n")
    ok, message = await asyncio.shield(request_reload(request.app))
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
    runtime, now = request.app[RUNTIME], time.monotonic()
    rendered_at, page = runtime.landing
    if now - rendered_at >= LANDING_TTL:
        text = render_landing(request.app[STATE], request.app[SETTINGS].telemetry_path, time.time())
        page = text.encode()
        runtime.landing = now, page
    return web.Response(body=page, content_type="text/html", charset="utf-8")


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
    edge = app[EDGE]
    listener: asyncio.Server | None = None
    try:
        assert runner.server is not None
        listener = await listen(runner.server, edge, host, port)
        scheme = "https" if app[ACCESS].tls else "http"
        urls = [_url(sock.getsockname(), scheme) for sock in listener.sockets]
        log.info("listening", urls=urls, telemetry_path=app[SETTINGS].telemetry_path)
        if on_ready is not None:
            on_ready(urls)
        await stop.wait()
        log.info("shutting_down")
    finally:
        if listener is not None:
            listener.close()  # no new connections; aiohttp then drains the open ones
        edge.close_pending()
        await runner.cleanup()


def _url(address: tuple[str, int] | tuple[str, int, int, int] | object, scheme: str) -> str:
    host, port = address[0], address[1]  # type: ignore[index]
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"
