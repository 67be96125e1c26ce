"""The benchmark suite: prints a Markdown report of ratios measured in one run.

    bench/run            # installs wrk, pushgateway and the peer, then runs this

Everything binds 127.0.0.1 and is stopped at the end; every load is bounded (wrk runs a
fixed number of seconds, poll measurements a fixed window). Medians of several runs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@contextmanager
def process(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_http(
    url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None
) -> float:
    """Seconds until `url` answers 200 (failing early if `proc` exits)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            code = subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url],
                capture_output=True, text=True, timeout=5, check=False,
            ).stdout  # fmt: skip
            if code == "200":
                return time.monotonic() - started
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s")


def wrk(url: str, seconds: int, connections: int = 32, headers: tuple[str, ...] = ()) -> dict:
    extra = [arg for header in headers for arg in ("-H", header)]
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        match = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if match is None:  # no request finished within wrk's 2 s timeout
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
        return float(match.group(1)) * scale

    return {"rps": rps, "p50": pct("50"), "p99": pct("99")}


def ms(value: float) -> str:
    return "timeout" if value != value else f"{value:.2f}"


def summarize(results: list[dict]) -> dict:
    summary = {"rps": statistics.median(r["rps"] for r in results)}
    for key in ("p50", "p99"):
        values = [r[key] for r in results if r[key] == r[key]]
        summary[key] = statistics.median(values) if values else float("nan")
    return summary


def median_runs(url: str, runs: int, seconds: int, headers: tuple[str, ...] = ()) -> dict:
    return summarize([wrk(url, seconds, headers=headers) for _ in range(runs)])


def interleaved(targets: dict[str, tuple[str, tuple[str, ...]]], runs: int, seconds: int) -> dict:
    """Medians per target of `runs` wrk runs taken in turn (a, b, c, a, b, c, ...), so drift
    on a shared machine hits every target alike and their ratios stay meaningful."""
    results: dict[str, list[dict]] = {key: [] for key in targets}
    for _ in range(runs):
        for key, (url, headers) in targets.items():
            results[key].append(wrk(url, seconds, headers=headers))
    return {key: summarize(values) for key, values in results.items()}


def write_config(directory: Path, accounts: int, endpoint: str, interval: str) -> Path:
    timeout = "1s" if interval == "1s" else "10s"
    lines = ["max_concurrency: 64", "defaults:", f"  endpoint: {endpoint}",
             f"  interval: {interval}", f"  timeout: {timeout}", "accounts:"]  # fmt: skip
    for i in range(accounts):
        lines += [f"  - name: tenant-{i:05d}", f'    user_id: "{100000 + i}"', "    auth:",
                  f'      token: "Bearer+bench-{i}"']  # fmt: skip
    path = directory / f"config-{accounts}-{endpoint.rsplit(':', 1)[-1]}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def exporter_with(accounts: int, interval: str, directory: Path) -> Iterator[dict]:
    """Simulator + exporter processes for `accounts`; yields pids, URLs, ready time."""
    sim_port, exp_port = free_port(), free_port()
    sim_config = write_config(directory, accounts, "http://127.0.0.1:1", interval)
    sim_url = f"http://127.0.0.1:{sim_port}"
    with process(PY, "-m", "exporter", "simulate", "--listen", f"127.0.0.1:{sim_port}",
                 "--config", str(sim_config), "--log.level", "error") as sim:  # fmt: skip
        wait_http(f"{sim_url}/-/sim/accounts", timeout=120, proc=sim)
        config = write_config(directory, accounts, sim_url, interval)
        started = time.monotonic()
        with process(PY, "-m", "exporter", f"--config.file={config}",
                     f"--web.listen-address=127.0.0.1:{exp_port}",
                     "--log.level=error") as exp:  # fmt: skip
            base = f"http://127.0.0.1:{exp_port}"
            wait_http(f"{base}/-/ready", timeout=120, proc=exp)
            ready = time.monotonic() - started
            yield {"pid": exp.pid, "sim_pid": sim.pid, "url": base, "sim": sim_url,
                   "ready": ready}  # fmt: skip


async def polls_done(sim_url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{sim_url}/-/sim/accounts") as r:
        return int((await r.json())["outcomes"].get("accepted", 0))


def cpu_per_poll(info: dict, seconds: float) -> tuple[float, float]:
    """(µs of exporter CPU per poll, exporter CPU share of one core) over a window."""
    before_cpu, before_polls = cpu_seconds(info["pid"]), asyncio.run(polls_done(info["sim"]))
    before = time.monotonic()
    time.sleep(seconds)
    cpu = cpu_seconds(info["pid"]) - before_cpu
    polls = asyncio.run(polls_done(info["sim"])) - before_polls
    wall = time.monotonic() - before
    return (cpu / polls * 1e6 if polls else float("nan")), cpu / wall


def bare_loop(sim_url: str, requests: int, concurrency: int = 64) -> float:
    """µs of CPU per request for a plain aiohttp loop: GET, read JSON, nothing else."""

    async def run() -> float:
        headers = {"X-User-Id": "100000", "Authorization": "Bearer+bench-0"}
        remaining = requests
        async with aiohttp.ClientSession() as session:

            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    now = time.gmtime(time.time() - 2)
                    headers["X-Date"] = time.strftime("%Y%m%dT%H%M%SZ", now)
                    headers["X-Traceid"] = base64.b32encode(os.urandom(40)).decode()[:58]
                    async with session.get(
                        f"{sim_url}/koodrive/ose/v1/space/usage/overview", headers=headers
                    ) as response:
                        await response.json()

            started = time.process_time()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return (time.process_time() - started) / requests * 1e6

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1,1000,10000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    rows: list[str] = []
    facts: list[str] = []
    rss: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for size in sizes:
            body_file = directory / f"body-{size}"
            with exporter_with(size, "60s", directory) as info:
                facts.append(f"start to ready, {size} accounts: {info['ready']:.2f} s")
                time.sleep(1)
                rss[size] = rss_bytes(info["pid"])
                metrics = f"{info['url']}/metrics"
                # The ceiling serves exactly these bytes, without any logic, measured in turn
                # with the exporter's runs while the exporter is up.
                subprocess.run(["curl", "-s", "-o", str(body_file), metrics], check=True)
                port = free_port()
                with process(PY, str(ROOT / "bench" / "peers.py"), "ceiling", "--body",
                             str(body_file), "--port", str(port)):  # fmt: skip
                    ceiling_url = f"http://127.0.0.1:{port}/metrics"
                    wait_http(ceiling_url, timeout=120)
                    measured = interleaved(
                        {"ours": (metrics, ()), "ours-gz": (metrics, ("Accept-Encoding: gzip",)),
                         "ceiling": (ceiling_url, ())},
                        args.runs, args.seconds,
                    )  # fmt: skip
                ours, ours_gz = measured["ours"], measured["ours-gz"]
                if size == max(sizes):
                    per_poll, share = cpu_per_poll(info, 20.0)
                    facts.append(
                        f"{size} accounts at a 60 s interval: exporter CPU {share * 100:.2f} % "
                        f"of one core, {per_poll:.0f} µs per poll all included"
                    )
            peers = {"ceiling": measured["ceiling"]}
            for kind in ("stock", "aio"):
                port = free_port()
                with process(PY, str(ROOT / "bench" / "peers.py"), kind, "--accounts", str(size),
                             "--port", str(port)):  # fmt: skip
                    wait_http(f"http://127.0.0.1:{port}/metrics", timeout=120)
                    peers[kind] = median_runs(f"http://127.0.0.1:{port}/metrics", args.runs,
                                              args.seconds)  # fmt: skip
            port = free_port()
            with process("prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}",
                         "--log.level=error"):  # fmt: skip
                wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=60)
                body = subprocess.run([PY, str(ROOT / "bench" / "peers.py"), "text",
                                       "--accounts", str(size)], capture_output=True,
                                      check=True).stdout  # fmt: skip
                subprocess.run(["curl", "-s", "--data-binary", "@-",
                                f"http://127.0.0.1:{port}/metrics/job/bench"], input=body,
                               check=True, capture_output=True)  # fmt: skip
                peers["pushgateway"] = median_runs(f"http://127.0.0.1:{port}/metrics",
                                                   args.runs, args.seconds)  # fmt: skip
            ceiling = peers["ceiling"]["rps"]
            pushgateway = peers["pushgateway"]["rps"] or float("nan")
            for name, result in (("koodrive-exporter", ours),
                                 ("koodrive-exporter, gzip", ours_gz),
                                 ("pre-rendered bytes (aiohttp ceiling)", peers["ceiling"]),
                                 ("prometheus_client start_http_server", peers["stock"]),
                                 ("prometheus-aioexporter", peers["aio"]),
                                 ("Go pushgateway", peers["pushgateway"])):  # fmt: skip
                rows.append(
                    f"| {size:,} | {name} | {result['rps']:,.0f} | {result['rps'] / ceiling:.2f} | "
                    f"{result['rps'] / pushgateway:.1f} | {ms(result['p50'])} | "
                    f"{ms(result['p99'])} |"
                )
        with exporter_with(1000, "1s", directory) as info:
            time.sleep(3)
            per_poll, _ = cpu_per_poll(info, 10.0)
            bare = bare_loop(info["sim"], 20_000)
            facts.append(
                f"CPU per poll, 1,000 accounts at a 1 s interval: koodrive-exporter "
                f"{per_poll:.0f} µs vs a bare aiohttp GET+JSON loop {bare:.0f} µs "
                f"({per_poll / bare:.1f}x)"
            )
    if len(rss) > 1:
        small, large = min(rss), max(rss)
        per_account = (rss[large] - rss[small]) / (large - small)
        facts.append(
            f"RSS: {rss[small] / 2**20:.0f} MiB with {small:,} account(s), "
            f"{rss[large] / 2**20:.0f} MiB with {large:,}; {per_account / 1024:.1f} KiB per account"
        )
    cpu = platform.processor() or platform.machine()
    print(f"Benchmark, {datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores ({cpu}), "
          f"Python {platform.python_version()}; wrk -t2 -c32, {args.runs} x {args.seconds} s, "
          f"medians\n")  # fmt: skip
    print("| accounts | server | req/s | vs ceiling | vs pushgateway | p50 ms | p99 ms |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print()
    for fact in facts:
        print(f"- {fact}")


if __name__ == "__main__":
    main()
