"""What stands between the network and the handlers: basic auth, TLS rotation, limits.

- Basic auth against bcrypt hashes, with verified credentials cached under an HMAC keyed per
  process (bcrypt per scrape would cost ~70 ms of CPU), compared in constant time; unknown
  users still pay one bcrypt so timing does not reveal which users exist.
- TLS: the listening context hands each handshake the newest context through its SNI
  callback, so rotated certificates (and a changed CA or client_auth_type) apply to new
  connections without a restart.
- Limits: at most `max_requests` concurrent scrapes (503 beyond, like promhttp); a client
  that starts sending a request must finish its head within READ_HEADER_TIMEOUT, which stops
  slow-loris connections from piling up; aiohttp caps header size and count.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import bcrypt
import structlog
from aiohttp import web

from .config import ConfigError, Secret
from .webconfig import WebConfig, build_ssl_context, files_identity, load_web_config

READ_HEADER_TIMEOUT = 10.0
KEEPALIVE_TIMEOUT = 75.0
WATCH_INTERVAL = 2.0
# A bcrypt hash of a random string: checked for unknown users so they cost the same time.
_DUMMY_HASH = b"$2b$10$RKpRibh3bY4djNwj/mKa9.72evFUz.hCVn5JQFsn1l7bLUeI/oGYK"
_REJECTED_CACHE = 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BasicAuth:
    def __init__(self, users: Mapping[str, Secret]) -> None:
        self._users = users
        self._key = os.urandom(32)
        self._verified: dict[str, bytes] = {}
        self._rejected: OrderedDict[bytes, None] = OrderedDict()
        # bcrypt is deliberately slow: two at a time keeps a password-guessing flood from
        # taking both cores away from polling and scraping.
        self._slots = asyncio.Semaphore(2)
        self.bcrypt_calls = 0

    async def check(self, header: str | None) -> str | None:
        """The authenticated user name, or None."""
        credentials = _parse_basic(header)
        if credentials is None:
            return None
        user, password = credentials
        digest = hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        cached = self._verified.get(user)
        if cached is not None and hmac.compare_digest(cached, digest):
            return user
        if digest in self._rejected:
            return None
        hashed = self._users.get(user)
        target = hashed.reveal().encode() if hashed is not None else _DUMMY_HASH
        async with self._slots:
            self.bcrypt_calls += 1
            ok = await asyncio.to_thread(_checkpw, password.encode(), target)
        if ok and hashed is not None:
            self._verified[user] = digest
            return user
        self._rejected[digest] = None
        if len(self._rejected) > _REJECTED_CACHE:
            self._rejected.popitem(last=False)
        return None


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


def _parse_basic(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class HttpGuard:
    """Per-app security state: the current web config, its TLS context, live connections."""

    def __init__(
        self,
        web_config: WebConfig | None,
        web_config_file: str | None,
        log: structlog.typing.FilteringBoundLogger,
        *,
        telemetry_path: str = "/metrics",
        max_requests: int = 40,
        protect_probes: bool = False,
        read_header_timeout: float = READ_HEADER_TIMEOUT,
    ) -> None:
        self.config = web_config or WebConfig()
        self._file = web_config_file
        self._log = log
        self._telemetry_path = telemetry_path
        self._max_requests = max_requests
        self._protect_probes = protect_probes
        self.read_header_timeout = read_header_timeout
        self.auth = BasicAuth(self.config.users)
        self._scrapes = 0
        self._identity = self._watched_identity()
        self._context: ssl.SSLContext | None = None
        if self.config.tls is not None:
            self._context = build_ssl_context(self.config.tls)
        self.connections: dict[Any, GuardProtocol] = {}

    @property
    def tls(self) -> bool:
        return self._context is not None

    def listening_context(self) -> ssl.SSLContext | None:
        """The context the socket listens with; it delegates each handshake to the newest."""
        if self._context is None:
            return None
        assert self.config.tls is not None
        base = build_ssl_context(self.config.tls)

        def pick(sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
            assert self._context is not None
            sslobj.context = self._context

        base.sni_callback = pick
        return base

    def _watched_identity(self) -> tuple[object, ...]:
        if self._file is None:
            return ()
        return files_identity((Path(self._file), *self.config.files()))

    def refresh(self) -> bool:
        """Re-read the web config if it or its files changed; keep the old one on errors."""
        identity = self._watched_identity()
        if self._file is None or identity == self._identity:
            return False
        self._identity = identity  # a broken file is reported once, not every poll
        try:
            config = load_web_config(self._file)
        except ConfigError as exc:
            self._log.error("web_config_reload_failed", errors=exc.errors)
            return False
        if (config.tls is None) != (self._context is None):
            why = "turning TLS on or off needs a restart"
            self._log.error("web_config_reload_failed", errors=[why])
            return False
        self._context = build_ssl_context(config.tls) if config.tls else None
        if config.users != self.config.users:
            self.auth = BasicAuth(config.users)
        self.config = config
        self._identity = self._watched_identity()
        self._log.info("web_config_reloaded", tls=self.tls, users=len(config.users))
        return True

    async def watch(self) -> None:
        if self._file is None:
            return
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                self.refresh()
            except (OSError, ssl.SSLError, ValueError) as exc:
                self._log.error("web_config_reload_failed", errors=[str(exc)])

    async def sweep(self) -> None:
        """Close connections that started a request head but did not finish it in time.

        One pass over the connections now and then, instead of a timer per request, keeps
        the scrape path cheap.
        """
        period = min(1.0, self.read_header_timeout / 3)
        while True:
            await asyncio.sleep(period)
            deadline = time.monotonic() - self.read_header_timeout
            for connection in list(self.connections.values()):
                since = connection.waiting_since
                if since is not None and since < deadline:
                    connection.close()

    def guarded(self, handler: Handler, *, probe: bool = False, scrape: bool = False) -> Handler:
        """Wrap one route's handler with basic auth and, for scrapes, the concurrency cap.

        Wrapping at registration instead of a middleware spares every request aiohttp's
        per-request middleware chain (about 15 % of a scrape's cost).
        """

        async def guarded_handler(request: web.Request) -> web.StreamResponse:
            if self.config.users and (self._protect_probes or not probe):
                user = await self.auth.check(request.headers.get("Authorization"))
                if user is None:
                    return web.Response(
                        status=401,
                        text="Unauthorized\n",
                        headers={"WWW-Authenticate": 'Basic realm="koodrive-exporter"'},
                    )
            if not scrape:
                return await handler(request)
            if self._scrapes >= self._max_requests:
                return web.Response(status=503, text="too many concurrent scrapes\n")
            self._scrapes += 1
            try:
                return await handler(request)
            finally:
                self._scrapes -= 1

        return guarded_handler

    async def add_headers(self, _: web.Request, response: web.StreamResponse) -> None:
        """on_response_prepare: the configured headers on every response, errors included."""
        if self.config.headers:
            response.headers.update(self.config.headers)


class GuardProtocol(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol to time how long a request head takes.

    A head is complete at its blank line; until then `waiting_since` holds when the client
    connected or started sending, and the guard's sweeper closes the connection once that
    is older than the read-header timeout. Idle keep-alive connections are left to
    aiohttp's keep-alive timeout.
    """

    __slots__ = ("_guard", "_inner", "_tail", "_transport", "waiting_since")

    def __init__(self, inner: asyncio.Protocol, guard: HttpGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._transport: asyncio.BaseTransport | None = None
        self._tail = b""
        self.waiting_since: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self.waiting_since = time.monotonic()
        self._guard.connections[transport] = self
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        # The blank line may straddle two reads: also look across the boundary.
        if b"\r\n\r\n" in data or b"\r\n\r\n" in self._tail + data[:3]:
            self.waiting_since = None
        elif self.waiting_since is None:
            self.waiting_since = time.monotonic()
        self._tail = data[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.connections.pop(self._transport, None)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class GuardedSite(web.TCPSite):
    """TCPSite whose connections go through GuardProtocol."""

    def __init__(
        self, runner: web.BaseRunner, host: str | None, port: int, guard: HttpGuard
    ) -> None:
        super().__init__(runner, host, port, ssl_context=guard.listening_context())
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        self._server = await loop.create_server(
            lambda: GuardProtocol(server(), self._guard),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
