"""The live benchmark (issue 14): the scrape path measured while polls land at production rates.

    .venv/bin/python bench/live.py                         # all three scenarios, ~5 minutes
    .venv/bin/python bench/live.py --scenarios a,b --seconds 45
    .venv/bin/python bench/live.py --accounts 2000 --seconds 30 --runs 1   # a quick check
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
import http.client
import math
import multiprocessing
import os
import platform
import random
import statistics
import subprocess
import tempfile
import time
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
SCENARIOS = {"a": (10_000, 60.0), "b": (10_000, 20.0), "c": (1_000, 5.0)}
SPAWN_MARGIN = 1.5  # seconds for the client processes to start before their first request
POLL_TICK = 0.1  # the exporter's poll tick (exporter/core/poller.py TICK)

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

    def probe(conn: http.client.HTTPConnection) -> bool:
        conn.request("GET", "/-/healthy")
        response = conn.getresponse()
        response.read()
        return response.status == 200

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
        started = time.monotonic()
        try:
            ok = probe(conn)
        except (OSError, http.client.HTTPException):
            # A closed keep-alive connection: reconnect and ask again (the time counts).
            conn.close()
            try:
                conn = connect()
                ok = probe(conn)
            except (OSError, http.client.HTTPException):
                ok = False
        ended = time.monotonic()
        results.append((started, ended - started, ok))
        due = max(due + every, ended)
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenarios", default="a,b,c", help="any of a,b,c (default all)")
    parser.add_argument("--accounts", type=int, help="accounts for a and b (default 10,000)")
    parser.add_argument("--throughput-accounts", type=int, help="accounts for c (default 1,000)")
    parser.add_argument("--seconds", type=float, default=60, help="measured window of a and b")
    parser.add_argument("--warmup", type=float, help="s after ready (default interval/2 + 2)")
    parser.add_argument("--scrapers", type=int, default=2)
    parser.add_argument("--scrape-interval", type=float, default=15)
    parser.add_argument("--probe-ms", type=float, default=5)
    parser.add_argument("--runs", type=int, default=3, help="wrk runs per target in c")
    parser.add_argument("--wrk-seconds", type=int, default=4)
    parser.add_argument("--cpu-seconds", type=float, default=10, help="CPU per poll window")
    parser.add_argument("--bare-requests", type=int, default=10_000)
    args = parser.parse_args()
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from a, b, c")
    if not 0 < args.seconds <= 600 or args.scrapers < 1 or args.probe_ms < 1:
        parser.error("--seconds must be in (0, 600], --scrapers >= 1, --probe-ms >= 1")

    live_rows: list[str] = []
    wrk_rows: list[str] = []
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
    for fact in facts:
        print(f"- {fact}")


if __name__ == "__main__":
    main()
