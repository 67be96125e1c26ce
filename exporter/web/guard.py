"""What stands between the network and the handlers: connections, TLS, basic auth, limits.

Every connection passes through `GuardProtocol`, which owns the TCP transport from the
moment it is accepted, so nothing a client sends (or fails to send) escapes a bound:

- At most `max_connections` are open. At the cap, a new connection replaces the oldest one
  that is idle or still owes its request head (TLS handshake included), taken from a client
  address that holds more connections than the newcomer's; otherwise the newcomer is closed
  at once. A flood from one address thus refuses itself once it fills the cap, while a
  probe or scrape from any other address still gets in.
- With TLS, each connection's TLS layer reads through a 16 KiB buffer instead of asyncio's
  256 KiB one, so a thousand half-open handshakes cost megabytes, not a quarter gigabyte.
- One deadline covers the TLS handshake and the first request head (from accept), and
  every later head on the connection (from its first byte); a head is also capped in size.
  Heads are found by scanning the bytes for the blank line, so stray blank lines, pipelined
  partial heads or a head split over many reads cannot sidestep the deadline.
- Scrape bodies are written by `send_body` in one write while the clients that are not
  keeping up hold less than a write budget in all, past it in bounded pieces of the shared
  immutable body with back-pressure. One sweep closes a connection whose client read
  nothing for `write_timeout` or that is past its body's deadline, and a scrape holds its
  concurrency slot until its body is written or its connection is gone.
- Basic auth against bcrypt hashes, with the exporter-toolkit verdict (bcrypt reads the
  first 72 bytes of a password), verified credentials cached under an HMAC keyed per
  process, at most one bcrypt check in flight per client address, and every check padded
  to the cost of the slowest configured hash, unknown users included.
- exporter-toolkit's `rate_limit`: one token bucket for the whole server (O(1) memory and
  time per request), checked before basic auth; an empty bucket answers 429 at once.
- `client_allowed_sans`: checked on the verified client certificate right after the
  handshake (Python's ssl has no hook inside it); a connection without an allowed SAN is
  closed before any request is read.
- TLS: every handshake uses the newest context, so rotated certificates and changed TLS
  settings apply to new connections without a restart; a live change that would weaken
  security (turning TLS on or off, removing basic auth, dropping client certificate
  verification, trusting the system roots instead of the configured client CA, loosening
  client_allowed_sans, lowering min_version) is refused until a restart.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import ipaddress
import os
import ssl
import time
from asyncio import sslproto
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import bcrypt
import structlog
from aiohttp import web

from ..core.config import ConfigError, Secret
from .webconfig import (
    TLS_VERSIONS,
    RateLimit,
    TLSConfig,
    WebConfig,
    build_ssl_context,
    files_identity,
    load_web_config,
)

READ_HEADER_TIMEOUT = 10.0
KEEPALIVE_TIMEOUT = 75.0
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 1000
# A request head is a request line and a few headers; Prometheus sends ~300 bytes with
# basic auth. aiohttp caps single lines at 8 KiB and the count at 100, which alone would
# let one connection park ~800 KiB of partial head.
MAX_HEAD_BYTES = 32 * 1024
# A body over this size goes out in pieces of it when the write budget (below) is spent: a
# client that does not read then pins at most about a piece plus the transport's high-water
# mark, never a copy of the whole body.
BODY_PIECE = 64 * 1024
# A body up to this size always goes out in one write, headers included: the kernel's socket
# buffer on a healthy connection takes it whole (a gzip body of ~1,700 accounts), and a client
# that does not read pins no more than two pieces would.
SINGLE_WRITE = 2 * BODY_PIECE
# How much of larger bodies may be in flight in one write each, in all. One write is as fast as
# a body can go (piecewise writes cost a 0.6 MB body half of its throughput, bench/suite.py),
# but the transport of a client that does not read keeps what the kernel did not take; so a
# body counts against this from its write until it has drained, and past it bodies go out in
# pieces. Prometheus drains a body within milliseconds, so only stalled or very slow clients
# hold the budget for long: a flood of them costs this plus a piece each, not a body each.
WRITE_BUDGET = 32 * 1024 * 1024
# Beyond the stall deadline, a whole body must go out at this average rate (after the first
# write_timeout), so a client that reads a trickle cannot hold a scrape slot for long: 5.7 MB
# (10,000 accounts, uncompressed) may take 10 s + 89 s at most.
MIN_SEND_RATE = 64 * 1024
LISTEN_BACKLOG = 1024
# How far back the eviction looks for a victim before it gives up and refuses the newcomer:
# bounds the work a flood can cause per connection.
EVICTION_SCAN = 512
# The TLS layer's read buffer. asyncio's own is 256 KiB, allocated (and zeroed, so resident)
# for every connection from its first byte; a TLS record is at most 16 KiB anyway.
TLS_READ_BUFFER = 16 * 1024
WATCH_INTERVAL = 2.0
# bcrypt reads at most this many bytes of a password; Go's x/crypto/bcrypt (and so
# exporter-toolkit) ignores the rest, while Python's bcrypt 5 raises instead.
BCRYPT_MAX_PASSWORD = 72
BCRYPT_SLOTS = 2
FLOOR_SMOOTHING = 0.2
_REJECTED_CACHE = 1024
_HEAD_END = b"\r\n\r\n"
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 26\r\nConnection: close\r\n\r\nrequest head is too large\n"
)
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
        decoded = base64.b64decode(value.strip(), validate=True)
        user, sep, password = decoded.partition(b":")
        name = user.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
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


class HttpGuard:
    """Per-app security state: the web config, its TLS context, and every live connection."""

    def __init__(
        self,
        web_config: WebConfig | None,
        web_config_file: str | None,
        log: structlog.typing.FilteringBoundLogger,
        *,
        max_requests: int = 40,
        max_connections: int = MAX_CONNECTIONS,
        protect_probes: bool = False,
        read_header_timeout: float = READ_HEADER_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        max_head_bytes: int = MAX_HEAD_BYTES,
        write_budget: int = WRITE_BUDGET,
    ) -> None:
        self.config = web_config or WebConfig()
        self._file = web_config_file
        self._log = log
        self._max_requests = max_requests
        self.max_connections = max_connections
        self._protect_probes = protect_probes
        self.read_header_timeout = read_header_timeout
        self.write_timeout = write_timeout
        self.max_head_bytes = max_head_bytes
        self.write_budget = write_budget
        self.auth = BasicAuth(self.config.users)
        self._scrapes = 0
        self._identity = self._watched_identity()
        self._context: ssl.SSLContext | None = None
        if self.config.tls is not None:
            self._context = build_ssl_context(self.config.tls)
        self._limiter = _bucket(self.config.rate_limit)
        self.rate_limited = 0
        # Oldest first; a connection moves to the end whenever it finishes a request, so
        # the front holds those that have been unproductive the longest.
        self.connections: OrderedDict[GuardProtocol, None] = OrderedDict()
        self._by_transport: dict[object, GuardProtocol] = {}
        self._per_address: dict[str, int] = {}
        self.refused = 0
        self.evicted = 0
        # Connections whose transport paused our writes (the client is not keeping up), for
        # the stall sweep; and the bytes of bodies in flight in one write (the budget's use).
        self.paused: set[GuardProtocol] = set()
        self.held = 0

    @property
    def tls(self) -> bool:
        return self._context is not None

    def tls_context(self) -> ssl.SSLContext | None:
        """The newest server context: every new connection's handshake uses it whole.

        (An SNI callback that swaps contexts mid-handshake would carry over only the
        certificate and CA store, not client_auth_type or the TLS versions.)
        """
        return self._context

    def allowed_sans(self) -> frozenset[str] | None:
        """The SAN allow-list that goes with tls_context(); a connection takes both at once."""
        tls = self.config.tls
        return tls.client_allowed_sans if tls is not None else None

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

    async def sweep(self) -> None:
        """Close connections whose handshake, request head or response body is overdue.

        One pass over the connections now and then, instead of a timer per request or per
        body piece, keeps the scrape path cheap; a connection is closed at most one period
        late.
        """
        period = min(1.0, self.read_header_timeout / 4, self.write_timeout / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            self.close_overdue(now)
            self.close_stalled(now)

    def close_overdue(self, now: float) -> None:
        deadline = now - self.read_header_timeout
        for connection in list(self.connections):
            since = connection.owed_since
            # A busy connection is answering a request (a reload may take long); what it
            # owes is checked again once it is done.
            if since is not None and since < deadline and not connection.busy:
                connection.abort()

    def close_stalled(self, now: float) -> None:
        """Abort a paused writer whose client read nothing for write_timeout, or that is
        past its body's deadline (a trickle that does read).

        Progress is the transport's buffer shrinking: only the client reading makes room.
        """
        for connection in list(self.paused):
            transport = connection.app_transport
            buffered = transport.get_write_buffer_size() if transport is not None else 0
            if buffered < connection.buffered:
                connection.buffered, connection.stalled_since = buffered, now
            overdue = connection.body_deadline is not None and now > connection.body_deadline
            if overdue or now - connection.stalled_since >= self.write_timeout:
                connection.abort()

    def paused_writing(self, connection: GuardProtocol) -> None:
        transport = connection.app_transport
        connection.buffered = transport.get_write_buffer_size() if transport is not None else 0
        connection.stalled_since = time.monotonic()
        self.paused.add(connection)

    def resumed_writing(self, connection: GuardProtocol) -> None:
        self.paused.discard(connection)

    def admit(self, connection: GuardProtocol) -> bool:
        """Register a new connection; at the cap, evict an unproductive one or refuse."""
        if len(self.connections) >= self.max_connections:
            victim = self._victim(connection.address)
            if victim is None:
                self.refused += 1
                return False
            self.evicted += 1
            victim.abort()
        self.connections[connection] = None
        self._per_address[connection.address] = self._per_address.get(connection.address, 0) + 1
        return True

    def _victim(self, address: str) -> GuardProtocol | None:
        """The oldest idle or unfinished connection of an address holding more than `address`.

        An address holding half or more of all connections cannot find one, so a flood from
        one address is refused at once instead of scanning; others scan a bounded prefix.
        """
        held = self._per_address.get(address, 0)
        if 2 * held >= len(self.connections):
            return None
        for index, candidate in enumerate(self.connections):
            if index >= EVICTION_SCAN:
                break
            if not candidate.busy and self._per_address.get(candidate.address, 0) > held:
                return candidate
        return None

    def attached(self, connection: GuardProtocol, transport: object) -> None:
        self._by_transport[transport] = connection

    def forget(self, connection: GuardProtocol) -> None:
        """Unregister a connection; safe to call more than once."""
        self.resumed_writing(connection)
        self._by_transport.pop(connection.app_transport, None)
        if connection not in self.connections:
            return
        del self.connections[connection]
        left = self._per_address[connection.address] - 1
        if left:
            self._per_address[connection.address] = left
        else:
            del self._per_address[connection.address]

    def close_pending(self) -> None:
        """Abort what aiohttp's graceful shutdown does not know: connections in handshake."""
        for connection in list(self.connections):
            if connection.app_transport is None:
                connection.abort()

    def guarded(self, handler: Handler, *, probe: bool = False, scrape: bool = False) -> Handler:
        """Wrap one route's handler with basic auth and, for scrapes, the concurrency cap.

        Wrapping at registration instead of a middleware spares every request aiohttp's
        per-request middleware chain (about 15 % of a scrape's cost). The connection counts
        as busy (not evictable) while its handler runs, body included.
        """

        async def guarded_handler(request: web.Request) -> web.StreamResponse:
            connection = self._by_transport.get(request.transport)
            if connection is not None:
                connection.busy += 1
            try:
                return await self._handle(request, handler, probe=probe, scrape=scrape)
            finally:
                if connection is not None:
                    connection.busy -= 1
                    if connection in self.connections:
                        self.connections.move_to_end(connection)

        return guarded_handler

    async def _handle(
        self, request: web.Request, handler: Handler, *, probe: bool, scrape: bool
    ) -> web.StreamResponse:
        guarded = self._protect_probes or not probe
        if guarded and self._limiter is not None and not self._limiter.allow():
            # exporter-toolkit's answer, before basic auth so a flood costs no bcrypt.
            self.rate_limited += 1
            return web.Response(status=429, text="Too Many Requests\n")
        if self.config.users and guarded:
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
        if not scrape:
            return await handler(request)
        if self._scrapes >= self._max_requests:
            return web.Response(status=503, text="too many concurrent scrapes\n")
        self._scrapes += 1
        try:
            return await handler(request)
        finally:
            self._scrapes -= 1

    async def send_body(
        self, request: web.Request, headers: Mapping[str, str], body: bytes
    ) -> web.StreamResponse:
        """Write `body` in one write while the write budget allows, else in pieces.

        One write is what a body costs at least (headers and body in one send); a client
        that does not read then holds the rest of it in its transport, which the budget
        bounds across clients. Pieces are views of the one shared body with back-pressure,
        so past the budget a hundred slow scrapers cost a hundred small transport buffers,
        not a hundred copies of a megabyte body. The sweep (close_stalled) aborts a client
        that stops reading, so no piece needs a timer of its own.
        """
        size = len(body)
        if size <= SINGLE_WRITE:
            return web.Response(body=body, headers=headers)
        connection = self._by_transport.get(request.transport)
        if connection is not None:
            connection.body_deadline = time.monotonic() + self.write_timeout + size / MIN_SEND_RATE
        try:
            # One write only on plain TCP: there the transport that keeps what the kernel did
            # not take is the one whose pauses the sweep sees. With TLS the layer hands a
            # whole write to the socket's transport below it at once, unpaused and unseen,
            # so TLS bodies go out in pieces, which pause the TLS transport itself.
            if not connection_tls(connection) and self.held + size <= self.write_budget:
                # Reserved before the first await, so scrapes that start meanwhile see it.
                self.held += size
                try:
                    response: web.StreamResponse = web.Response(body=body, headers=headers)
                    await response.prepare(request)
                    await response.write_eof()  # returns once the buffer is below low water
                finally:
                    self.held -= size
                return response
            response = web.StreamResponse(headers=headers)
            response.content_length = size
            await response.prepare(request)
            if request.method != "HEAD":
                with memoryview(body) as view:
                    for start in range(0, size, BODY_PIECE):
                        await response.write(view[start : start + BODY_PIECE])
            await response.write_eof()
        except ConnectionError:
            pass  # the client left or the sweep aborted it; aiohttp notices and moves on
        finally:
            if connection is not None:
                connection.body_deadline = None
        return response

    async def add_headers(self, _: web.Request, response: web.StreamResponse) -> None:
        """on_response_prepare: the configured headers on every response, errors included."""
        if self.config.headers:
            response.headers.update(self.config.headers)


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


def client_group(address: str) -> str:
    """The unit the per-client limits count: an IPv4 address, or an IPv6 /64.

    One IPv6 host usually owns a whole /64, so counting single IPv6 addresses would let it
    appear as millions of clients.
    """
    if ":" not in address:
        return address
    try:
        return str(ipaddress.IPv6Network(f"{address.split('%')[0]}/64", strict=False))
    except ValueError:
        return address


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return client_group(str(peer[0])) if peer else ""


class GuardProtocol(asyncio.Protocol):
    """Owns one accepted TCP connection: the cap, the TLS handshake and the head deadline.

    It is created for the raw socket; with TLS it puts a TLS layer between the socket and
    itself, so the handshake counts against the same deadline as the head, and it is then
    the protocol above TLS (connection_made is called a second time, with the TLS
    transport). aiohttp's own protocol is created only once the connection is admitted and,
    with TLS, once the handshake succeeded.
    """

    __slots__ = (
        "_guard",
        "_head_bytes",
        "_in_head",
        "_inner",
        "_make_inner",
        "_raw",
        "_sans",
        "_tail",
        "address",
        "app_transport",
        "body_deadline",
        "buffered",
        "busy",
        "owed_since",
        "stalled_since",
    )

    def __init__(self, make_inner: Callable[[], asyncio.Protocol], guard: HttpGuard) -> None:
        self._make_inner = make_inner
        self._guard = guard
        self._inner: asyncio.Protocol | None = None
        self._raw: asyncio.Transport | None = None
        self.app_transport: asyncio.BaseTransport | None = None
        self.address = ""
        self._tail = b""
        self._in_head = False
        self._head_bytes = 0
        # Since when this connection owes a complete head (or handshake); None when not.
        self.owed_since: float | None = None
        self.busy = 0
        self._sans: frozenset[str] | None = None
        # Write-side watch (HttpGuard.close_stalled): the transport's smallest buffer size
        # since it paused, when it last shrank, and when the body being written must be out.
        self.buffered = 0
        self.stalled_since = 0.0
        self.body_deadline: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._raw is not None:  # the TLS layer finished its handshake
            if self._sans is not None and not san_allowed(transport, self._sans):
                self.abort()
                return
            self._attach(transport)
            return
        assert isinstance(transport, asyncio.Transport)
        self._raw = transport
        peer = transport.get_extra_info("peername")
        self.address = client_group(str(peer[0])) if peer else ""
        self.owed_since = time.monotonic()
        if not self._guard.admit(self):
            transport.abort()
            return
        context = self._guard.tls_context()
        if context is None:
            self._attach(transport)
            return
        self._sans = self._guard.allowed_sans()
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        waiter.add_done_callback(self._handshake_done)
        # What loop.start_tls does, with a lean read buffer (see TLS_READ_BUFFER). The layer
        # calls connection_made again on success; on failure it sets the waiter's exception.
        layer = _LeanTLS(
            loop,
            self,
            context,
            waiter,
            server_side=True,
            ssl_handshake_timeout=self._guard.read_header_timeout,
            ssl_shutdown_timeout=self._guard.write_timeout,
        )
        transport.set_protocol(layer)
        layer.connection_made(transport)

    @property
    def tls(self) -> bool:
        return self.app_transport is not self._raw

    def _handshake_done(self, waiter: asyncio.Future[None]) -> None:
        failed = waiter.cancelled() or waiter.exception() is not None
        if failed or self._inner is None:  # a lost connection ends the handshake "cleanly"
            self.abort()

    def _attach(self, transport: asyncio.BaseTransport) -> None:
        self.app_transport = transport
        self._guard.attached(self, transport)
        self._inner = self._make_inner()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._scan(data):
            self._refuse_head()
            return
        if self._inner is not None:
            self._inner.data_received(data)

    def _scan(self, data: bytes) -> bool:
        """Track request heads in the byte stream; False when one grows past the cap.

        A head starts at its first byte that is not CR or LF (blank lines before a request
        are ignored, by aiohttp too) and ends at the blank line. The deadline runs while a
        head is owed: from accept for the first, from its first byte for later ones.
        """
        position, size = 0, len(data)
        while position < size:
            if not self._in_head:
                start = position
                while start < size and data[start] in b"\r\n":
                    start += 1
                if start == size:
                    return True
                self._in_head, self._tail, self._head_bytes = True, b"", 0
                if self.owed_since is None:
                    self.owed_since = time.monotonic()
                position = start
            # The blank line may straddle two reads: look across the boundary first.
            joined = self._tail + data[position : position + 3]
            found = joined.find(_HEAD_END)
            if found >= 0:
                end = position + found + 4 - len(self._tail)
            else:
                found = data.find(_HEAD_END, position)
                end = found + 4 if found >= 0 else -1
            if end < 0:
                self._head_bytes += size - position
                self._tail = (self._tail + data[position:])[-3:]
                return self._head_bytes <= self._guard.max_head_bytes
            self._head_bytes += end - position
            if self._head_bytes > self._guard.max_head_bytes:
                return False
            self._in_head, self._tail, self.owed_since = False, b"", None
            position = end
        return True

    def _refuse_head(self) -> None:
        transport = self.app_transport
        if transport is not None and not transport.is_closing():
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(_TOO_LARGE)
            transport.close()
        else:
            self.abort()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.forget(self)
        self.owed_since = None
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._guard.paused_writing(self)
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._guard.resumed_writing(self)
        if self._inner is not None:
            self._inner.resume_writing()

    def abort(self) -> None:
        """Drop the connection now, buffers included (no TLS goodbye for a deadline)."""
        self._guard.forget(self)
        self.owed_since = None
        if self._raw is not None:
            self._raw.abort()


def connection_tls(connection: GuardProtocol | None) -> bool:
    """Whether the connection speaks TLS (unknown connections count as TLS: pieces)."""
    return connection is None or connection.tls


def san_allowed(transport: asyncio.BaseTransport, allowed: frozenset[str]) -> bool:
    """Whether the verified client certificate names one of `allowed` among its SANs.

    exporter-toolkit compares DNS names, e-mail addresses, IP addresses (Go's text form,
    which ipaddress gives too) and URIs as exact strings. A connection without a verified
    certificate has nothing to compare and fails, as it does there.
    """
    ssl_object = transport.get_extra_info("ssl_object")
    certificate = ssl_object.getpeercert() if ssl_object is not None else None
    for kind, value in (certificate or {}).get("subjectAltName", ()):
        if kind == "IP Address":
            with contextlib.suppress(ValueError):
                value = str(ipaddress.ip_address(value.strip()))
        if kind in _SAN_KINDS and value in allowed:
            return True
    return False


_SAN_KINDS = frozenset(("DNS", "email", "IP Address", "URI"))


class _LeanTLS(sslproto.SSLProtocol):  # type: ignore[misc]
    """asyncio's TLS layer with a 16 KiB read buffer instead of 256 KiB.

    asyncio offers no public way to size it; the class attribute is the one knob, and the
    constructor is the one asyncio itself uses for TLS servers (Python 3.11 to 3.13). The
    memory test in tests/test_hostile_web.py notices if a Python release changes either.
    """

    max_size = TLS_READ_BUFFER


async def listen(
    server: Callable[[], asyncio.Protocol], guard: HttpGuard, host: str | None, port: int
) -> asyncio.Server:
    """Listen with every connection going through GuardProtocol (which also does the TLS).

    A plain asyncio server rather than an aiohttp site: aiohttp's public `web.Server` makes
    the per-connection protocol, the guard wraps it, and no aiohttp internals are touched.
    """
    return await asyncio.get_running_loop().create_server(
        lambda: GuardProtocol(server, guard),
        host,
        port,
        backlog=LISTEN_BACKLOG,
        reuse_address=True,
    )
