"""Hostile clients against the real exporter process: its RSS, and what the clients see.

    .venv/bin/python bench/hostile.py             # every attack, about 12 minutes on 2 cores
    .venv/bin/python bench/hostile.py --quick     # a smaller subset, about 1 minute
    .venv/bin/python bench/hostile.py --only 1,D2 # chosen attacks (numbers as in the table)

Each attack starts a fresh `.venv/bin/koodrive-exporter` (JSON logs to a file in a temp
dir), samples its VmRSS every 50 ms while the attack runs, probes /-/healthy every 100 ms
from 127.0.0.1 on a new connection (TLS where the port is TLS), and prints one Markdown
table row; the whole table, the version and the commit come at the end.

Attacks 1-7 are on the HTTP edge and the config reload; D1-D3 are upstream answers that are
hostile (a tiny fixed-answer server on 127.0.0.1, this script run with --serve-fixed, serves
one body for every path); D4-D7 and R1-R2 are the second hostile probe's findings on the
edge. Only the command line and HTTP are used, never the exporter's internals, so the same
file runs against any tree (copy it into the other tree's bench/ and run it there with that
tree's .venv); the default --web.max-connections is read from `--help`.

Bounds: everything binds and targets 127.0.0.0/8 (attackers use 127.0.0.2); every loop is
bounded in count and in time (connections wait at most 25 s for the server, a reload at
most 30 s, floods and streams stop after a fixed time and count, probes and samples stop
after a fixed count); an exporter whose RSS passes 2 GiB is killed; a watchdog alarm ends the
run after 25 minutes (4 with --quick); the fixed-answer server exits by itself after 10
minutes. Every process started here gets SIGTERM, then SIGKILL after 10 s, also when the
script fails or is itself interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import bcrypt
import trustme
from aiohttp import web
from suite import cpu_seconds, free_port, rss_bytes, write_config

ROOT = Path(__file__).resolve().parent.parent
EXPORTER = str(ROOT / ".venv" / "bin" / "koodrive-exporter")
ATTACKER = "127.0.0.2"
# Floods that reconnect in a loop have addresses of their own: their TIME_WAIT ports do not
# take the ephemeral ports of the other attacks' clients.
RELOADER = "127.0.0.3"
SCRAPER = "127.0.0.4"
MIB = 1024 * 1024
RSS_CAP = 2 * 1024 * MIB
SAMPLE_PERIOD = 0.05
PROBE_PERIOD = 0.1
PROBE_TIMEOUT = 5.0
MAX_SAMPLES = 6000  # 300 s of sampling
MAX_PROBES = 3000
HOLD_LIMIT = 25.0  # how long a hostile connection waits for the server to close it
RELOAD_TIMEOUT = 30.0
EARLY = 9.0  # closed this soon after connecting: not by the 10 s head deadline
CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
FIXED_LIFETIME = 600.0  # the fixed-answer server exits by itself after this


# --- processes ---------------------------------------------------------------------------


@dataclass
class Target:
    """A running exporter: how to reach it, and what happened when it was stopped."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    tls: ssl.SSLContext | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"


def rss(pid: int) -> int | None:
    try:
        return rss_bytes(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None


@contextlib.contextmanager
def process(*args: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start `args` with output to `log`; SIGTERM then SIGKILL on the way out, always."""
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> str:
    """'' when the process exited by itself on SIGTERM within 10 s, else what happened."""
    if proc.poll() is not None:
        return "" if proc.returncode in (0, -signal.SIGTERM) else f"exit {proc.returncode}"
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "did not exit within 10 s of SIGTERM (killed)"
    took = time.monotonic() - started
    return "" if code == 0 and took < 5 else f"SIGTERM: exit {code} after {took:.1f} s"


def get(url: str, context: ssl.SSLContext | None, timeout: float = PROBE_TIMEOUT) -> int:
    """Status of one GET on a new connection (raises OSError / HTTPException)."""
    host_port, path = url.split("://", 1)[1].split("/", 1)
    host, port = host_port.rsplit(":", 1)
    conn: http.client.HTTPConnection = (
        http.client.HTTPSConnection(host, int(port), timeout=timeout, context=context)
        if context is not None
        else http.client.HTTPConnection(host, int(port), timeout=timeout)
    )
    try:
        conn.request("GET", "/" + path, headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def wait_ok(url: str, proc: subprocess.Popen[bytes], context: ssl.SSLContext | None,
            timeout: float) -> float:  # fmt: skip
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:2]} exited with {proc.returncode}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if get(url, context, timeout=5) == 200:
                return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f}s")


@contextlib.contextmanager
def exporter(directory: Path, name: str, *args: str, tls: ssl.SSLContext | None = None,
             ready: bool = False, ready_timeout: float = 60.0,
             expected: tuple[str, ...] = ()) -> Iterator[Target]:  # fmt: skip
    port = free_port()
    log = directory / f"exporter-{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [EXPORTER, f"--web.listen-address=127.0.0.1:{port}", "--log.format=json", *args],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    target = Target(proc, port, log, tls)
    try:
        path = "/-/ready" if ready else "/-/healthy"
        wait_ok(target.base + path, proc, tls, ready_timeout)
        yield target
    finally:
        note = stop(proc)
        if note:
            target.notes.append(note)
        target.notes.extend(log_trouble(log, expected))


def log_trouble(log: Path, expected: tuple[str, ...] = ()) -> list[str]:
    """Tracebacks and error events in an exporter's log, but for the `expected` events."""
    errors: Counter[str] = Counter()
    tracebacks = 0
    for line in log.read_text(errors="replace").splitlines():
        if "Traceback" in line:
            tracebacks += 1
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if (
            isinstance(event, dict)
            and event.get("level") in ("error", "critical")
            and event.get("event") not in expected
        ):
            errors[str(event.get("event"))] += 1
    notes = [f"log: {count} x {name}" for name, count in errors.items()]
    if tracebacks:
        notes.append(f"log: {tracebacks} Traceback(s)")
    return notes


# --- measurement -------------------------------------------------------------------------


class Sampler(threading.Thread):
    """VmRSS every 50 ms; kills the process past RSS_CAP."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.peak = 0
        self.killed = False
        self._done = threading.Event()

    def run(self) -> None:
        for _ in range(MAX_SAMPLES):
            value = rss(self.proc.pid)
            if value is None:
                return
            self.peak = max(self.peak, value)
            if value > RSS_CAP:
                self.killed = True
                self.proc.kill()
                return
            if self._done.wait(SAMPLE_PERIOD):
                return

    def finish(self) -> int:
        self._done.set()
        self.join(5)
        return self.peak


class Prober(threading.Thread):
    """GET /-/healthy every 100 ms on a new connection; latencies and failures."""

    def __init__(self, target: Target) -> None:
        super().__init__(daemon=True)
        self.url = target.base + "/-/healthy"
        self.context = target.tls
        self.latencies: list[float] = []
        self.failed = 0
        self.failures: Counter[str] = Counter()
        self._done = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        for _ in range(MAX_PROBES):
            started = time.monotonic()
            try:
                status = get(self.url, self.context)
                ok = status == 200
                if not ok:
                    self.failures[str(status)] += 1
            except (OSError, http.client.HTTPException) as exc:
                ok = False
                self.failures[type(exc).__name__] += 1
            took = time.monotonic() - started
            self.latencies.append(took)
            self.failed += not ok
            next_at = max(next_at + PROBE_PERIOD, time.monotonic())
            if self._done.wait(next_at - time.monotonic()):
                return

    def finish(self) -> str:
        self._done.set()
        self.join(PROBE_TIMEOUT + 1)
        if not self.latencies:
            return "no probes"
        p50 = statistics.median(self.latencies) * 1000
        worst = max(self.latencies) * 1000
        why = ", ".join(f"{n} x {k}" for k, n in self.failures.most_common())
        failed = f", **{self.failed} failed: {why}**" if self.failed else ", 0 failed"
        return f"probes {len(self.latencies)}: p50 {p50:.0f} ms, max {worst:.0f} ms{failed}"


@dataclass
class Row:
    number: str
    attack: str
    scale: str
    before: int | None
    peak: int | None
    after: int | None
    seen: str

    def markdown(self) -> str:
        def mib(value: int | None) -> str:
            return "n/a" if not value else f"{value / MIB:.1f}"

        return (
            f"| {self.number}. {self.attack} | {self.scale} | {mib(self.before)} | "
            f"{mib(self.peak)} | {mib(self.after)} | {self.seen} |"
        )


def measure(number: str, attack: str, scale: str, target: Target,
            body: Callable[[Target], Awaitable[str]], settle: float,
            probe: bool = True) -> Row:  # fmt: skip
    """Before, during (peak, probes) and `settle` seconds after `body` runs."""
    for _ in range(3):  # warm the paths the probes take
        with contextlib.suppress(OSError, http.client.HTTPException):
            get(target.base + "/-/healthy", target.tls)
    time.sleep(1.0)
    before = rss(target.proc.pid)
    sampler, prober = Sampler(target.proc), Prober(target)
    sampler.start()
    if probe:
        prober.start()
    try:
        seen = asyncio.run(body(target))
    finally:
        peak = sampler.finish()
        probes = prober.finish() if probe else ""
    if sampler.killed:
        seen += f"; **killed at RSS {peak / MIB:.0f} MiB**"
    time.sleep(settle)
    after = rss(target.proc.pid)
    if probes:
        seen += f"; {probes}"
    return Row(number, attack, scale, before, peak, after, seen)


def spread(values: list[float]) -> str:
    if not values:
        return "none"
    return f"{min(values):.1f}/{statistics.median(values):.1f}/{max(values):.1f} s (min/p50/max)"


Sender = Callable[[socket.socket], Awaitable[None]]


# --- raw connections ---------------------------------------------------------------------


@dataclass
class Outcome:
    connected: bool = False
    connected_at: float = 0.0
    closed_after: float | None = None  # seconds from connect (or send) to EOF/reset
    how: str = "open"  # eof, reset, open (still open at the limit), failed
    data: bytes = b""


def raw_socket(source: str, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    return sock


async def hold(port: int, gate: asyncio.Semaphore, limit: float,
               send: Sender | None = None,
               source: str = ATTACKER) -> Outcome:  # fmt: skip
    """Connect, optionally send, then read until the server closes or `limit` passes."""
    outcome = Outcome()
    loop = asyncio.get_running_loop()
    async with gate:
        sock = raw_socket(source)
        try:
            async with asyncio.timeout(5):
                await loop.sock_connect(sock, ("127.0.0.1", port))
        except (OSError, TimeoutError):
            sock.close()
            outcome.how = "failed"
            return outcome
    outcome.connected = True
    started = outcome.connected_at = time.monotonic()
    sender = asyncio.create_task(send(sock)) if send is not None else None
    try:
        # Raw recv, not a StreamReader: that raises a recorded reset before handing over
        # what arrived just ahead of it (a 431 followed by an RST, say).
        async with asyncio.timeout(limit):
            while chunk := await loop.sock_recv(sock, 65536):
                if len(outcome.data) < 1 << 20:
                    outcome.data += chunk
            outcome.how = "eof"
    except (ConnectionResetError, BrokenPipeError):
        outcome.how = "reset"
    except TimeoutError:
        outcome.how = "open"
    if outcome.how != "open":
        outcome.closed_after = time.monotonic() - started
    if sender is not None:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await sender
    sock.close()
    return outcome


async def hold_many(port: int, count: int,
                    send: Sender | None = None,
                    limit: float = HOLD_LIMIT) -> tuple[list[Outcome], float]:  # fmt: skip
    """`count` connections from ATTACKER (100 connecting at a time); outcomes, open time."""
    gate = asyncio.Semaphore(100)
    started = time.monotonic()
    outcomes = await asyncio.gather(*(hold(port, gate, limit, send) for _ in range(count)))
    opened = max((o.connected_at for o in outcomes if o.connected), default=started) - started
    return list(outcomes), opened


def kinds(outcomes: list[Outcome]) -> str:
    counts = Counter(o.how for o in outcomes)
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


# --- attacks -----------------------------------------------------------------------------


def stalled_tls(count: int, hello: bool) -> Callable[[Target], Awaitable[str]]:
    async def attack(target: Target) -> str:
        async def send(sock: socket.socket) -> None:
            await asyncio.get_running_loop().sock_sendall(sock, CLIENT_HELLO_START + os.urandom(39))

        outcomes, opened = await hold_many(target.port, count, send if hello else None)
        closed = [o.closed_after for o in outcomes if o.closed_after is not None]
        # The head deadline is 10 s: what closed well before it was refused or evicted at
        # the cap (the flood comes from one address, so mostly refused at once).
        early = [c for c in closed if c < EARLY]
        at_once = [c for c in early if c < 1.0]
        later = [c for c in closed if c >= EARLY]
        still_open = sum(o.how == "open" for o in outcomes)
        failed = sum(o.how == "failed" for o in outcomes)
        seen = (
            f"opened in {opened:.1f} s; {len(early)} closed at the cap before the deadline "
            f"({len(at_once)} within 1 s, max {max(early, default=0):.1f} s), "
            f"{len(later)} closed by the deadline after {spread(later)}"
        )
        if still_open:
            seen += f"; **{still_open} still open after {HOLD_LIMIT:.0f} s**"
        if failed:
            seen += f"; {failed} connects failed"
        return seen + f" [{kinds(outcomes)}]"

    return attack


def partial_heads(count: int) -> Callable[[Target], Awaitable[str]]:
    async def send(sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        for index in range(98):
            await loop.sock_sendall(sock, f"X-H{index}: ".encode() + b"a" * 8000 + b"\r\n")

    async def attack(target: Target) -> str:
        outcomes, _ = await hold_many(target.port, count, send, limit=20)
        got: Counter[str] = Counter()
        for o in outcomes:
            if o.data:
                got[o.data.split(b"\r\n", 1)[0].decode(errors="replace")] += 1
            else:
                got[f"nothing ({o.how})"] += 1
        closed = [o.closed_after for o in outcomes if o.closed_after is not None]
        answers = ", ".join(f"{n} x {line}" for line, n in got.most_common())
        return f"{answers}; closed after {spread(closed)}"

    return attack


def sidestep(count: int, payload: bytes) -> Callable[[Target], Awaitable[str]]:
    async def send(sock: socket.socket) -> None:
        await asyncio.get_running_loop().sock_sendall(sock, payload)

    async def attack(target: Target) -> str:
        outcomes, _ = await hold_many(target.port, count, send)
        closed = [o.closed_after for o in outcomes if o.closed_after is not None]
        answered = sum(o.data.count(b"HTTP/1.1 200") for o in outcomes)
        other = sum(o.data.count(b"HTTP/1.1 ") for o in outcomes) - answered
        seen = f"closed after {spread(closed)} [{kinds(outcomes)}]; {answered} x 200"
        if other:
            seen += f", **{other} other responses**"
        return seen

    return attack


def never_reading(count: int) -> Callable[[Target], Awaitable[str]]:
    async def attack(target: Target) -> str:
        loop = asyncio.get_running_loop()
        socks: list[socket.socket] = []
        scrapes: list[tuple[float, int | str]] = []
        try:
            for _ in range(count):
                sock = raw_socket(ATTACKER, rcvbuf=4096)
                socks.append(sock)
                async with asyncio.timeout(5):
                    await loop.sock_connect(sock, ("127.0.0.1", target.port))
                    await loop.sock_sendall(sock, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            started = time.monotonic()
            await asyncio.sleep(3)
            during: Counter[str] = Counter()
            for sock in socks:
                try:
                    during[sock.recv(12, socket.MSG_PEEK).decode(errors="replace") or "EOF"] += 1
                except BlockingIOError:
                    during["nothing yet"] += 1
                except OSError as exc:
                    during[type(exc).__name__] += 1
            # A normal scrape (gzip, as Prometheus asks) every 0.5 s until it is 200 again.
            timeout = aiohttp.ClientTimeout(total=15)
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
                while time.monotonic() - started < HOLD_LIMIT:
                    at = time.monotonic() - started
                    try:
                        async with session.get(target.base + "/metrics") as response:
                            await response.read()
                            scrapes.append((at, response.status))
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        scrapes.append((at, type(exc).__name__))
                    if scrapes[-1][1] == 200 and at > 1:
                        break
                    await asyncio.sleep(0.5)
            await asyncio.sleep(max(0.0, 12 - (time.monotonic() - started)))
            after: Counter[str] = Counter()
            for sock in socks:
                first, total, end = b"", 0, "open"
                for _ in range(10_000):
                    try:
                        chunk = sock.recv(65536)
                    except BlockingIOError:
                        break
                    except OSError:
                        end = "reset"
                        break
                    if not chunk:
                        end = "EOF"
                        break
                    first, total = first or chunk[:12], total + len(chunk)
                status = first.decode(errors="replace")[9:12] or "-"
                after[f"{status} ({end})"] += 1
        finally:
            for sock in socks:
                sock.close()
        first_503 = next((at for at, s in scrapes if s == 503), None)
        ok_at = next((at for at, s in scrapes if s == 200), None)
        scrape_note = ", ".join(f"{n} x {s}" for s, n in Counter(s for _, s in scrapes).items())
        return (
            "at +3 s: " + ", ".join(f"{n} x {k.strip()}" for k, n in during.most_common())
            + "; read after: " + ", ".join(f"{n} x {k}" for k, n in after.most_common())
            + f"; normal scrape during: {scrape_note}"
            + (f" (first 503 at +{first_503:.1f} s)" if first_503 is not None else "")
            + (f", 200 again at +{ok_at:.1f} s" if ok_at is not None else ", **never 200**")
        )  # fmt: skip

    return attack


def password_flood(count: int, password: str, window: float) -> Callable[[Target], Awaitable[str]]:
    """`count` concurrent guessers, each sending distinct wrong passwords back to back for
    `window` seconds (a one-shot wave of 429s is over in ~0.2 s, before any login could be
    timed); correct logins from 127.0.0.1 at +0.5 s and then every second."""

    def basic(secret: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"alice:{secret}".encode()).decode()}

    async def attack(target: Target) -> str:
        url = target.base + "/metrics"
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(local_addr=(ATTACKER, 0), limit=0)
        first_wave: Counter[int | str] = Counter()
        statuses: Counter[int | str] = Counter()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as attacker:
            started = time.monotonic()

            async def guess(worker: int) -> None:
                for attempt in range(200):
                    try:
                        headers = basic(f"wrong-{worker}-{attempt}")
                        async with attacker.get(url, headers=headers) as response:
                            await response.read()
                            status: int | str = response.status
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        status = type(exc).__name__
                    statuses[status] += 1
                    if attempt == 0:
                        first_wave[status] += 1
                    if time.monotonic() - started > window:
                        return

            flood = [asyncio.create_task(guess(worker)) for worker in range(count)]
            logins: list[str] = []
            at = 0.5
            while at < window:
                await asyncio.sleep(max(0.0, at - (time.monotonic() - started)))
                login_at = time.monotonic()
                async with aiohttp.ClientSession(timeout=timeout) as friend:
                    try:
                        async with friend.get(url, headers=basic(password)) as response:
                            await response.read()
                            code: int | str = response.status
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        code = type(exc).__name__
                logins.append(f"{code} in {(time.monotonic() - login_at) * 1000:.0f} ms")
                at += 1.0
            await asyncio.gather(*flood)
            took = time.monotonic() - started

        def counts(counter: Counter[int | str]) -> str:
            return ", ".join(f"{n} x {s}" for s, n in counter.most_common())

        return (
            f"correct logins at +0.5/1.5/... s: {', '.join(logins)}; first wave: "
            f"{counts(first_wave)}; all {sum(statuses.values()):,} guesses in {took:.1f} s: "
            f"{counts(statuses)}"
        )

    return attack


def alias_bomb() -> str:
    lines = ['lol1: &lol1 ["' + '", "'.join(["lol"] * 9) + '"]']
    for level in range(2, 10):
        lines.append(f"lol{level}: &lol{level} [" + ", ".join([f"*lol{level - 1}"] * 9) + "]")
    lines.append("accounts: *lol9")
    return "\n".join(lines) + "\n"


async def post_reload(target: Target) -> tuple[str, float]:
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=RELOAD_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(target.base + "/-/reload") as response,
        ):
            body = (await response.text()).strip().splitlines()
            first = body[0][:80] if body else ""
            return f"{response.status} `{first}`", time.monotonic() - started
    except TimeoutError:
        return f"**hung (no answer in {RELOAD_TIMEOUT:.0f} s)**", time.monotonic() - started
    except aiohttp.ClientError as exc:
        return f"**{type(exc).__name__}**", time.monotonic() - started


def reload_bomb(config: Path) -> Callable[[Target], Awaitable[str]]:
    async def attack(target: Target) -> str:
        await asyncio.to_thread(config.write_text, alias_bomb())
        status, took = await post_reload(target)
        return f"reload: {status} after {took:.2f} s"

    return attack


def replace_by_fifo(config: Path) -> None:
    config.unlink()
    os.mkfifo(config)


def restore(config: Path, text: str) -> None:
    config.unlink()
    config.write_text(text)


def reload_fifo(config: Path, good: str) -> Callable[[Target], Awaitable[str]]:
    async def attack(target: Target) -> str:
        await asyncio.to_thread(replace_by_fifo, config)
        status, took = await post_reload(target)
        seen = f"reload: {status} after {took:.2f} s"
        # Unblock a reader stuck in open(): a writer that opens and closes gives it EOF.
        try:
            fd = os.open(config, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            pass  # nobody is reading the FIFO
        else:
            os.close(fd)
            seen += "; (a reader was still blocked on the FIFO; unblocked with EOF)"
        await asyncio.sleep(0.5)
        await asyncio.to_thread(restore, config, good)
        again, again_took = await post_reload(target)
        return seen + f"; then reload of the good file: {again} after {again_took:.2f} s"

    return attack


# --- hostile answers and the second probe's findings -------------------------------------


def max_connections() -> str:
    """The tree's default --web.max-connections, as its `--help` says."""
    try:
        text = subprocess.run([EXPORTER, "--help"], capture_output=True, text=True, timeout=30,
                              check=False).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    option = r"^\s+--web\.max-connections MAX_CONNECTIONS\s[^(]*\(default:\s*(\d+)\)"
    match = re.search(option, text, re.M)
    return match.group(1) if match else "?"


def serve_fixed(body_file: str, status: int, port: int) -> None:
    """Answer every request on 127.0.0.1:`port` with `status` and the bytes of `body_file`
    as JSON, for FIXED_LIFETIME seconds at most (this script run with --serve-fixed)."""
    body = Path(body_file).read_bytes()

    async def answer(_: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/json")

    async def run() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            await asyncio.sleep(FIXED_LIFETIME)
        finally:
            await runner.cleanup()

    asyncio.run(run())


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


@contextlib.contextmanager
def fixed_upstream(directory: Path, name: str, status: int, body: bytes) -> Iterator[str]:
    """A KooDrive stand-in answering `status` and `body` to everything; yields its URL."""
    body_file = directory / f"answer-{name}.json"
    body_file.write_bytes(body)
    port = free_port()
    with process(sys.executable, str(Path(__file__).resolve()), "--serve-fixed", str(body_file),
                 "--status", str(status), "--port", str(port),
                 log=directory / f"upstream-{name}.log") as proc:  # fmt: skip
        wait_listening(port, proc, 30)
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def simulated(directory: Path, accounts: int, name: str) -> Iterator[str]:
    """The project's simulator for `accounts` accounts; yields its URL."""
    sim_port = free_port()
    sim_config = write_config(directory, accounts, "http://127.0.0.1:1", "60s")
    with process(EXPORTER, "simulate", "--listen", f"127.0.0.1:{sim_port}", "--config",
                 str(sim_config), "--log.level=error", "--log.format=json",
                 log=directory / f"simulator-{name}.log") as sim:  # fmt: skip
        wait_ok(f"http://127.0.0.1:{sim_port}/-/sim/accounts", sim, None, 120)
        yield f"http://127.0.0.1:{sim_port}"


def log_events(log: Path) -> list[tuple[int, dict]]:
    """(length in bytes, event) of every JSON line of an exporter's log."""
    events = []
    with log.open("rb") as lines:
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append((len(line), event))
    return events


def size(count: float) -> str:
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count:,.0f} B"


async def exchange(port: int, request: bytes, source: str = ATTACKER,
                   limit: float = 10.0) -> tuple[bytes, int, str]:  # fmt: skip
    """Send `request` on a new connection from `source`, read until the server closes or
    `limit` passes: (first bytes of the answer, bytes received, how it ended)."""
    loop = asyncio.get_running_loop()
    sock = raw_socket(source)
    head, total, how = b"", 0, "open"
    try:
        async with asyncio.timeout(limit):
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, request)
            while chunk := await loop.sock_recv(sock, 65536):
                head = head if len(head) >= 64 else (head + chunk)[:64]
                total += len(chunk)
            how = "eof"
    except TimeoutError:
        how = "open"
    except OSError as exc:
        how = type(exc).__name__
    finally:
        sock.close()
    return head, total, how


def status_of(head: bytes, how: str) -> str:
    line = head.split(b"\r\n", 1)[0]
    return line[9:12].decode(errors="replace") if line.startswith(b"HTTP/") else f"none ({how})"


def counted(counter: Counter[str] | Counter[int | str]) -> str:
    return ", ".join(f"{n} x {k}" for k, n in counter.most_common()) or "none"


def poll_error_series(text: str) -> str:
    """koodrive_poll_errors_total by reason: accounts that counted one, and the sum."""
    accounts: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.startswith("koodrive_poll_errors_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            if float(value) > 0:
                match = re.search(r'reason="([^"]*)"', labels)
                reason = match.group(1) if match else "?"
                accounts[reason] += 1
                total[reason] += int(float(value))
    return (
        ", ".join(
            f"reason={k} ({accounts[k]} accounts, {total[k]} errors)" for k in sorted(accounts)
        )
        or "none"
    )


def lasting(
    seconds: float, attack: Callable[[Target], Awaitable[str]]
) -> Callable[[Target], Awaitable[str]]:
    """`attack`, taking at least `seconds`: short attacks still get a few probes."""

    async def run(target: Target) -> str:
        started = time.monotonic()
        seen = await attack(target)
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
        return seen

    return run


def hostile_answer(landings: int = 0) -> Callable[[Target], Awaitable[str]]:
    """What the sinks show once every account polled the hostile answer: /metrics (the
    poll error reasons), the poll log lines, GET /; then `landings` concurrent GET / in
    three rounds (the RSS peak is theirs)."""

    async def attack(target: Target) -> str:
        timeout = aiohttp.ClientTimeout(total=60)
        seen: dict[str, tuple[int | str, bytes]] = {}
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def fetch(path: str) -> tuple[int | str, bytes]:
                try:
                    async with session.get(target.base + path) as response:
                        return response.status, await response.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    return type(exc).__name__, b""

            for path in ("/metrics", "/"):
                seen[path] = await fetch(path)
            crowd: Counter[int | str] = Counter()
            started = time.monotonic()
            for _ in range(3 if landings else 0):
                for status, _ in await asyncio.gather(*(fetch("/") for _ in range(landings))):
                    crowd[status] += 1
            crowd_took = time.monotonic() - started
        events = await asyncio.to_thread(log_events, target.log)
        polls = [(length, event) for length, event in events if event.get("event") == "poll"]
        reasons = Counter(str(event.get("reason", "success")) for _, event in polls)
        internal = sum(event.get("event") == "poll_internal_error" for _, event in events)
        metrics_status, metrics = seen["/metrics"]
        page_status, page = seen["/"]
        line = max((length for length, _ in polls), default=0)
        text = (
            f"/metrics {metrics_status}, poll errors: "
            f"{poll_error_series(metrics.decode(errors='replace'))}; poll log lines: "
            f"{counted(reasons)}, longest {size(line)}; {internal} x poll_internal_error; "
            f"GET / {page_status}, {size(len(page))}"
        )
        if landings:
            text += (
                f"; {landings} x GET / at once, 3 rounds in {crowd_took:.1f} s: {counted(crowd)}"
            )
        return text

    return attack


def undecodable_auth(count: int) -> Callable[[Target], Awaitable[str]]:
    """`count` requests whose Authorization header is `Basic é` in raw UTF-8 bytes."""
    request = (
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic \xc3\xa9\r\n"
        b"Connection: close\r\n\r\n"
    )

    async def attack(target: Target) -> str:
        written = target.log.stat().st_size
        gate = asyncio.Semaphore(25)
        statuses: Counter[str] = Counter()

        async def one() -> None:
            async with gate:
                head, _, how = await exchange(target.port, request)
            statuses[status_of(head, how)] += 1

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(count)))
        took = time.monotonic() - started
        await asyncio.sleep(0.5)
        written = target.log.stat().st_size - written
        return f"{count} requests in {took:.1f} s: {counted(statuses)}; log written {size(written)}"

    return attack


async def reload_client(port: int, source: str, stop_at: float,
                        statuses: Counter[str]) -> None:  # fmt: skip
    """POST /-/reload back to back on a keep-alive connection until `stop_at`; reconnects
    (after 0.1 s) when the server drops the connection or refuses it."""
    request = b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    for _ in range(10_000):
        if time.monotonic() >= stop_at:
            return
        writer: asyncio.StreamWriter | None = None
        stage = "connect failed"
        try:
            async with asyncio.timeout(stop_at - time.monotonic()):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=(source, 0)
                )
                for _ in range(100_000):
                    stage = "dropped before an answer"
                    writer.write(request)
                    status = await reader.readline()
                    if not status:
                        raise ConnectionResetError
                    length, close = 0, False
                    while (line := await reader.readline()) not in (b"\r\n", b""):
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                        if name.strip().lower() == b"connection":
                            close = b"close" in value.lower()
                    await reader.readexactly(length)
                    statuses[status[9:12].decode(errors="replace")] += 1
                    if close:
                        break
        except TimeoutError:
            statuses[
                "waiting at the end" if stage != "connect failed" else "connecting at the end"
            ] += 1
            return
        except (OSError, asyncio.IncompleteReadError, ValueError):
            statuses[stage] += 1
            await asyncio.sleep(0.1)
        finally:
            if writer is not None:
                writer.close()


def reload_flood(clients: int, seconds: float, source: str) -> Callable[[Target], Awaitable[str]]:
    async def attack(target: Target) -> str:
        before = await asyncio.to_thread(log_events, target.log)
        statuses: Counter[str] = Counter()
        stop_at = time.monotonic() + seconds
        await asyncio.gather(
            *(reload_client(target.port, source, stop_at, statuses) for _ in range(clients))
        )
        await asyncio.sleep(1.0)
        after = await asyncio.to_thread(log_events, target.log)
        logged = Counter(str(e.get("event")) for _, e in after[len(before) :])
        reloads = ", ".join(f"{logged[k]} x {k}" for k in ("reloaded", "reload_failed"))
        return (
            f"{clients} clients for {seconds:.0f} s: {counted(statuses)}; log: {reloads} "
            f"({sum(logged.values())} lines)"
        )

    return attack


def blank_stream(count: int, seconds: float) -> Callable[[Target], Awaitable[str]]:
    """`count` connections, each one complete GET /-/healthy, 0.3 s later CRLFs as fast as
    the server takes them, for `seconds` (at most 4 GiB a connection)."""
    chunk = b"\r\n" * 8192
    bound = 4 * 1024 * MIB // len(chunk)

    async def attack(target: Target) -> str:
        sent = [0] * count

        def sender(index: int) -> Sender:
            async def send(sock: socket.socket) -> None:
                loop = asyncio.get_running_loop()
                await loop.sock_sendall(sock, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
                await asyncio.sleep(0.3)  # its answer first: the CRLFs follow a finished request
                stop_at = time.monotonic() + seconds
                for _ in range(bound):
                    if time.monotonic() >= stop_at:
                        return
                    await loop.sock_sendall(sock, chunk)
                    sent[index] += len(chunk)

            return send

        gate = asyncio.Semaphore(100)
        cpu, started = cpu_seconds(target.proc.pid), time.monotonic()
        outcomes = await asyncio.gather(
            *(hold(target.port, gate, seconds + 1, sender(i)) for i in range(count))
        )
        wall = time.monotonic() - started
        with contextlib.suppress(OSError):
            cpu = cpu_seconds(target.proc.pid) - cpu
        closed = [o.closed_after for o in outcomes if o.closed_after is not None]
        answered = sum(o.data.count(b"HTTP/1.1 200") for o in outcomes)
        other = Counter(
            status.decode(errors="replace")
            for o in outcomes
            for status in re.findall(rb"HTTP/1\.1 (\d\d\d [^\r\n]*)", o.data)
            if not status.startswith(b"200")
        )
        ordered = sorted(sent)
        return (
            f"sent per connection {size(ordered[0])}/{size(statistics.median(ordered))}/"
            f"{size(ordered[-1])} (min/p50/max, loopback buffers hold up to ~10 MB of it); "
            f"{answered} x 200, other: {counted(other)}; closed after {spread(closed)} "
            f"[{kinds(outcomes)}]; exporter CPU {cpu:.2f} s in {wall:.1f} s "
            f"({cpu / wall * 100:.0f} % of a core)"
        )

    return attack


def reload_bodies(sizes: tuple[int, ...]) -> Callable[[Target], Awaitable[str]]:
    """POST /-/reload with a body of each size, head and body sent together."""

    async def attack(target: Target) -> str:
        seen = []
        for length in sizes:
            request = (
                b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                + f"Content-Length: {length}\r\nConnection: close\r\n\r\n".encode()
                + b"x" * length
            )
            head, _, how = await exchange(target.port, request, limit=RELOAD_TIMEOUT)
            seen.append(f"{length // 1024} KiB: {status_of(head, how)}")
        return "; ".join(seen)

    return attack


def landing_crowd(clients: int, seconds: float) -> Callable[[Target], Awaitable[str]]:
    """`clients` concurrent clients, each GET / back to back (new connection each) for
    `seconds` (at most 200 each)."""
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

    async def attack(target: Target) -> str:
        statuses: Counter[str] = Counter()
        took: list[float] = []
        sizes: list[int] = []
        stop_at = time.monotonic() + seconds

        async def client() -> None:
            for _ in range(200):
                if time.monotonic() >= stop_at:
                    return
                started = time.monotonic()
                head, total, how = await exchange(target.port, request, SCRAPER, limit=30)
                took.append(time.monotonic() - started)
                statuses[status_of(head, how)] += 1
                sizes.append(total)

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.monotonic() - started
        p50 = statistics.median(took) * 1000 if took else float("nan")
        return (
            f"{len(took):,} GET / in {wall:.1f} s: {counted(statuses)}; page "
            f"{size(statistics.median(sizes) if sizes else 0)}; GET / p50 {p50:.0f} ms, "
            f"max {max(took, default=0) * 1000:.0f} ms"
        )

    return attack


# --- the run -----------------------------------------------------------------------------


@dataclass
class Plan:
    quick: bool
    only: set[str]
    directory: Path
    rows: list[Row] = field(default_factory=list)

    @property
    def settle(self) -> float:
        return 3.0 if self.quick else 12.0

    def wants(self, number: str) -> bool:
        if self.only:
            return number in self.only or number.rstrip("ab") in self.only
        return not self.quick or number in {"1", "4", "6", "7a"}

    def add(self, row: Row, target: Target) -> None:
        if target.notes:
            row.seen += "; **" + "; ".join(target.notes) + "**"
        self.rows.append(row)
        print(row.markdown(), flush=True)


def tls_files(directory: Path) -> ssl.SSLContext:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(directory / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(directory / "server.crt"))
    (directory / "web-tls.yml").write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def run_connection_attacks(plan: Plan) -> None:
    d = plan.directory
    quick = plan.quick
    n_tls = 1200 if quick else 3000
    n_head = 100 if quick else 500
    context = tls_files(d)
    web_tls = f"--web.config.file={d / 'web-tls.yml'}"
    for number, hello, label in (("1", False, "TLS handshake never started"),
                                 ("2", True, "TLS handshake stalled after 50 bytes")):  # fmt: skip
        if plan.wants(number):
            with exporter(d, number, "--demo", web_tls, tls=context) as target:
                row = measure(number, label, f"{n_tls:,} conns, cap {max_connections()}", target,
                              stalled_tls(n_tls, hello), plan.settle)  # fmt: skip
            plan.add(row, target)
    if plan.wants("4"):
        with exporter(d, "4", "--demo") as target:
            row = measure("4", "Partial heads, 98 x 8 KB lines", f"{n_head:,} conns", target,
                          partial_heads(n_head), plan.settle)  # fmt: skip
        plan.add(row, target)
    payloads = (
        ("5a", "Blank lines, then a partial head", b"\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n"),
        ("5b", "Complete GET /-/healthy + partial pipelined",
         b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n"),
    )  # fmt: skip
    for number, label, payload in payloads:
        if plan.wants(number):
            with exporter(d, number, "--demo") as target:
                row = measure(number, label, f"{n_head:,} conns", target,
                              sidestep(n_head, payload), plan.settle)  # fmt: skip
            plan.add(row, target)


def run_scrape_attack(plan: Plan) -> None:
    if not plan.wants("3"):
        return
    d = plan.directory
    accounts, clients = (1000, 60) if plan.quick else (10_000, 300)
    sim_port = free_port()
    sim_config = write_config(d, accounts, "http://127.0.0.1:1", "60s")
    with process(EXPORTER, "simulate", "--listen", f"127.0.0.1:{sim_port}", "--config",
                 str(sim_config), "--log.level=error", "--log.format=json",
                 log=d / "simulator-3.log") as sim:  # fmt: skip
        wait_ok(f"http://127.0.0.1:{sim_port}/-/sim/accounts", sim, None, 120)
        config = write_config(d, accounts, f"http://127.0.0.1:{sim_port}", "60s")
        started = time.monotonic()
        with exporter(d, "3", f"--config.file={config}", ready=True,
                      ready_timeout=120) as target:  # fmt: skip
            ready = time.monotonic() - started
            with contextlib.suppress(OSError, http.client.HTTPException):
                get(target.base + "/metrics", None, timeout=30)  # render once, as Prometheus
            row = measure("3", "Scrapers that never read (SO_RCVBUF 4 KiB)",
                          f"{clients} clients, {accounts:,} accounts, max-requests 40", target,
                          never_reading(clients), plan.settle)  # fmt: skip
            row.seen = f"ready after {ready:.0f} s; " + row.seen
        plan.add(row, target)


def run_password_flood(plan: Plan) -> None:
    if not plan.wants("6"):
        return
    d = plan.directory
    password = "correct horse"  # noqa: S105 - the benchmark's own throwaway user
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(10)).decode()
    web = d / "web-auth.yml"
    web.write_text(f"basic_auth_users:\n  alice: {hashed}\n")
    count = 100 if plan.quick else 400
    with exporter(d, "6", "--demo", f"--web.config.file={web}") as target:
        window = 2.0 if plan.quick else 3.0
        row = measure("6", "Password flood, bcrypt cost 10",
                      f"{count} concurrent guessers for {window:.0f} s", target,
                      password_flood(count, password, window), plan.settle)  # fmt: skip
    plan.add(row, target)


def run_reload_attacks(plan: Plan) -> None:
    d = plan.directory
    for number, label in (("7a", "Reload of a YAML alias bomb (9^9)"),
                          ("7b", "Reload of a FIFO in place of the config")):  # fmt: skip
        if not plan.wants(number):
            continue
        sim_port = free_port()
        sim_config = write_config(d, 1, "http://127.0.0.1:1", "60s")
        with process(EXPORTER, "simulate", "--listen", f"127.0.0.1:{sim_port}", "--config",
                     str(sim_config), "--log.level=error", "--log.format=json",
                     log=d / f"simulator-{number}.log") as sim:  # fmt: skip
            wait_ok(f"http://127.0.0.1:{sim_port}/-/sim/accounts", sim, None, 60)
            config = write_config(d, 1, f"http://127.0.0.1:{sim_port}", "60s")
            good = config.read_text()
            with exporter(d, number, f"--config.file={config}", "--web.enable-lifecycle",
                          ready=True, expected=("reload_failed",)) as target:  # fmt: skip
                body = reload_bomb(config) if number == "7a" else reload_fifo(config, good)
                row = measure(number, label, "1 account, --web.enable-lifecycle", target, body,
                              plan.settle)  # fmt: skip
            plan.add(row, target)


def run_answer_attacks(plan: Plan) -> None:
    d = plan.directory
    digits = {"code": "0", "data": {"totalAllocation": 1, "totalCapacity": 1,
                                    "totalUsed": "9" * 5000}}  # fmt: skip
    cases = (
        ("D1", "Upstream `totalUsed` of 5,000 digits (past int()'s 4,300)", 200, 1,
         json.dumps(digits).encode(), 0),
        ("D2", "Upstream `code` of 900 KB", 401, 100,
         json.dumps({"code": "X" * 900_000}).encode(), 4),
        ("D3", "Upstream `code` with a lone surrogate", 200, 1, b'{"code":"E\\ud800"}', 0),
    )  # fmt: skip
    for number, label, status, accounts, body, landings in cases:
        if not plan.wants(number):
            continue
        with fixed_upstream(d, number, status, body) as url:
            config = write_config(d, accounts, url, "60s")
            with exporter(d, number, f"--config.file={config}", ready=True,
                          ready_timeout=120) as target:  # fmt: skip
                scale = f"{accounts} account(s), answer {status} of {size(len(body))}"
                row = measure(number, label, scale, target, lasting(3.0, hostile_answer(landings)),
                              plan.settle)  # fmt: skip
            plan.add(row, target)


def run_edge_findings(plan: Plan) -> None:
    d = plan.directory
    if plan.wants("D4"):
        hashed = bcrypt.hashpw(b"correct horse", bcrypt.gensalt(10)).decode()
        web_file = d / "web-auth-d4.yml"
        web_file.write_text(f"basic_auth_users:\n  alice: {hashed}\n")
        with exporter(d, "D4", "--demo", f"--web.config.file={web_file}") as target:
            row = measure("D4", "`Authorization: Basic é` (raw UTF-8 bytes)",
                          "500 requests, 25 at a time, basic auth on", target,
                          lasting(3.0, undecodable_auth(500)), plan.settle)  # fmt: skip
        plan.add(row, target)
    lifecycle = (
        ("D5", "Reload flood, 1,100 looping POST /-/reload", 10_000,
         f"1,100 clients for 20 s, 10,000 accounts, cap {max_connections()}",
         reload_flood(1100, 20.0, RELOADER)),
        ("D7", "POST /-/reload with a body", 1, "40, 60 and 80 KiB bodies, 1 account",
         lasting(3.0, reload_bodies((40 * 1024, 60 * 1024, 80 * 1024)))),
        ("R2", "Reload flood, a few looping POST /-/reload", 1, "4 clients for 30 s, 1 account",
         reload_flood(4, 30.0, RELOADER)),
    )  # fmt: skip
    for number, label, accounts, scale, body in lifecycle:
        if not plan.wants(number):
            continue
        with simulated(d, accounts, number) as url:
            config = write_config(d, accounts, url, "60s")
            with exporter(d, number, f"--config.file={config}", "--web.enable-lifecycle",
                          ready=True, ready_timeout=120) as target:  # fmt: skip
                row = measure(number, label, scale, target, body, plan.settle)
            plan.add(row, target)
    if plan.wants("D6"):
        with exporter(d, "D6", "--demo") as target:
            row = measure("D6", "One complete GET, then CRLF streamed without end",
                          "16 conns for 20 s", target, lasting(5.0, blank_stream(16, 20.0)),
                          plan.settle)  # fmt: skip
        plan.add(row, target)
    if plan.wants("R1"):
        with simulated(d, 10_000, "R1") as url:
            config = write_config(d, 10_000, url, "60s")
            with exporter(d, "R1", f"--config.file={config}", ready=True,
                          ready_timeout=120) as target:  # fmt: skip
                row = measure("R1", "GET / from 200 concurrent clients",
                              "200 clients looping for 10 s, 10,000 accounts", target,
                              landing_crowd(200, 10.0), plan.settle)  # fmt: skip
            plan.add(row, target)


def describe() -> str:
    def out(*args: str) -> str:
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=30,
                                  cwd=ROOT, check=False).stdout.strip()  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    version = out(EXPORTER, "--version")
    commit = out("git", "rev-parse", "--short", "HEAD")
    dirty = out("git", "status", "--porcelain", "--untracked-files=no")
    state = f" + {len(dirty.splitlines())} modified files" if dirty else ""
    return f"{version}, commit {commit}{state}, {os.cpu_count()} cores"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller scale, attacks 1, 4, 6, 7a")
    parser.add_argument("--only", default="", help="comma-separated attack numbers, e.g. 1,5,7")
    parser.add_argument("--keep-logs", action="store_true", help="print the temp dir, keep it")
    parser.add_argument("--serve-fixed", help=argparse.SUPPRESS)  # the fixed-answer server
    parser.add_argument("--status", type=int, default=200, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fixed:
        serve_fixed(args.serve_fixed, args.status, args.port)
        return 0

    def bail(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through every finally: processes stop

    signal.signal(signal.SIGTERM, bail)
    signal.signal(signal.SIGALRM, bail)
    signal.alarm(240 if args.quick else 1500)
    started = time.monotonic()
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    tmp = tempfile.mkdtemp(prefix="hostile-")
    if args.keep_logs:
        print(f"logs in {tmp}", file=sys.stderr)
    try:
        plan = Plan(args.quick, only, Path(tmp))
        header = (
            "| attack | scale | RSS before (MiB) | RSS peak (MiB) | RSS after (MiB) | "
            "what the clients saw |\n|---|---|---:|---:|---:|---|"
        )
        print(header, flush=True)
        try:
            run_connection_attacks(plan)
            run_scrape_attack(plan)
            run_password_flood(plan)
            run_reload_attacks(plan)
            run_answer_attacks(plan)
            run_edge_findings(plan)
        finally:
            signal.alarm(0)
            print(f"\nHostile-client bench, {describe()}, {time.monotonic() - started:.0f} s; "
                  f"RSS after = {plan.settle:.0f} s after the attack ended\n")  # fmt: skip
            print(header)
            for row in plan.rows:
                print(row.markdown())
    finally:
        if not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
