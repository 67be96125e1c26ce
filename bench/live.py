"""The live benchmark (issue 14): the scrape path measured while polls land at production rates.

    .venv/bin/python bench/live.py                         # all three scenarios, ~5 minutes
    .venv/bin/python bench/live.py --scenarios a,b --seconds 45
    .venv/bin/python bench/live.py --accounts 2000 --seconds 30 --runs 1   # a quick check
    .venv/bin/python bench/live.py --scenarios p --phase-accounts 2000 --runs 1
    bench/run --live [flags]                                # the same, after bench/run's setup

Scenarios, one row each:

  a  10,000 accounts at a 60 s interval; two Prometheus-like scrapers (an HA pair) scrape
     /metrics with gzip every 15 s, while a prober asks /-/healthy every 5 ms.
  b  the same at a 20 s interval (three times the polls per second).
  c  1,000 accounts at a 5 s interval: /metrics throughput with wrk (plain and gzip) while
     the polls land, against the pre-rendered ceiling (bench/peers.py `ceiling` serving the
     same body bytes, measured in the same run, interleaved, with the exporter still polling
     in the background); then CPU per poll against a bare aiohttp GET+JSON loop polling the
     same simulator at the same rate.
  p  10,000 accounts at a 20 s interval (--phase-accounts, --phase-interval): the longest
     /-/healthy answer in each phase of the exporter's life (start-up, first scrapes, steady,
     POST /-/reload, SIGHUP), one row per phase, over --runs fresh simulator + exporter pairs
     (about 50 s each at 10,000 accounts). Not in the default a,b,c: it would add about
     two and a half minutes to a five-minute run. See phases_run.

The exporter polls `python -m exporter simulate` in another process, both started exactly as
bench/suite.py starts them. The prober runs in a process of its own (blocking http.client on
one keep-alive connection, nothing else in that process), the scrapers in another (aiohttp), so
a slow answer is the exporter's stall, not the client's. Statistics cover a window that opens
once the second round of polls (each account's slot, 0.5-1.5 intervals after its first poll)
lands at the full rate; the first scrape after ready (a full render) is reported apart, in the
notes.

Everything binds 127.0.0.1, every loop is bounded in count and time, every process is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import gzip
import http.client
import math
import multiprocessing
import os
import platform
import random
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import suite
from suite import (
    PY,
    ROOT,
    bare_loop,
    cpu_per_poll,
    cpu_seconds,
    exporter_with,
    free_port,
    polls_done,
    process,
    summarize,
    wait_http,
    wrk,
)

# What Prometheus 3 sends when it scrapes (2.x sends the same minus the escaping parameters).
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/3.0.0",
    "X-Prometheus-Scrape-Timeout-Seconds": "10",
}
SCRAPE_TIMEOUT = 10.0
# name: (accounts, interval in seconds); --accounts and --throughput-accounts override.
# --phase-accounts and --phase-interval override p's.
SCENARIOS = {"a": (10_000, 60.0), "b": (10_000, 20.0), "c": (1_000, 5.0), "p": (10_000, 20.0)}
SPAWN_MARGIN = 1.5  # seconds for the client processes to start before their first request
POLL_TICK = 0.1  # the exporter's poll tick (exporter/core/poller.py TICK)
# Scenario p: its rows in order, and its fixed timings in seconds.
PHASES = (
    "start-up",
    "first scrape, plain",
    "first scrape, gzip",
    "steady",
    "POST /-/reload",
    "SIGHUP",
)
AFTER_SCRAPE = 1.0  # a first scrape's window ends this long after its answer
AFTER_RELOAD = 2.0  # a reload's window ends this long after the scrape that follows it
STEADY_SCRAPE_EVERY = 2.0
SIGHUP_WAIT = 3.0  # before the first scrape that looks for the account SIGHUP added
# gzip scrapes at most, a second apart, until the new account shows: the reload parses for
# ~3 s, then its first poll falls in the startup window (up to 10 s at 10,000 accounts).
SIGHUP_LOOKS = 15
READY_TIMEOUT = 120.0
PHASES_BOUND = 900.0  # a phases run's prober stops after this long whatever happens

# suite.write_config gives every interval but 1 s a 10 s timeout, which the exporter refuses
# above a shorter interval (5 s here). Wrap it (exporter_with looks it up at call time) rather
# than copy exporter_with; a `timeout` parameter in suite.write_config would make this go away.
_suite_write_config = suite.write_config


def _write_config(directory: Path, accounts: int, endpoint: str, interval: str) -> Path:
    path = _suite_write_config(directory, accounts, endpoint, interval)
    seconds = float(interval.removesuffix("s"))
    if seconds < 10:
        text = path.read_text().replace("  timeout: 10s\n", f"  timeout: {min(seconds, 2):g}s\n")
        path.write_text(text)
    return path


suite.write_config = _write_config


# --- the client processes ---------------------------------------------------------------


def probe(conn: http.client.HTTPConnection) -> bool:
    """One GET /-/healthy on a keep-alive connection: whether it answered 200."""
    conn.request("GET", "/-/healthy")
    response = conn.getresponse()
    response.read()
    return response.status == 200


def timed_probe(
    conn: http.client.HTTPConnection, reconnect: Callable[[], http.client.HTTPConnection]
) -> tuple[http.client.HTTPConnection, float, float, bool]:
    """One probe: (connection, monotonic start, seconds, ok). A closed keep-alive connection
    is replaced by `reconnect()` and asked again; the time counts."""
    started = time.monotonic()
    try:
        ok = probe(conn)
    except (OSError, http.client.HTTPException):
        conn.close()
        try:
            conn = reconnect()
            ok = probe(conn)
        except (OSError, http.client.HTTPException):
            ok = False
    return conn, started, time.monotonic() - started, ok


def probe_loop(url: str, start_at: float, stop_at: float, every: float) -> list[tuple]:
    """Run in its own process: GET /-/healthy every `every` s on one keep-alive connection.

    Returns (monotonic start, seconds, ok) per probe. A late probe does not cause a burst:
    the next one is due `every` after it. At most (stop_at - start_at) / every + 1 probes.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80

    def connect() -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(host, port, timeout=SCRAPE_TIMEOUT)
        conn.connect()
        return conn

    # Connect just before the first probe: the exporter closes a connection that sends no
    # request head for 10 s, and the prober may start long before its window.
    time.sleep(max(0.0, start_at - 0.2 - time.monotonic()))
    conn = connect()
    results: list[tuple] = []
    due = start_at
    for _ in range(int((stop_at - start_at) / every) + 1):
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        if due >= stop_at:
            break
        conn, started, took, ok = timed_probe(conn, connect)
        ended = started + took
        results.append((started, took, ok))
        due = max(due + every, ended)
    conn.close()
    return results


def phases_probe_loop(port: int, stop_file: str, every: float, bound: float) -> list[tuple]:
    """Run in its own process for a whole phases run: GET /-/healthy every `every` s on one
    keep-alive connection, from the moment the exporter's port accepts one until `stop_file`
    exists (or `bound` s have passed).

    It starts before the exporter does, so start-up is seen from the first moment a client
    could be served: a refused connection (no listener yet) is retried after `every` s and not
    recorded, a probe that waits on an accepting listener is. Returns (monotonic start,
    seconds, ok) per probe, like probe_loop; at most bound / every + 1 iterations.
    """
    stop_at = time.monotonic() + bound
    conn: http.client.HTTPConnection | None = None

    results: list[tuple] = []
    due = time.monotonic()
    for _ in range(int(bound / every) + 1):
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        if os.path.exists(stop_file) or time.monotonic() >= stop_at:
            break
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SCRAPE_TIMEOUT)
            try:
                conn.connect()
            except ConnectionRefusedError:
                conn = None
                due = time.monotonic() + every
                continue
        conn, started, took, ok = timed_probe(
            conn, lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=SCRAPE_TIMEOUT)
        )
        ended = started + took
        results.append((started, took, ok))
        due = max(due + every, ended)
    if conn is not None:
        conn.close()
    return results


def scrape_loop(
    url: str, start_at: float, stop_at: float, interval: float, offsets: list[float]
) -> list[tuple]:
    """Run in its own process: one Prometheus-like scraper per offset, each scraping every
    `interval` s from `start_at + offset` until `stop_at` (own connection, gzip, 10 s timeout).

    Returns (scraper, monotonic start, seconds, body bytes, ok) per scrape. The body is not
    decompressed: the time is the exporter's answer, transfer included.
    """

    async def scraper(index: int, offset: float, results: list[tuple]) -> None:
        connector = aiohttp.TCPConnector(limit=1)
        timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False
        ) as session:
            for n in range(int((stop_at - start_at) / interval) + 1):
                due = start_at + offset + n * interval
                if due >= stop_at:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                started = time.monotonic()
                size, ok = 0, False
                try:
                    async with session.get(url, headers=PROMETHEUS_HEADERS) as response:
                        size = len(await response.read())
                        ok = response.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    pass
                results.append((index, started, time.monotonic() - started, size, ok))

    async def run() -> list[tuple]:
        results: list[tuple] = []
        await asyncio.gather(*(scraper(i, o, results) for i, o in enumerate(offsets)))
        return sorted(results, key=lambda row: row[1])

    return asyncio.run(run())


# --- helpers --------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))]


def f1(value: float) -> str:
    return "—" if value != value else f"{value:.1f}"


def accepted(info: dict) -> tuple[float, int]:
    return time.monotonic(), asyncio.run(polls_done(info["sim"]))


def rate(before: tuple[float, int], after: tuple[float, int]) -> float:
    return (after[1] - before[1]) / (after[0] - before[0])


def warmup_for(interval: float, override: float | None) -> float:
    """Seconds after ready until polls land at the full rate: the second round starts 0.5
    interval after the first round, which ends about when the exporter turns ready."""
    return override if override is not None else 0.5 * interval + 2.0


def paced_bare_loop(sim_url: str, per_second: float, seconds: float) -> tuple[float, float]:
    """(µs of CPU per request, requests/s) of a bare aiohttp loop polling at `per_second`,
    released in batches on the exporter's 100 ms tick: GET, read JSON, nothing else.
    The same requests as suite.bare_loop, which runs flat out instead."""

    async def run() -> tuple[float, float]:
        url = f"{sim_url}/koodrive/ose/v1/space/usage/overview"
        done = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

            async def one() -> None:
                nonlocal done
                now = time.gmtime(time.time() - 2)
                headers = {
                    "X-User-Id": "100000",
                    "Authorization": "Bearer+bench-0",
                    "X-Date": time.strftime("%Y%m%dT%H%M%SZ", now),
                    "X-Traceid": base64.b32encode(os.urandom(40)).decode()[:58],
                }
                async with session.get(url, headers=headers) as response:
                    await response.json()
                done += 1

            tasks: set[asyncio.Task[None]] = set()
            owed = 0.0
            started_cpu, started = time.process_time(), time.monotonic()
            for tick in range(round(seconds / POLL_TICK)):
                await asyncio.sleep(max(0.0, started + tick * POLL_TICK - time.monotonic()))
                owed += per_second * POLL_TICK
                for _ in range(int(owed)):
                    task = asyncio.create_task(one())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                owed -= int(owed)
            await asyncio.gather(*tasks)
            cpu, wall = time.process_time() - started_cpu, time.monotonic() - started
            return (cpu / done * 1e6 if done else float("nan")), done / wall

    return asyncio.run(run())


def request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    timeout: float = SCRAPE_TIMEOUT,
) -> tuple[float, float, int, bytes]:
    """(monotonic start, seconds, status, body) of one request on a connection of its own;
    status 0 if it failed. Blocking: the phases' prober is another process, so this one may."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request(method, path, body=b"" if method == "POST" else None, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        status = response.status
    except (OSError, http.client.HTTPException):
        body, status = b"", 0
    finally:
        conn.close()
    return started, time.monotonic() - started, status, body


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float) -> float:
    """The monotonic time /-/ready first answered 200 (asked every 20 ms, failing early if
    `proc` exits). suite.wait_http does the same with a curl process a try, which forks 50
    times a second on the two cores whose stalls start-up measures."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        _, seconds, status, _ = request(port, "GET", "/-/ready", timeout=5)
        if status == 200:
            return time.monotonic()
        if time.monotonic() >= deadline:
            break
        time.sleep(max(0.0, 0.02 - seconds))
    raise RuntimeError(f"127.0.0.1:{port}/-/ready did not answer 200 within {timeout}s")


def rewrite_config(config: Path, accounts: int, sim_url: str, interval: str) -> None:
    """Make `config` list `accounts` accounts, written by suite.write_config (the same shape
    as the others) and renamed over it, so a reload never reads a half-written file."""
    scratch = config.parent / "phases-next"
    scratch.mkdir(exist_ok=True)
    fresh = suite.write_config(scratch, accounts, sim_url, interval)
    os.replace(fresh, config)


@contextmanager
def simulator(accounts: int, interval: str, directory: Path) -> Iterator[str]:
    """The simulator as suite.exporter_with starts it; yields its URL."""
    sim_port = free_port()
    sim_config = suite.write_config(directory, accounts, "http://127.0.0.1:1", interval)
    sim_url = f"http://127.0.0.1:{sim_port}"
    with process(PY, "-m", "exporter", "simulate", "--listen", f"127.0.0.1:{sim_port}",
                 "--config", str(sim_config), "--log.level", "error") as sim:  # fmt: skip
        wait_http(f"{sim_url}/-/sim/accounts", timeout=READY_TIMEOUT, proc=sim)
        yield sim_url


@contextmanager
def lifecycle_exporter(config: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """The exporter as suite.exporter_with starts it, plus --web.enable-lifecycle (POST
    /-/reload); it does not wait for ready, which is scenario p's first phase."""
    with process(PY, "-m", "exporter", f"--config.file={config}",
                 f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
                 "--log.level=error") as exp:  # fmt: skip
        yield exp


# --- scenarios ------------------------------------------------------------------------------


def scrape_scenario(
    name: str, accounts: int, interval: float, args: argparse.Namespace, directory: Path
) -> str:
    """One row: HA scrapers and a health prober over a window of polls landing."""
    every = args.probe_ms / 1000
    rng = random.Random(f"{name}-{accounts}")  # fixed, different phases per scenario
    offsets = sorted(rng.uniform(0, args.scrape_interval) for _ in range(args.scrapers))
    ctx = multiprocessing.get_context("spawn")
    with (
        exporter_with(accounts, f"{interval:g}s", directory) as info,
        concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool,
    ):
        ready_at = time.monotonic()
        start_at = ready_at + SPAWN_MARGIN
        window_start = ready_at + max(warmup_for(interval, args.warmup), SPAWN_MARGIN)
        window_end = window_start + args.seconds
        url = info["url"]
        # Scrapers from ready on (Prometheus would be scraping all along, and the first scrape
        # renders everything); the prober only over the window.
        scrapes_f = pool.submit(
            scrape_loop, f"{url}/metrics", start_at, window_end, args.scrape_interval, offsets
        )
        probes_f = pool.submit(probe_loop, url, window_start, window_end, every)
        time.sleep(max(0.0, window_start - time.monotonic()))
        polls_before, cpu_before = accepted(info), cpu_seconds(info["pid"])
        time.sleep(max(0.0, window_end - time.monotonic()))
        polls_after, cpu_after = accepted(info), cpu_seconds(info["pid"])
        scrapes = scrapes_f.result(timeout=args.seconds + 120)
        probes = probes_f.result(timeout=args.seconds + 120)
    landed = rate(polls_before, polls_after)
    cpu_share = (cpu_after - cpu_before) / (polls_after[0] - polls_before[0])

    first = [s for s in scrapes if s[1] < window_start]
    inside = [s for s in scrapes if window_start <= s[1] < window_end]
    ok = [s[2] * 1000 for s in inside if s[4]]
    failed = sum(1 for s in inside if not s[4])
    good_probes = [p for p in probes if p[2]]
    healthy = [p[1] * 1000 for p in good_probes]
    spans = [(s[1], s[1] + s[2]) for s in inside]
    # A probe overlapping a scrape (waiting behind it, or sent while it ran) counts as during.
    overlaps = [any(p[0] <= b and p[0] + p[1] >= a for a, b in spans) for p in good_probes]
    during = [p[1] * 1000 for p, hit in zip(good_probes, overlaps, strict=True) if hit]
    outside = [p[1] * 1000 for p, hit in zip(good_probes, overlaps, strict=True) if not hit]
    sizes = [s[3] for s in inside if s[4]]
    notes = [
        f"{len(ok)} scrapes by {args.scrapers} scraper(s) every {args.scrape_interval:g} s",
        f"gzip body {statistics.median(sizes) / 1024:.0f} KiB" if sizes else "no body",
        f"first scrape after ready {first[0][2] * 1000:.0f} ms" if first else "",
        f"{len(healthy):,} probes, {sum(1 for v in healthy if v > 10)} over 10 ms, "
        f"{sum(1 for v in healthy if v > 20)} over 20 ms",
        f"/-/healthy max {f1(max(during, default=float('nan')))} ms during scrapes, "
        f"{f1(max(outside, default=float('nan')))} ms outside",
        f"expected {accounts / interval:.0f} polls/s",
        f"exporter CPU {cpu_share * 100:.0f} % of a core",
        f"ready in {info['ready']:.1f} s",
    ]
    if failed or len(probes) != len(good_probes):
        notes.append(f"FAILED: {failed} scrapes, {len(probes) - len(good_probes)} probes")
    scenario = f"{accounts:,} accounts at {interval:g} s"
    return (
        f"| {scenario} | {f1(pct(ok, 50))} / {f1(pct(ok, 99))} / {f1(max(ok, default=math.nan))}"
        f" | {f1(pct(healthy, 99))} / {f1(max(healthy, default=math.nan))} | {landed:.0f} | "
        f"{'; '.join(n for n in notes if n)} |"
    )


def throughput_scenario(
    accounts: int, interval: float, args: argparse.Namespace, directory: Path
) -> tuple[list[str], list[str]]:
    """Rows in suite.py's format (without the pushgateway column) and facts."""
    rows: list[str] = []
    facts: list[str] = []
    gzip = ("Accept-Encoding: gzip",)
    with exporter_with(accounts, f"{interval:g}s", directory) as info:
        time.sleep(warmup_for(interval, args.warmup))
        metrics = f"{info['url']}/metrics"
        plain_body, gzip_body = directory / "live-body", directory / "live-body.gz"
        subprocess.run(["curl", "-s", "-o", str(plain_body), metrics], check=True)
        subprocess.run(["curl", "-s", "-H", gzip[0], "-o", str(gzip_body), metrics], check=True)
        ports = {"plain": free_port(), "gzip": free_port()}
        peers = str(ROOT / "bench" / "peers.py")
        with (
            process(PY, peers, "ceiling", "--body", str(plain_body), "--port", str(ports["plain"])),
            process(PY, peers, "ceiling", "--body", str(gzip_body), "--port", str(ports["gzip"])),
        ):
            for port in ports.values():
                wait_http(f"http://127.0.0.1:{port}/metrics", timeout=60)
            # (label, url, headers); the gzip ceiling serves the exporter's gzip bytes as they
            # are (without a Content-Encoding header: to wrk, the same bytes on the wire).
            targets = {
                "ours": (metrics, ()),
                "ours-gz": (metrics, gzip),
                "ceiling": (f"http://127.0.0.1:{ports['plain']}/metrics", ()),
                "ceiling-gz": (f"http://127.0.0.1:{ports['gzip']}/metrics", gzip),
            }
            results: dict[str, list[dict]] = {key: [] for key in targets}
            landed: list[float] = []
            for _ in range(args.runs):  # interleaved: drift on a shared machine hits all alike
                for key, (url, headers) in targets.items():
                    before = accepted(info)
                    results[key].append(wrk(url, args.wrk_seconds, headers=headers))
                    if key.startswith("ours"):
                        landed.append(rate(before, accepted(info)))
        medians = {key: summarize(values) for key, values in results.items()}
        for key, label, ceiling in (
            ("ours", "koodrive-exporter, polls landing", "ceiling"),
            ("ours-gz", "koodrive-exporter, gzip, polls landing", "ceiling-gz"),
            ("ceiling", "pre-rendered bytes (aiohttp ceiling)", "ceiling"),
            ("ceiling-gz", "pre-rendered gzip bytes (aiohttp ceiling)", "ceiling-gz"),
        ):
            result = medians[key]
            rows.append(
                f"| {accounts:,} | {label} | {result['rps']:,.0f} | "
                f"{result['rps'] / medians[ceiling]['rps']:.2f} | {suite.ms(result['p50'])} | "
                f"{suite.ms(result['p99'])} |"
            )
        facts.append(
            f"{accounts:,} accounts at a {interval:g} s interval: polls landed at "
            f"{statistics.median(landed):.0f}/s (median over the exporter's wrk runs; expected "
            f"{accounts / interval:.0f}/s); body {plain_body.stat().st_size / 1024:.0f} KiB plain, "
            f"{gzip_body.stat().st_size / 1024:.0f} KiB gzip"
        )
        per_poll, share = cpu_per_poll(info, args.cpu_seconds)
        paced, paced_rate = paced_bare_loop(info["sim"], accounts / interval, args.cpu_seconds)
        flat_out = bare_loop(info["sim"], args.bare_requests)
        facts.append(
            f"CPU per poll, {accounts:,} accounts at a {interval:g} s interval (no scrapes, "
            f"{args.cpu_seconds:g} s): koodrive-exporter {per_poll:.0f} µs "
            f"({share * 100:.1f} % of a core) vs a bare aiohttp GET+JSON loop at the same rate "
            f"({paced_rate:.0f}/s, batched on 100 ms ticks) {paced:.0f} µs "
            f"({per_poll / paced:.2f}x); flat out (suite.bare_loop) {flat_out:.0f} µs"
        )
    return rows, facts


def account_shown(body: bytes, index: int) -> bool:
    """Whether a /metrics body (gzip or plain) has a series of suite.write_config's account
    number `index` (0-based)."""
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    return f'account="tenant-{index:05d}"'.encode() in body


def phases_run(
    accounts: int, interval: float, args: argparse.Namespace, directory: Path
) -> tuple[dict[str, list[tuple]], dict[str, dict[str, float]], list[str]]:
    """One run of scenario p on a fresh simulator and exporter: per phase, the probes sent in
    its window; per phase, facts to report (a format for its median over runs: value); and
    remarks (what went wrong starts with FAILED). The windows, one after the other, never
    overlapping:

      start-up             exporter exec to the first 200 from /-/ready
      first scrape, plain  one GET /metrics right after ready (a full render); from just
                           before it until AFTER_SCRAPE after its answer
      first scrape, gzip   the same with Prometheus' headers (a full compression)
      steady               --steady-seconds of gzip scrapes every STEADY_SCRAPE_EVERY s, from
                           when the second round of polls lands (warmup_for); the settle pass
                           (every second, in the background) runs in it, so it is settle's
                           phase too
      POST /-/reload       one account more in the config file, POST /-/reload, its answer,
                           one gzip scrape; until AFTER_RELOAD after the scrape's answer. The
                           first scrape after a reload is in this window, not a phase of its
                           own; its latency is in the notes
      SIGHUP               one account more, SIGHUP, SIGHUP_WAIT s, then gzip scrapes a second
                           apart until one has the new account; until AFTER_RELOAD after it

    The prober (phases_probe_loop) is one process for the whole run, started before the
    exporter; the phases slice its record by send time (time.monotonic is system-wide on
    Linux). The simulator knows the two accounts the reloads add, so they poll as well as the
    others and a reload costs what an operator's would.
    """
    every = args.probe_ms / 1000
    spec = f"{interval:g}s"
    windows: dict[str, tuple[float, float]] = {}
    facts: dict[str, dict[str, float]] = {phase: {} for phase in PHASES}
    remarks: list[str] = []
    stop_file = directory / "phases-stop"
    stop_file.unlink(missing_ok=True)

    def until(moment: float) -> None:
        time.sleep(max(0.0, moment - time.monotonic()))

    def scrape(port: int, what: str, headers: dict[str, str] | None) -> tuple[float, bytes]:
        """(seconds, body) of one GET /metrics, a failure noted as `what`."""
        _, took, status, body = request(port, "GET", "/metrics", headers)
        if status != 200:
            remarks.append(f"FAILED: {what} answered {status or 'nothing'}")
        return took, body

    ctx = multiprocessing.get_context("spawn")
    with (
        simulator(accounts + 2, spec, directory) as sim_url,
        concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool,
    ):
        pool.submit(time.monotonic).result(timeout=READY_TIMEOUT)  # the prober's process is up
        port = free_port()
        config = suite.write_config(directory, accounts, sim_url, spec)
        probes_f = pool.submit(phases_probe_loop, port, str(stop_file), every, PHASES_BOUND)
        try:
            exec_at = time.monotonic()
            with lifecycle_exporter(config, port) as exporter:
                ready_at = wait_ready(port, exporter, READY_TIMEOUT)
                windows["start-up"] = (exec_at, ready_at)
                facts["start-up"]["ready after {:.1f} s"] = ready_at - exec_at

                for phase, headers in (
                    ("first scrape, plain", None),
                    ("first scrape, gzip", PROMETHEUS_HEADERS),
                ):
                    start = time.monotonic()
                    took, body = scrape(port, phase, headers)
                    windows[phase] = (start, time.monotonic() + AFTER_SCRAPE)
                    facts[phase]["scrape {:.0f} ms"] = took * 1000
                    facts[phase]["body {:.0f} KiB"] = len(body) / 1024
                    until(windows[phase][1])

                start = max(time.monotonic(), ready_at + warmup_for(interval, args.warmup))
                until(start)
                polls_before = accepted({"sim": sim_url})
                took_ms = []
                for n in range(max(1, math.ceil(args.steady_seconds / STEADY_SCRAPE_EVERY))):
                    until(start + n * STEADY_SCRAPE_EVERY)
                    took_ms.append(scrape(port, "a steady scrape", PROMETHEUS_HEADERS)[0] * 1000)
                until(start + args.steady_seconds)
                windows["steady"] = (start, time.monotonic())
                facts["steady"]["polls landed {:.0f}/s"] = rate(
                    polls_before, accepted({"sim": sim_url})
                )
                facts["steady"]["gzip scrapes up to {:.0f} ms"] = max(took_ms)

                rewrite_config(config, accounts + 1, sim_url, spec)
                start = time.monotonic()
                _, took, status, text = request(port, "POST", "/-/reload", timeout=60)
                if status != 200:
                    remarks.append(f"FAILED: POST /-/reload answered {status}: {text[:80]!r}")
                scraped, body = scrape(port, "the scrape after POST /-/reload", PROMETHEUS_HEADERS)
                windows["POST /-/reload"] = (start, time.monotonic() + AFTER_RELOAD)
                facts["POST /-/reload"]["POST answered in {:.0f} ms"] = took * 1000
                facts["POST /-/reload"]["the gzip scrape after it {:.0f} ms"] = scraped * 1000
                if not account_shown(body, accounts):  # its first poll may still be due
                    remarks.append("the scrape right after POST /-/reload had no new account yet")
                until(windows["POST /-/reload"][1])

                rewrite_config(config, accounts + 2, sim_url, spec)
                start = time.monotonic()
                os.kill(exporter.pid, signal.SIGHUP)
                until(start + SIGHUP_WAIT)
                for _ in range(SIGHUP_LOOKS):
                    scraped, body = scrape(port, "a scrape after SIGHUP", PROMETHEUS_HEADERS)
                    if account_shown(body, accounts + 1):
                        break
                    time.sleep(1.0)
                else:
                    remarks.append(
                        f"FAILED: no scrape in {SIGHUP_LOOKS} had the account SIGHUP added"
                    )
                windows["SIGHUP"] = (start, time.monotonic() + AFTER_RELOAD)
                facts["SIGHUP"]["new account seen after {:.1f} s"] = time.monotonic() - start
                facts["SIGHUP"]["that gzip scrape {:.0f} ms"] = scraped * 1000
                until(windows["SIGHUP"][1])
                stop_file.touch()  # the prober stops before the exporter does
                time.sleep(0.1)
        finally:
            stop_file.touch()
        probes = probes_f.result(timeout=60)
    listening = [p[0] for p in probes if p[0] >= exec_at]
    if listening:
        facts["start-up"]["listening after {:.1f} s"] = listening[0] - exec_at
    sliced = {
        phase: [p for p in probes if start <= p[0] < end] for phase, (start, end) in windows.items()
    }
    # When the longest answer was asked tells which step of a phase stalled (the render, a
    # reload, or the collection and freeze the exporter does within a second of ready).
    for phase, inside in sliced.items():
        if inside:
            longest = max(inside, key=lambda p: p[1])
            facts[phase]["longest asked at +{:.1f} s"] = longest[0] - windows[phase][0]
    return sliced, facts, remarks


def phases_scenario(
    accounts: int, interval: float, args: argparse.Namespace, directory: Path
) -> tuple[list[str], list[str]]:
    """Scenario p's rows and remarks: per phase, the longest /-/healthy answer per run (the
    median over runs and the worst run), with the probes and their slow ones summed over runs
    and the median over runs of each fact."""
    runs = [phases_run(accounts, interval, args, directory) for _ in range(args.runs)]
    rows = []
    for phase in PHASES:
        per_run = [run[0][phase] for run in runs if phase in run[0]]
        longest = [max(p[1] for p in probes) * 1000 for probes in per_run if probes]
        answers = [p[1] * 1000 for probes in per_run for p in probes]
        failed = sum(1 for probes in per_run for p in probes if not p[2])
        notes = [
            f"runs {', '.join(f'{v:.1f}' for v in longest)} ms" if len(longest) > 1 else "",
            f"{len(answers):,} probes, {sum(1 for v in answers if v > 10)} over 10 ms, "
            f"{sum(1 for v in answers if v > 20)} over 20 ms",
        ]
        for template in runs[0][1][phase]:
            values = [run[1][phase][template] for run in runs if template in run[1][phase]]
            notes.append(template.format(statistics.median(values)))
        if failed:
            notes.append(f"FAILED: {failed} probes")
        median = statistics.median(longest) if longest else math.nan
        worst = max(longest, default=math.nan)
        rows.append(
            f"| {phase} | {f1(median)} | {f1(worst)} | {'; '.join(n for n in notes if n)} |"
        )
    remarks = [f"run {n}: {remark}" for n, run in enumerate(runs, 1) for remark in run[2]]
    return rows, remarks


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenarios", default="a,b,c", help="any of a,b,c,p (default a,b,c)")
    parser.add_argument("--accounts", type=int, help="accounts for a and b (default 10,000)")
    parser.add_argument("--throughput-accounts", type=int, help="accounts for c (default 1,000)")
    parser.add_argument("--seconds", type=float, default=60, help="measured window of a and b")
    parser.add_argument("--warmup", type=float, help="s after ready (default interval/2 + 2)")
    parser.add_argument("--scrapers", type=int, default=2)
    parser.add_argument("--scrape-interval", type=float, default=15)
    parser.add_argument("--probe-ms", type=float, default=5)
    parser.add_argument(
        "--runs", type=int, default=3, help="wrk runs per target in c; fresh exporters in p"
    )
    parser.add_argument("--phase-accounts", type=int, help="accounts for p (default 10,000)")
    parser.add_argument("--phase-interval", type=float, help="interval of p, s (default 20)")
    parser.add_argument("--steady-seconds", type=float, default=10, help="p's steady phase")
    parser.add_argument("--wrk-seconds", type=int, default=4)
    parser.add_argument("--cpu-seconds", type=float, default=10, help="CPU per poll window")
    parser.add_argument("--bare-requests", type=int, default=10_000)
    args = parser.parse_args()
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from a, b, c, p")
    if not 0 < args.seconds <= 600 or args.scrapers < 1 or args.probe_ms < 1:
        parser.error("--seconds must be in (0, 600], --scrapers >= 1, --probe-ms >= 1")
    if not 0 < args.steady_seconds <= 300 or not 1 <= args.runs <= 20:
        parser.error("--steady-seconds must be in (0, 300], --runs in [1, 20]")
    if not 1 <= (args.phase_interval or 20) <= 300 or (args.phase_accounts or 1) < 1:
        parser.error("--phase-interval must be in [1, 300] s, --phase-accounts >= 1")

    live_rows: list[str] = []
    wrk_rows: list[str] = []
    phase_rows: list[str] = []
    facts: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            accounts, interval = SCENARIOS[name]
            if name == "c":
                accounts = args.throughput_accounts or accounts
                rows, more = throughput_scenario(accounts, interval, args, Path(tmp))
                wrk_rows += rows
                facts += more
            elif name == "p":
                phase_accounts = args.phase_accounts or accounts
                phase_interval = args.phase_interval or interval
                rows, more = phases_scenario(phase_accounts, phase_interval, args, Path(tmp))
                phase_rows += rows
                facts += more
            else:
                accounts = args.accounts or accounts
                live_rows.append(scrape_scenario(name, accounts, interval, args, Path(tmp)))

    cpu = platform.processor() or platform.machine()
    print(
        f"Live benchmark, {datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores ({cpu}), "
        f"Python {platform.python_version()}; took {time.monotonic() - started:.0f} s\n"
    )
    if live_rows:
        print(
            f"Gzip scrapes as Prometheus sends them (OpenMetrics), {args.scrapers} scraper(s) "
            f"every {args.scrape_interval:g} s; `/-/healthy` probed every {args.probe_ms:g} ms "
            f"from its own process; {args.seconds:g} s window after warm-up; one run each.\n"
        )
        print("| scenario | gzip scrape p50 / p99 / max ms | `/-/healthy` p99 / max ms | "
              "polls/s landed | notes |")  # fmt: skip
        print("|---|---:|---:|---:|---|")
        print("\n".join(live_rows))
        print()
    if wrk_rows:
        print(
            f"`/metrics` throughput while polls land: wrk -t2 -c32, medians of {args.runs} "
            f"x {args.wrk_seconds} s, interleaved; each exporter row against the ceiling "
            "serving the same encoding's bytes.\n"
        )
        print("| accounts | server | req/s | vs ceiling | p50 ms | p99 ms |")
        print("|---:|---|---:|---:|---:|---:|")
        print("\n".join(wrk_rows))
        print()
    if phase_rows:
        print(
            f"Event-loop stalls by phase, {phase_accounts:,} accounts at a {phase_interval:g} s "
            f"interval: the longest `/-/healthy` answer (ms; probed every {args.probe_ms:g} ms "
            f"from its own process) in each phase, over {args.runs} run(s), each a fresh "
            "simulator and exporter. Notes: probes summed over runs, other figures medians of "
            "runs; the first scrape after a reload is in the reload's phase, settle runs in "
            "steady's.\n"
        )
        print("| phase | longest `/-/healthy`, median of runs | worst run | notes |")
        print("|---|---:|---:|---|")
        print("\n".join(phase_rows))
        print()
    for fact in facts:
        print(f"- {fact}")


if __name__ == "__main__":
    main()
