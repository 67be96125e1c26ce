"""The connection edge: every accepted socket, from accept to close, on asyncio's public API.

aiohttp parses and answers requests; this module bounds what aiohttp does not, with two
mechanisms and nothing else:

- **A connection cap with eviction.** At most `max_connections` are open. At the cap, a new
  connection replaces the oldest one that is not running a handler, taken from a client
  address that holds more connections than the newcomer's; otherwise the newcomer is closed
  at once. A flood from one address thus refuses itself once it fills the cap, while a
  probe or scrape from any other address still gets in. (aiohttp and asyncio have no cap;
  Go's net/http has none either, but Go's goroutines are cheap where ours are not.)
- **One deadline per connection, on the loop's own timers.** A connection that owes a
  request (from accept, TLS handshake included, and from the first byte that arrives while no
  handler runs) must start one within `read_header_timeout`; one whose writes are paused (its
  client reads nothing) must drain within `write_timeout`; a scrape body must be out within
  `write_timeout` plus its size at `MIN_SEND_RATE`. Bytes received while no handler runs are
  counted per chunk (never per byte) and capped, so blank lines, a dripped head or a body
  sent ahead of its head's answer cannot grow without bound.

TLS is asyncio's own `loop.start_tls` with the newest server context, so rotated certificates
and changed TLS settings apply to the next handshake; `client_allowed_sans` is checked on the
verified certificate right after it (Python's ssl has no hook inside the handshake).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections import OrderedDict
from collections.abc import Callable, Mapping

from aiohttp import web

READ_HEADER_TIMEOUT = 10.0
KEEPALIVE_TIMEOUT = 75.0
WRITE_TIMEOUT = 10.0
# Each open TLS connection carries asyncio's 256 KiB read buffer (Python 3.11-3.13): at the
# cap, 256 TLS connections cost 64 MiB at most. Prometheus pairs and probes need a handful.
MAX_CONNECTIONS = 256
# A request head is a request line and a few headers; Prometheus sends ~300 bytes with basic
# auth. aiohttp caps single lines at 8 KiB and the count at 100 (~800 KiB), so the edge caps
# what a connection may send while no handler runs: a head, or a head and the body sent with
# it (the only endpoint that may take one, /-/reload, reads at most MAX_BODY_BYTES).
MAX_HEAD_BYTES = 32 * 1024
MAX_BODY_BYTES = 64 * 1024
# Scrape bodies go out in pieces of this size with back-pressure: a client that does not read
# pins at most a piece plus the transport's high-water mark, never a copy of the whole body.
BODY_PIECE = 256 * 1024
# A body up to this size goes out in one write with its headers, after the handler (a gzip
# body of ~1,700 accounts): a separate send for the headers cost a small scrape a third of
# its throughput (bench/suite.py, 2026-12-04). A client that does not read it pins at most
# this until the pause deadline: 256 connections, 32 MiB.
SINGLE_WRITE = 128 * 1024
# After the first write_timeout, a body must go out at least this fast on average, so a
# client that reads a trickle cannot hold a scrape slot for long: 5.7 MB (10,000 accounts,
# uncompressed) may take 10 s + 89 s at most.
MIN_SEND_RATE = 64 * 1024
LISTEN_BACKLOG = 1024
# How far the eviction looks for a victim before it refuses the newcomer: bounds the work a
# flood can cause per connection.
EVICTION_SCAN = 512
_HEAD_END = b"\r\n\r\n"
# Marks a request that `Edge.begin` saw complete (aiohttp's requests are mappings).
_COMPLETE = web.RequestKey("complete", bool)
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 26\r\nConnection: close\r\n\r\nrequest head is too large\n"
)
_BODY_TOO_LARGE = (
    b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 23\r\nConnection: close\r\n\r\nrequest body too large\n"
)
TLSChoice = tuple[ssl.SSLContext, frozenset[str] | None] | None


class Edge:
    """Every live connection, the cap, and the deadlines' settings."""

    def __init__(
        self,
        tls: Callable[[], TLSChoice],
        *,
        max_connections: int = MAX_CONNECTIONS,
        read_header_timeout: float = READ_HEADER_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
    ) -> None:
        self.tls = tls
        self.max_connections = max_connections
        self.read_header_timeout = read_header_timeout
        self.write_timeout = write_timeout
        # Oldest first; a connection moves to the end whenever it finishes a request, so the
        # front holds those that have been unproductive the longest.
        self.connections: OrderedDict[Connection, None] = OrderedDict()
        self._by_transport: dict[object, Connection] = {}
        self._per_address: dict[str, int] = {}
        self.refused = 0
        self.evicted = 0

    def admit(self, connection: Connection) -> bool:
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

    def _victim(self, address: str) -> Connection | None:
        """The oldest idle connection of an address holding more than `address`.

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

    def forget(self, connection: Connection) -> None:
        """Unregister a connection; safe to call more than once."""
        self._by_transport.pop(connection.app_transport, None)
        if connection not in self.connections:
            return
        del self.connections[connection]
        left = self._per_address[connection.address] - 1
        if left:
            self._per_address[connection.address] = left
        else:
            del self._per_address[connection.address]

    def attached(self, connection: Connection, transport: asyncio.BaseTransport) -> None:
        self._by_transport[transport] = connection

    def of(self, request: web.Request) -> Connection | None:
        return self._by_transport.get(request.transport)

    def close_pending(self) -> None:
        """Abort what aiohttp's graceful shutdown does not know: connections in handshake."""
        for connection in list(self.connections):
            if connection.app_transport is None:
                connection.abort()

    def begin(self, request: web.Request, busy: bool) -> Connection | None:
        """The request is in, head and body: its deadline and byte count end here.

        A busy connection (one whose handler runs) is never evicted; a handler that only
        waits (for a reload another request started) passes busy=False and stays evictable.
        Every begin is followed by one `end`, when the handler returns.
        """
        connection = self._by_transport.get(request.transport)
        if connection is not None:
            connection.complete(request, busy)
        return connection

    def end(self, connection: Connection | None, busy: bool) -> None:
        if connection is not None:
            connection.done(busy)
            if connection in self.connections:
                self.connections.move_to_end(connection)

    def answered(self, request: web.Request) -> None:
        """At every answer (on_response_prepare): a request answered without `begin`
        (aiohttp's own 404 or 405, a 429 or 413 before it) is over too, so an idle
        keep-alive is not cut."""
        connection = self.of(request)
        if connection is not None and not request.get(_COMPLETE):
            connection.answered()


class Connection(asyncio.Protocol):
    """One accepted connection: forwards every event to aiohttp's protocol, once admitted
    and (with TLS) once its handshake succeeded, and holds the connection's deadlines."""

    __slots__ = (
        "_closing",
        "_counting",
        "_early",
        "_edge",
        "_head_timer",
        "_inner",
        "_last",
        "_make_inner",
        "_open",
        "_owed_since",
        "_raw",
        "_received",
        "_request_seen",
        "_tls_task",
        "_write_mark",
        "_write_timer",
        "address",
        "app_transport",
        "busy",
    )

    def __init__(self, make_inner: Callable[[], asyncio.Protocol], edge: Edge) -> None:
        self._make_inner = make_inner
        self._edge = edge
        self._inner: asyncio.Protocol | None = None
        self._raw: asyncio.Transport | None = None
        self.app_transport: asyncio.BaseTransport | None = None
        self.address = ""
        self.busy = 0
        self._received = 0
        self._request_seen = False
        self._last = b""
        self._open = False
        self._closing = False
        self._counting = True
        self._early: list[bytes] = []
        self._head_timer: asyncio.TimerHandle | None = None
        self._owed_since: float | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._write_mark = 0
        self._tls_task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._raw = transport
        peer = transport.get_extra_info("peername")
        self.address = client_group(str(peer[0])) if peer else ""
        if not self._edge.admit(self):
            transport.abort()
            return
        self._owe()
        tls = self._edge.tls()
        if tls is None:
            self._attach(transport)
            return
        transport.pause_reading()  # the ClientHello is for start_tls to read
        self._tls_task = asyncio.ensure_future(self._handshake(transport, *tls))

    async def _handshake(
        self, raw: asyncio.Transport, context: ssl.SSLContext, sans: frozenset[str] | None
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                raw,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self._edge.read_header_timeout,
                ssl_shutdown_timeout=self._edge.write_timeout,
            )
        except Exception:  # whatever ended the handshake ends the connection
            transport = None
        if transport is None or (sans is not None and not san_allowed(transport, sans)):
            self.abort()
            return
        self._attach(transport)

    def _attach(self, transport: asyncio.BaseTransport) -> None:
        if self._raw is None or self._raw.is_closing():
            return  # closed while the handshake ran
        self.app_transport = transport
        self._edge.attached(self, transport)
        self._inner = self._make_inner()
        self._inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:  # TLS data decrypted before start_tls returned
            self._early.append(data)
            return
        self._track_heads(data)
        if self._counting and not self._closing:
            self._received += len(data)
            cap = MAX_HEAD_BYTES + (MAX_BODY_BYTES if self._request_seen else 0)
            if self._received > cap:
                self._refuse()
                return
            if self._owed_since is None:
                self._owe()
        self._inner.data_received(data)

    def _track_heads(self, data: bytes) -> None:
        """Whether a head ended (a body may follow it) and whether bytes follow the last
        head end (a partial request is owed): found at C speed, across reads."""
        end = data.rfind(_HEAD_END)
        if end >= 0:
            after = end + 4
        else:
            found = (self._last + data[:3]).find(_HEAD_END)
            after = found + 4 - len(self._last) if found >= 0 else -1
        if after >= 0:
            self._request_seen = True
            self._open = after < len(data)
        elif data:
            self._open = True
        self._last = data[-3:] if len(data) >= 3 else (self._last + data)[-3:]

    def complete(self, request: web.Request, busy: bool) -> None:
        """Head and body are in and a handler runs: nothing is owed until it ends."""
        request[_COMPLETE] = True
        # Bytes after a bodiless request's head are the next request's start: still owed.
        still_open = self._open and not request.body_exists
        self._counting = False
        self._reset()
        self._open = still_open
        self.busy += busy

    def done(self, busy: bool) -> None:
        """The handler ended: bytes that arrived after its request (a pipelined request's
        start) are owed under the deadline from now, as is the next byte."""
        self.busy -= busy
        self._counting = True
        if self._open and self._owed_since is None:
            self._owe()

    def answered(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._received, self._request_seen, self._open = 0, False, False
        self._owed_since = None

    def _owe(self) -> None:
        """A request is owed from now. The timer is lazy: one per connection, moved only
        when it fires, so a keep-alive scrape costs a clock read, not a timer and a cancel."""
        loop = asyncio.get_running_loop()
        self._owed_since = loop.time()
        if self._head_timer is None:
            self._head_timer = loop.call_at(
                self._owed_since + self._edge.read_header_timeout, self._overdue
            )

    def _overdue(self) -> None:
        self._head_timer = None
        if self._owed_since is None:
            return  # nothing is owed; the next byte starts a new deadline
        deadline = self._owed_since + self._edge.read_header_timeout
        loop = asyncio.get_running_loop()
        if loop.time() >= deadline:
            self.abort()
        else:
            self._head_timer = loop.call_at(deadline, self._overdue)

    def _refuse(self) -> None:
        transport = self.app_transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(_BODY_TOO_LARGE if self._request_seen else _HEAD_TOO_LARGE)
            transport.close()
        self.abort_later()

    def closing(self) -> None:
        """The request's answer closes the connection: what still arrives is not counted
        (aiohttp ignores it too) until the answer is out and the connection closed."""
        self._closing = True

    def abort_later(self) -> None:
        """Watch the writes: each write_timeout, the transport's buffer must have shrunk
        (only the client reading makes room), or the connection is dropped."""
        if self._write_timer is None:
            self._write_mark = self._buffered()
            loop = asyncio.get_running_loop()
            self._write_timer = loop.call_later(self._edge.write_timeout, self._write_check)

    def _write_check(self) -> None:
        self._write_timer = None
        if self._buffered() >= self._write_mark:
            self.abort()
        else:
            self.abort_later()

    def _buffered(self) -> int:
        transport = self.app_transport
        return (
            transport.get_write_buffer_size()
            if isinstance(transport, asyncio.WriteTransport)
            else 0
        )

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self._edge.forget(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.abort_later()  # the client is not keeping up: it must keep making room
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self._inner is not None:
            self._inner.resume_writing()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._write_timer = None

    def abort(self) -> None:
        """Drop the connection now, buffers included (no TLS goodbye for a deadline)."""
        self._cancel_timers()
        self._edge.forget(self)
        if self._tls_task is not None and not self._tls_task.done():
            self._tls_task.cancel()
        if self._raw is not None:
            self._raw.abort()


async def send_body(
    request: web.Request, headers: Mapping[str, str], body: bytes, write_timeout: float
) -> web.StreamResponse:
    """Write `body` in one write when small, else in pieces of the one shared bytes object,
    with back-pressure.

    A client that does not read pins a piece, not the body: a hundred stalled scrapers of a
    6 MB body cost a hundred small buffers, not 600 MB. The whole body must be out within
    write_timeout plus its size at MIN_SEND_RATE; a stall within it is the connection's
    pause deadline (Connection.pause_writing).
    """
    size = len(body)
    if size <= SINGLE_WRITE:
        return web.Response(body=body, headers=headers)
    response = web.StreamResponse(headers=headers)
    response.content_length = size
    try:
        async with asyncio.timeout(write_timeout + size / MIN_SEND_RATE):
            await response.prepare(request)
            if request.method != "HEAD":
                with memoryview(body) as view:
                    for start in range(0, size, BODY_PIECE):
                        await response.write(view[start : start + BODY_PIECE])
            await response.write_eof()
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()
    except ConnectionError:
        pass  # the client left or a deadline aborted it; aiohttp notices and moves on
    return response


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
        if kind in ("DNS", "email", "IP Address", "URI") and value in allowed:
            return True
    return False


async def listen(
    server: Callable[[], asyncio.Protocol], edge: Edge, host: str | None, port: int
) -> asyncio.Server:
    """Listen with every connection going through Connection (which also does the TLS).

    A plain asyncio server rather than an aiohttp site: aiohttp's public `web.Server` is the
    protocol factory, the Connection wraps what it makes, and no aiohttp internals are touched.
    """
    return await asyncio.get_running_loop().create_server(
        lambda: Connection(server, edge), host, port, backlog=LISTEN_BACKLOG, reuse_address=True
    )
