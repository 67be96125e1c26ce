"""The /metrics body, pre-rendered in chunks: scrapes serve cached bytes, and rendering
follows the data a chunk at a time, so no scrape holds the event loop for long.

prometheus_client renders the whole registry on every scrape (a custom Collector with 1,000
accounts: about 30 ms for collect and render, 2026-11-30 on this project's 2-core machine,
synchronously on the event loop; 10,000 accounts: 125 ms). Here the body is made of chunks
(CHUNK accounts' lines of one family each). A chunk is rendered anew only when a poll of one
of its accounts has landed (the state notes which) or one of its series went stale, and a
scrape renders the changed chunks in slices of LINES_PER_STEP accounts (under a millisecond),
yielding to the loop between them, before joining them with the ready-made bytes of the
others. So the first scrape after start or after a reload, which renders everything, takes
the loop's time in slices too. A large body is gzipped in a worker thread (zlib releases
the GIL) from deflate segments kept with each chunk, so only changed chunks are
compressed; chunks no poll has touched for a second are rendered and compressed between
scrapes (settle). Metrics the table marks `stale` leave the body once their collector's
last success is older than its stale_after, which a deadline heap notices without looking
at every account. The process and GC metrics come from prometheus_client's own collectors,
refreshed at most once a second.
"""

from __future__ import annotations

import asyncio
import gzip
import heapq
import math
import struct
import time
import zlib
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics_exposition

from .metrics import ACCOUNT_METRICS, GLOBAL_METRICS
from .state import AccountState, ExporterState
from .textformat import (
    EOF,
    NOTHING,
    OPENMETRICS,
    SOURCES,
    STALE_SLOTS,
    TEXT,
    Format,
    account_lines,
    global_text,
    header,
)

CHUNK = 256
# Accounts whose lines are rendered between two yields to the loop (~10 µs each).
LINES_PER_STEP = 64
# How old a served body may be while polls land (see Exposition's rebuild_after).
REBUILD_AFTER = 0.25
PROCESS_TTL = 1.0
GZIP_LEVEL = 6
# Bodies at least this large are compressed in a worker thread: below it, compressing on the
# loop (about 0.1 ms for 64 KiB) costs less than the hop to a thread.
THREAD_GZIP_BYTES = 64 * 1024
# A gzip member made of deflate segments (see _gzip_segments): the header gzip.compress
# writes with mtime=0, and a final empty block after the segments' sync flushes.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_FINAL_BLOCK = b"\x03\x00"
# A chunk no poll has landed in for SETTLE_QUIET seconds is rendered and compressed ahead of
# the next scrape (Exposition.settle), checked every SETTLE_PERIOD.
SETTLE_QUIET = 1.0
SETTLE_PERIOD = 1.0


class _Body:
    """One format's joined body, its gzip, and its share of the process metrics.

    The body is current while the state's version is `version` and the clock is before
    `until` (a series' stale deadline or the process metrics' refresh, whichever is first).
    """

    __slots__ = (
        "account_headers",
        "basis",
        "body",
        "built_at",
        "compressing",
        "format",
        "global_headers",
        "gzipped",
        "header_segments",
        "parts",
        "process",
        "process_until",
        "until",
        "version",
    )

    def __init__(self, fmt: Format) -> None:
        self.format = fmt
        self.account_headers = [header(m, fmt.openmetrics).encode() for m in ACCOUNT_METRICS]
        self.header_segments: list[bytes | None] = [None] * len(ACCOUNT_METRICS)
        self.global_headers = tuple(header(m, fmt.openmetrics) for m in GLOBAL_METRICS)
        self.body = b""
        # The non-empty pieces `body` was joined from, each with where its deflate segment
        # is kept: ("h", family) a header, (family, chunk) a chunk, None for the rest.
        self.parts: list[tuple[bytes, tuple[object, int] | None]] = []
        self.version = -1
        self.until = -math.inf
        # When it was built, and from which account list and reload status (see _young).
        self.built_at = -math.inf
        self.basis: tuple[object, object] = (None, None)
        # (body, its gzip), and a compression in a worker thread (body, future).
        self.gzipped: tuple[bytes, bytes] = (b"", b"")
        self.compressing: tuple[bytes, asyncio.Future[tuple[bytes, list[bytes]]]] | None = None
        self.process = b""
        self.process_until = -math.inf


class Exposition:
    """Owns the cached bodies; `render_async()` returns one, rendering only what changed."""

    def __init__(
        self,
        state: ExporterState,
        *,
        clock: Callable[[], float] = time.time,
        process_metrics: bool = True,
        rebuild_after: float = 0.0,
    ) -> None:
        """`rebuild_after`: a body younger than this is served as it is, even if polls have
        landed since (not after a reload). With hundreds of polls landing a second,
        rebuilding for every scrape would rebuild for nearly every request; a quarter of a
        second of lag is nothing to a scraper that comes every 15 s, and bounds the rebuilds
        to a few a second."""
        self._state = state
        self._rebuild_after = rebuild_after
        self._clock = clock
        self._process = CollectorRegistry(auto_describe=False)
        if process_metrics:
            ProcessCollector(registry=self._process)
            GCCollector(registry=self._process)
        self._bodies = (_Body(TEXT), _Body(OPENMETRICS))  # indexed by Format.openmetrics
        # One rendering at a time: the chunks are shared, and rendering yields to the loop.
        self._lock = asyncio.Lock()
        # The layout: the state's account dict it was made from, and per account its lines
        # (None: to render anew) and, per slot of SOURCES, until when they may be shown.
        self._accounts: object = None
        self._names: list[str] = []
        self._index: dict[str, int] = {}
        self._lines: list[tuple[str, ...] | None] = []
        self._deadlines: list[tuple[float, ...]] = []
        # Per row of ACCOUNT_METRICS: whether its family is in the body (the families of a
        # collector no account runs are left out, so such a config renders as it did before
        # they existed); per row and chunk: its bytes and their deflate segment, if made.
        self._shown: tuple[bool, ...] = ()
        self._chunks: list[list[bytes]] = []
        self._segments: list[list[bytes | None]] = []
        # Chunks to render anew; per chunk, when a poll last landed in it (for settle).
        self._dirty: set[int] = set()
        self._touched: list[float] = []
        self._stale_heap: list[tuple[float, str]] = []  # (deadline, account name)

    async def render_async(self, fmt: Format = TEXT, *, gzipped: bool = False) -> bytes:
        """The body, rendered in slices that yield to the loop; a large body's gzip made in
        a worker thread from the chunks' segments, made anew only for chunks that changed.
        Concurrent scrapes of one body share one compression."""
        cache = self._bodies[fmt.openmetrics]
        if not self._current(cache, self._clock()):
            async with self._lock:
                now = self._clock()
                if not self._current(cache, now):
                    for _ in self._steps(now):
                        await asyncio.sleep(0)
                    self._assemble(cache, now)
        body = cache.body
        if not gzipped:
            return body
        if cache.gzipped[0] is body:
            return cache.gzipped[1]
        if len(body) < THREAD_GZIP_BYTES:
            cache.gzipped = (body, _compress(body))
            return cache.gzipped[1]
        if cache.compressing is None or cache.compressing[0] is not body:
            parts = cache.parts
            known = [self._segment(cache, where) for _, where in parts]
            pieces = [piece for piece, _ in parts]
            job = asyncio.ensure_future(asyncio.to_thread(_gzip_segments, body, pieces, known))
            job.add_done_callback(lambda done: self._keep(cache, parts, done))
            cache.compressing = (body, job)
        compressed, _ = await asyncio.shield(cache.compressing[1])
        if cache.body is body:
            cache.gzipped = (body, compressed)
        return compressed

    def render(self, fmt: Format = TEXT, *, gzipped: bool = False) -> bytes:
        """render_async() in one go, on the loop: for tests and tools."""
        cache = self._bodies[fmt.openmetrics]
        now = self._clock()
        if not self._current(cache, now):
            for _ in self._steps(now):
                pass
            self._assemble(cache, now)
        if not gzipped:
            return cache.body
        if cache.gzipped[0] is not cache.body:
            cache.gzipped = (cache.body, _compress(cache.body))
        return cache.gzipped[1]

    def _current(self, cache: _Body, now: float) -> bool:
        """Whether the body may be served: nothing changed since it was built and nothing
        went stale; or it is young, and only polls have landed since (a reload, a new
        account list show at the very next scrape)."""
        state = self._state
        if cache.version == state.version and now < cache.until:
            return True
        basis = (state.accounts, state.reload)
        young = now - cache.built_at < self._rebuild_after
        return young and cache.basis[0] is basis[0] and cache.basis[1] is basis[1]

    async def settle(self) -> None:
        """Render and compress, between scrapes, the chunks whose polls have all landed.

        Polls land in list order (each account keeps its slot), so at any moment only the
        chunk or two where the slots are now change; the others were last touched a while
        ago and will not change until their slots come round again. Rendering and
        compressing those now, once per interval each, leaves a scrape only the chunks still
        changing: its time no longer grows with the share of the body that changed since
        the last scrape. Only for bodies large enough to be compressed in a worker thread."""
        while True:
            await asyncio.sleep(SETTLE_PERIOD)
            await self.settle_once()

    async def settle_once(self) -> None:
        """One pass of settle(): render the quiet dirty chunks, then compress every chunk
        without a segment that is not dirty."""
        if max(len(body.body) for body in self._bodies) < THREAD_GZIP_BYTES:
            return
        async with self._lock:
            now = self._clock()
            for _ in self._steps(now, quiet=now - SETTLE_QUIET):
                await asyncio.sleep(0)
            todo = [
                (family, chunk, piece)
                for family, chunks in enumerate(self._chunks)
                for chunk, piece in enumerate(chunks)
                if piece and self._segments[family][chunk] is None and chunk not in self._dirty
            ]
        if todo:
            made = await asyncio.to_thread(_deflate_all, [piece for *_, piece in todo])
            for (family, chunk, piece), segment in zip(todo, made, strict=True):
                self._store(family, chunk, piece, segment)

    def _segment(self, cache: _Body, where: tuple[object, int] | None) -> bytes | None:
        if where is None:
            return None
        family, index = where
        if family == "h":
            return cache.header_segments[index]
        return self._segments[family][index]  # type: ignore[index]

    def _keep(
        self,
        cache: _Body,
        parts: list[tuple[bytes, tuple[object, int] | None]],
        done: asyncio.Future[tuple[bytes, list[bytes]]],
    ) -> None:
        """Keep a compression's segments with the chunks (and headers) they are of, where
        those are still the same bytes: a chunk rendered meanwhile starts without one."""
        if cache.compressing is not None and cache.compressing[1] is done:
            cache.compressing = None
        if done.cancelled() or done.exception() is not None:
            return
        for (piece, where), segment in zip(parts, done.result()[1], strict=True):
            if where is not None and where[0] == "h":
                cache.header_segments[where[1]] = segment
            elif where is not None:
                self._store(where[0], where[1], piece, segment)  # type: ignore[arg-type]

    def _store(self, family: int, chunk: int, piece: bytes, segment: bytes) -> None:
        if chunk < len(self._chunks[family]) and self._chunks[family][chunk] is piece:
            self._segments[family][chunk] = segment

    def _steps(self, now: float, quiet: float = math.inf) -> Iterator[None]:
        """Bring the chunks up to date with the state, a few accounts' lines a step (the
        caller yields to the loop between steps); with `quiet`, only chunks no poll touched
        since then."""
        self._take(now)
        layout = self._accounts
        for chunk in sorted(self._dirty):
            if self._accounts is not layout:
                return  # laid out anew meanwhile (by render()): the next look starts over
            if chunk in self._dirty and self._touched[chunk] <= quiet:
                self._dirty.discard(chunk)
                for _ in self._render_lines(chunk, now):
                    yield
                    if self._accounts is not layout:
                        return
                self._join_chunk(chunk, now)
                yield

    def _take(self, now: float) -> None:
        """Learn what changed in the state since the last look: a new account list (lay the
        body out anew, every account to render), the accounts whose polls landed, and the
        series whose stale deadline passed."""
        state = self._state
        if state.accounts is not self._accounts:
            self._layout(now)
        for name in state.take_landed():
            index = self._index.get(name)
            if index is not None:
                self._lines[index] = None
                self._dirty.add(index // CHUNK)
                self._touched[index // CHUNK] = now
        while self._stale_heap and self._stale_heap[0][0] < now:
            index = self._index.get(heapq.heappop(self._stale_heap)[1])
            if index is not None:  # its lines are unchanged; its chunk filters them anew
                self._dirty.add(index // CHUNK)

    def _layout(self, now: float) -> None:
        """Lay the body out for a new account list. An account whose state is the same
        object as before (a reload that did not change it) keeps its lines and deadlines:
        they are neither rendered again nor freed, both of which take the loop's time."""
        accounts, before = self._state.accounts, self._accounts
        running = {name for account in accounts.values() for name in account.collectors}
        self._shown = tuple(
            metric.source in running or metric.source not in SOURCES for metric in ACCOUNT_METRICS
        )
        kept = {}
        if isinstance(before, dict):
            kept = {
                name: index
                for name, index in self._index.items()
                if accounts.get(name) is before[name]
            }
        lines, deadlines = self._lines, self._deadlines
        self._accounts = accounts
        self._names = list(accounts)
        self._index = {name: i for i, name in enumerate(self._names)}
        self._lines = [lines[kept[n]] if n in kept else None for n in self._names]
        self._deadlines = [deadlines[kept[n]] if n in kept else () for n in self._names]
        chunks = (len(accounts) + CHUNK - 1) // CHUNK
        self._chunks = [[b""] * chunks for _ in ACCOUNT_METRICS]
        self._segments = [[None] * chunks for _ in ACCOUNT_METRICS]
        self._dirty = set(range(chunks))
        self._touched = [-math.inf] * chunks  # settle may render them at once

    def _render_lines(self, chunk: int, now: float) -> Iterator[None]:
        """Render the chunk's accounts whose lines are to be made anew, LINES_PER_STEP a
        step: a whole chunk of them is ~2.5 ms, which with the joins around it was enough
        to keep a probe waiting 20 ms (bench/live.py, steady phase)."""
        accounts = self._state.accounts
        done = 0
        for index in range(chunk * CHUNK, min((chunk + 1) * CHUNK, len(self._lines))):
            if self._lines[index] is None:
                name = self._names[index]
                account = accounts[name]
                self._lines[index] = account_lines(name, account)
                self._deadlines[index] = deadlines = _deadlines(account)
                for deadline in deadlines:
                    if deadline >= now:
                        heapq.heappush(self._stale_heap, (deadline, name))
                done += 1
                if done % LINES_PER_STEP == 0:
                    yield

    def _join_chunk(self, chunk: int, now: float) -> None:
        """The chunk's lines without the rows that went stale, joined per family."""
        rows = range(chunk * CHUNK, min((chunk + 1) * CHUNK, len(self._lines)))
        lines = [self._lines[index] or NOTHING for index in rows]
        deadlines = [self._deadlines[index] for index in rows]
        fresh = [
            [row for row, until in zip(lines, deadlines, strict=True) if now <= until[slot]]
            for slot in range(len(SOURCES))
        ]
        for family, slot in enumerate(STALE_SLOTS):
            pieces = [row[family] for row in (lines if slot is None else fresh[slot])]
            self._chunks[family][chunk] = "".join(pieces).encode()
            self._segments[family][chunk] = None

    def _assemble(self, cache: _Body, now: float) -> None:
        """Join the body from the headers, the chunks, the exporter-wide metrics and the
        process metrics (refreshed at most once a PROCESS_TTL)."""
        state = self._state
        openmetrics = cache.format.openmetrics
        if now >= cache.process_until:
            if openmetrics:  # its own # EOF goes; the body ends with one
                cache.process = openmetrics_exposition.generate_latest(self._process)
                cache.process = cache.process.removesuffix(EOF)
            else:
                cache.process = generate_latest(self._process)
            cache.process_until = now + PROCESS_TTL
        parts: list[tuple[bytes, tuple[object, int] | None]] = []
        for family, shown in enumerate(self._shown):
            if shown:
                parts.append((cache.account_headers[family], ("h", family)))
                parts += [
                    (piece, (family, chunk)) for chunk, piece in enumerate(self._chunks[family])
                ]
        parts.append((global_text(state, cache.global_headers).encode(), None))
        parts.append((cache.process, None))
        if openmetrics:
            parts.append((EOF, None))
        cache.parts = [(piece, where) for piece, where in parts if piece]
        cache.body = b"".join(piece for piece, _ in cache.parts)
        cache.version = state.version
        stale = self._stale_heap[0][0] if self._stale_heap else math.inf
        cache.until = min(cache.process_until, stale)
        cache.built_at, cache.basis = now, (state.accounts, state.reload)


def _compress(body: bytes) -> bytes:
    return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)


def _deflate(piece: bytes) -> bytes:
    """A raw deflate segment that ends on a byte boundary (sync flush) and refers to nothing
    before it, so segments compressed apart concatenate into one valid deflate stream."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(piece) + compressor.flush(zlib.Z_SYNC_FLUSH)


def _deflate_all(pieces: list[bytes]) -> list[bytes]:
    return [_deflate(piece) for piece in pieces]


def _gzip_segments(
    body: bytes, pieces: list[bytes], known: list[bytes | None]
) -> tuple[bytes, list[bytes]]:
    """One ordinary gzip member (RFC 1952) of `body`, the concatenation of `pieces`: its
    deflate stream is the pieces' segments (those `known`, the rest compressed here) and a
    final empty block; the CRC is of the whole body. Any gzip reader reads it as one stream;
    segments cost ~3 % in size against compressing the body whole (10,000 accounts, level 6).
    Runs in a worker thread: zlib releases the GIL."""
    segments = [
        segment if segment is not None else _deflate(piece)
        for piece, segment in zip(pieces, known, strict=True)
    ]
    trailer = struct.pack("<II", zlib.crc32(body), len(body) & 0xFFFFFFFF)
    return b"".join((_GZIP_HEADER, *segments, _FINAL_BLOCK, trailer)), segments


def _deadlines(account: AccountState) -> tuple[float, ...]:
    """Per slot of SOURCES, until when that collector's rows may be shown (-inf: never)."""
    collectors = account.collectors
    deadlines: list[float] = []
    for source in SOURCES:
        collector = collectors.get(source)
        success = collector.last_success if collector is not None else None
        if success is None:
            deadlines.append(-math.inf)
        else:
            deadlines.append(success.started_at + collector.stale_after)  # type: ignore[union-attr]
    return tuple(deadlines)
