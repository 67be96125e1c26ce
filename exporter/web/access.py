"""Who may ask: the exporter-toolkit web config in force, basic auth, the rate limit.

- Basic auth against bcrypt hashes, with the exporter-toolkit verdict (bcrypt reads the
  first 72 bytes of a password), verified credentials cached under an HMAC keyed per
  process, at most one bcrypt check in flight per client address, and every check padded
  to the cost of the slowest configured hash, unknown users included. Credentials that do
  not decode (not base64, not ASCII, not UTF-8) are simply wrong: 401, never an error.
- exporter-toolkit's `rate_limit`: one token bucket for the whole server (O(1) memory and
  time per request), checked before basic auth; an empty bucket answers 429 at once.
- The web config is re-read when it or its files change; every new TLS handshake uses the
  newest context. A live change that would weaken security (turning TLS on or off,
  removing basic auth, dropping client certificate verification, trusting the system roots
  instead of the configured client CA, loosening client_allowed_sans, lowering
  min_version) is refused until a restart.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import os
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import bcrypt
import structlog
from aiohttp import web

from ..core.settings import ConfigError, Secret
from .edge import MAX_BODY_BYTES, Edge, TLSChoice, client_group
from .webconfig import (
    TLS_VERSIONS,
    RateLimit,
    TLSConfig,
    WebConfig,
    build_ssl_context,
    files_identity,
    load_web_config,
)

WATCH_INTERVAL = 2.0
# bcrypt reads at most this many bytes of a password; Go's x/crypto/bcrypt (and so
# exporter-toolkit) ignores the rest, while Python's bcrypt 5 raises instead.
BCRYPT_MAX_PASSWORD = 72
BCRYPT_SLOTS = 2
FLOOR_SMOOTHING = 0.2
_REJECTED_CACHE = 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BasicAuth:
    """bcrypt basic auth that a flood of guesses cannot turn into a denial of service."""

    def __init__(self, users: Mapping[str, Secret]) -> None:
        self._users = users
        self._key = os.urandom(32)
        self._verified: dict[str, bytes] = {}
        self._rejected: OrderedDict[bytes, None] = OrderedDict()
        # bcrypt is deliberately slow: two at a time keeps a password-guessing flood from
        # taking both cores away from polling and scraping.
        self._slots = asyncio.Semaphore(BCRYPT_SLOTS)
        # One check in flight per client address: a flood from one address waits for
        # itself, not in front of everybody else. Identical credentials share one check.
        self._per_address: dict[str, asyncio.Future[bool]] = {}
        self._in_flight: dict[bytes, asyncio.Future[bool]] = {}
        self._max_cost = max((_cost(h.reveal()) for h in users.values()), default=4)
        self._dummy: bytes | None = None
        self._floor = 0.0
        self.bcrypt_calls = 0

    async def check(self, header: str | None, address: str = "") -> str | None:
        """The authenticated user name, or None; raises Busy while `address` has a check.

        A check runs as its own task, so a client that disconnects neither cancels it for
        others waiting on the same credentials nor frees its address's slot early.
        """
        credentials = _parse_basic(header)
        if credentials is None:
            return None
        user, password = credentials
        key = hmac.new(self._key, f"{user}\0".encode() + password, hashlib.sha256).digest()
        cached = self._verified.get(user)
        if cached is not None and hmac.compare_digest(cached, key):
            return user
        if key in self._rejected:
            return None
        task = self._in_flight.get(key)
        if task is None:
            if address in self._per_address:
                raise Busy
            task = asyncio.ensure_future(self._bcrypt(user, password))
            self._in_flight[key] = self._per_address[address] = task
            task.add_done_callback(functools.partial(self._checked, user, key, address))
        return user if await asyncio.shield(task) else None

    def _checked(self, user: str, key: bytes, address: str, task: asyncio.Future[bool]) -> None:
        del self._in_flight[key], self._per_address[address]
        if task.cancelled() or task.exception() is not None:
            return
        if task.result():
            self._verified[user] = key
            return
        self._rejected[key] = None
        if len(self._rejected) > _REJECTED_CACHE:
            self._rejected.popitem(last=False)

    async def _bcrypt(self, user: str, password: bytes) -> bool:
        """One check, taking at least as long as one at the highest configured cost.

        Unknown users are checked against a dummy hash of that cost, and cheaper hashes
        are padded with a sleep (which holds no slot) to a smoothed duration of recent
        costliest checks, so the answer's timing tells neither whether a user exists nor
        which cost its hash has.
        """
        started = time.monotonic()
        async with self._slots:
            self.bcrypt_calls += 1
            if self._dummy is None:
                self._dummy, self._floor = await asyncio.to_thread(_dummy_hash, self._max_cost)
            hashed = self._users.get(user)
            target = hashed.reveal().encode() if hashed is not None else self._dummy
            checking = time.monotonic()
            ok = await asyncio.to_thread(_checkpw, password, target)
            if hashed is None or _cost(hashed.reveal()) == self._max_cost:
                # The floor follows what a costliest check takes now, as load changes.
                self._floor += FLOOR_SMOOTHING * (time.monotonic() - checking - self._floor)
        spent = time.monotonic() - started
        if spent < self._floor:
            await asyncio.sleep(self._floor - spent)
        return ok and hashed is not None


class Busy(Exception):
    """A client address already has a bcrypt check in flight: answer 429, do not queue."""


def _cost(hashed: str) -> int:
    try:
        return int(hashed[4:6])
    except ValueError:
        return 4


def _dummy_hash(cost: int) -> tuple[bytes, float]:
    """A hash of random bytes at `cost`, and how long one check against it takes here."""
    dummy = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(cost))
    started = time.monotonic()
    _checkpw(b"x", dummy)
    return dummy, time.monotonic() - started


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], hashed)
    except ValueError:
        return False


def _parse_basic(header: str | None) -> tuple[str, bytes] | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip().encode("ascii"), validate=True)
        user, sep, password = decoded.partition(b":")
        name = user.decode("utf-8")
    except ValueError:  # bad base64, non-ASCII (RFC 7617 wants ASCII) or non-UTF-8 names
        return None
    # The password stays bytes: Go compares bytes, and bcrypt wants bytes anyway.
    return (name, password) if sep else None


class TokenBucket:
    """golang.org/x/time/rate's Allow(), as exporter-toolkit uses it: the bucket starts full
    with `burst` tokens and gains one every `interval` seconds, up to `burst`. With burst 0
    every request is refused, as there. Two floats of state, whatever the traffic."""

    __slots__ = ("_burst", "_clock", "_interval", "_last", "_tokens")

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = limit.interval
        self._burst = float(limit.burst)
        self._clock = clock
        self._tokens = self._burst
        self._last = clock()

    def allow(self) -> bool:
        now = self._clock()
        elapsed = max(0.0, now - self._last)
        self._last = now
        self._tokens = min(self._burst, self._tokens + elapsed / self._interval)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


def _bucket(limit: RateLimit | None) -> TokenBucket | None:
    return TokenBucket(limit) if limit is not None else None


class Access:
    """Per-app security state: the web config, its TLS context, auth, the scrape cap."""

    def __init__(
        self,
        web_config: WebConfig | None,
        web_config_file: str | None,
        log: structlog.typing.FilteringBoundLogger,
        *,
        max_requests: int = 40,
        protect_probes: bool = False,
    ) -> None:
        self.config = web_config or WebConfig()
        self._file = web_config_file
        self._log = log
        self._max_requests = max_requests
        self._protect_probes = protect_probes
        self.auth = BasicAuth(self.config.users)
        self.scrapes = 0
        self._identity = self._watched_identity()
        self._context = build_ssl_context(self.config.tls) if self.config.tls else None
        self._limiter = _bucket(self.config.rate_limit)
        self.rate_limited = 0

    @property
    def tls(self) -> bool:
        return self._context is not None

    def tls_choice(self) -> TLSChoice:
        """The newest server context and its SAN allow-list: a handshake takes both whole.

        (An SNI callback that swaps contexts mid-handshake would carry over only the
        certificate and CA store, not client_auth_type or the TLS versions.)
        """
        if self._context is None or self.config.tls is None:
            return None
        return self._context, self.config.tls.client_allowed_sans

    def _watched_identity(self) -> tuple[object, ...]:
        if self._file is None:
            return ()
        return files_identity((Path(self._file), *self.config.files()))

    def refresh(self) -> bool:
        """Re-read the web config if it or its files changed; keep the old one on errors.

        Blocking file I/O: the watcher runs it in a thread. It only swaps references, which
        the event loop sees atomically.
        """
        identity = self._watched_identity()
        if self._file is None or identity == self._identity:
            return False
        self._identity = identity  # a broken file is reported once, not every poll
        try:
            config = load_web_config(self._file)
            context = build_ssl_context(config.tls) if config.tls else None
        except ConfigError as exc:
            self._log.error("web_config_reload_failed", errors=exc.errors)
            return False
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._log.error("web_config_reload_failed", errors=[f"{type(exc).__name__}: {exc}"])
            return False
        refusal = _weakening(self.config, config)
        if refusal:
            self._log.error("web_config_reload_failed", errors=[refusal])
            return False
        self._context = context
        if config.users != self.config.users:
            self.auth = BasicAuth(config.users)
        if config.rate_limit != self.config.rate_limit:
            self._limiter = _bucket(config.rate_limit)
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
                await asyncio.to_thread(self.refresh)
            except Exception as exc:  # the watcher must outlive any surprise
                self._log.error("web_config_reload_failed", errors=[type(exc).__name__])

    def guarded(
        self,
        edge: Edge,
        handler: Handler,
        *,
        probe: bool = False,
        scrape: bool = False,
        busy: bool = True,
    ) -> Handler:
        """Wrap one route's handler with basic auth and, for scrapes, the concurrency cap.

        Wrapping at registration instead of a middleware spares every request aiohttp's
        per-request middleware chain (about 15 % of a scrape's cost).
        """

        async def guarded_handler(request: web.Request) -> web.StreamResponse:
            refusal = self._limited(probe)
            if refusal is None and request.body_exists:
                refusal = await _drop_body(edge, request)
            if refusal is not None:
                return refusal
            connection = edge.begin(request, busy)
            try:
                refusal = await self._unauthorized(request, probe)
                if refusal is not None:
                    return refusal
                if not scrape:
                    return await handler(request)
                if self.scrapes >= self._max_requests:
                    return web.Response(status=503, text="too many concurrent scrapes\n")
                self.scrapes += 1
                try:
                    return await handler(request)
                finally:
                    self.scrapes -= 1
            finally:
                edge.end(connection, busy)

        return guarded_handler

    def _guarded(self, probe: bool) -> bool:
        return self._protect_probes or not probe

    def _limited(self, probe: bool) -> web.Response | None:
        """exporter-toolkit's rate limit, before the body and basic auth: a flood costs
        neither reads nor bcrypt."""
        if self._guarded(probe) and self._limiter is not None and not self._limiter.allow():
            self.rate_limited += 1
            return web.Response(status=429, text="Too Many Requests\n")
        return None

    async def _unauthorized(self, request: web.Request, probe: bool) -> web.Response | None:
        if not (self.config.users and self._guarded(probe)):
            return None
        try:
            user = await self.auth.check(request.headers.get("Authorization"), _peer(request))
        except Busy:
            return web.Response(
                status=429,
                text="a login from this address is being checked; retry\n",
                headers={"Retry-After": "1"},
            )
        if user is None:
            return web.Response(
                status=401,
                text="Unauthorized\n",
                headers={"WWW-Authenticate": 'Basic realm="koodrive-exporter"'},
            )
        return None

    def add_headers(self, response: web.StreamResponse) -> None:
        """The configured headers, on every response (errors included)."""
        if self.config.headers:
            response.headers.update(self.config.headers)


async def _drop_body(edge: Edge, request: web.Request) -> web.Response | None:
    """Read and drop a request body no endpoint uses, up to MAX_BODY_BYTES; 413 beyond.

    Nothing is kept: a body costs its reads, not its size in memory. Until it is read the
    request is not complete, so the edge's deadline and byte count still apply to it.
    """
    read = 0
    try:
        if (request.content_length or 0) <= MAX_BODY_BYTES:
            while (chunk := await request.content.readany()) and read <= MAX_BODY_BYTES:
                read += len(chunk)
    except ConnectionError:  # the client left; nobody reads this answer
        return web.Response(status=400, text="request body incomplete\n")
    if max(read, request.content_length or 0) <= MAX_BODY_BYTES:
        return None
    connection = edge.of(request)
    if connection is not None:
        connection.closing()
    response = web.Response(status=413, text="request body too large\n")
    response.force_close()
    return response


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return client_group(str(peer[0])) if peer else ""


def _weakening(old: WebConfig, new: WebConfig) -> str:
    """Why `new` may not replace `old` while running, or "": security never drops live."""
    if (old.tls is None) != (new.tls is None):
        return "turning TLS on or off needs a restart"
    if old.users and not new.users:
        return "removing basic auth needs a restart; the previous users stay in force"
    if old.tls is not None and new.tls is not None:
        return _tls_weakening(old.tls, new.tls)
    return ""


def _tls_weakening(old: TLSConfig, new: TLSConfig) -> str:
    verified = "RequireAndVerifyClientCert"
    if old.client_auth_type == verified and new.client_auth_type != verified:
        return "dropping client certificate verification needs a restart"
    if old.has_client_ca and not new.has_client_ca and new.client_auth_type != "NoClientCert":
        return "trusting the system CAs instead of the client CA needs a restart"
    old_sans, new_sans = old.client_allowed_sans, new.client_allowed_sans
    if old_sans is not None and (new_sans is None or not new_sans <= old_sans):
        return "removing or widening client_allowed_sans needs a restart"
    if TLS_VERSIONS[new.min_version] < TLS_VERSIONS[old.min_version]:
        return "lowering min_version needs a restart"
    return ""
