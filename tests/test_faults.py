"""The fault matrix: every way the upstream misbehaves, all at once, on compressed intervals.

Each faulty account must drop to `koodrive_up 0` with the right reason, the healthy control
account must not notice, `/metrics` must keep answering fast, and everything must recover
after the faults are switched off. A soak run then checks for leaks.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import INTERVAL, TIMEOUT, LogCapture, matrix_config, parse_metrics

from exporter.core.config import load_config
from exporter.core.model import Reason
from exporter.log import make_logger
from exporter.sim.simulator import Fault, FaultKind, Simulator, start_simulator
from exporter.web.server import Settings, create_app

APP_SECRET = "matrix-app-secret-Ωmega"
TOKEN = "Bearer+matrix-token-0123456789"

# fault -> the reason it must be counted under
MATRIX: dict[str, tuple[Fault, Reason]] = {
    "latency": (Fault(FaultKind.LATENCY, seconds=0.6), Reason.TIMEOUT),
    "hang": (Fault(FaultKind.HANG), Reason.TIMEOUT),
    "http_5xx": (Fault(FaultKind.HTTP_5XX, status=502), Reason.HTTP_ERROR),
    "rate_limit": (Fault(FaultKind.RATE_LIMIT, retry_after="1"), Reason.RATE_LIMITED),
    "malformed_json": (Fault(FaultKind.MALFORMED_JSON), Reason.INVALID_RESPONSE),
    "wrong_types": (Fault(FaultKind.WRONG_TYPES), Reason.INVALID_RESPONSE),
    "missing_fields": (Fault(FaultKind.MISSING_FIELDS), Reason.INVALID_RESPONSE),
    "api_error": (Fault(FaultKind.API_ERROR, code=13000301), Reason.API_ERROR),
    "huge_body": (Fault(FaultKind.HUGE_BODY), Reason.INVALID_RESPONSE),
    "reset": (Fault(FaultKind.RESET), Reason.CONNECTION),
    "clock_offset": (Fault(FaultKind.CLOCK_OFFSET, seconds=-120), Reason.AUTH),
    "expired_token": (Fault(FaultKind.EXPIRED_TOKEN), Reason.AUTH),
    "wrong_signature": (Fault(FaultKind.WRONG_SIGNATURE), Reason.AUTH),
}


@dataclass
class Watch:
    detected: float | None = None
    recovered: float | None = None


async def test_fault_matrix(tmp_path: Path, aiohttp_client) -> None:
    names = [*MATRIX, "control"]
    placeholder = matrix_config(tmp_path, "http://127.0.0.1:1", names)
    simulator = Simulator(load_config(placeholder))
    runner, url = await start_simulator(simulator)
    logs = LogCapture()
    try:
        config = load_config(matrix_config(tmp_path, url, names))
        client = await aiohttp_client(create_app(config, logs.log, Settings(startup_window=0.2)))
        slowest_scrape = 0.0

        async def scrape() -> dict[tuple[str, str], float]:
            nonlocal slowest_scrape
            started = time.perf_counter()
            response = await client.get("/metrics")
            text = await response.text()
            slowest_scrape = max(slowest_scrape, time.perf_counter() - started)
            assert response.status == 200
            return parse_metrics(text)

        async def until(condition, limit: float) -> dict[tuple[str, str], float]:
            deadline = time.monotonic() + limit
            while True:
                samples = await scrape()
                if condition(samples) or time.monotonic() > deadline:
                    return samples
                await asyncio.sleep(0.05)

        def all_up(samples) -> bool:
            return all(samples.get(("koodrive_up", n)) == 1 for n in names)

        assert all_up(await until(all_up, 3)), "not every account came up"

        for name, (fault, _) in MATRIX.items():
            simulator.set_fault(name, fault)
        switched_on = time.monotonic()
        watches = {name: Watch() for name in MATRIX}
        # A poll starts within 1.1 intervals and may take up to two timeouts plus a backoff.
        detect_limit = INTERVAL * 1.1 + 2 * TIMEOUT + 0.1 + 0.5
        while time.monotonic() - switched_on < detect_limit:
            samples = await scrape()
            assert samples[("koodrive_up", "control")] == 1, {
                k: v for k, v in samples.items() if "control" in k[1]
            }
            now = time.monotonic() - switched_on
            for name, (_, reason) in MATRIX.items():
                errors = samples.get(("koodrive_poll_errors_total", f"{name}:{reason}"), 0)
                down = samples[("koodrive_up", name)] == 0
                if watches[name].detected is None and errors >= 1 and down:
                    watches[name].detected = now
                if name == "clock_offset" and watches[name].detected and not down:
                    watches[name].recovered = watches[name].recovered or now
            if all(w.detected is not None for w in watches.values()):
                break
            await asyncio.sleep(0.05)
        missing = [n for n, w in watches.items() if w.detected is None]
        assert not missing, f"not detected within {detect_limit:.1f}s: {missing}"

        # The skew fault heals itself while still on: the Date header corrects the X-Date.
        samples = await until(lambda s: s[("koodrive_up", "clock_offset")] == 1, INTERVAL * 2.5)
        assert samples[("koodrive_up", "clock_offset")] == 1
        skew = samples[("koodrive_clock_skew_seconds", "clock_offset")]
        assert -121.5 < skew < -119, skew
        watches["clock_offset"].recovered = time.monotonic() - switched_on

        for name in MATRIX:
            simulator.set_fault(name, None)
        switched_off = time.monotonic()
        # Recovery: the next poll, at most an interval (or a Retry-After of 1 s) plus jitter.
        recover_limit = INTERVAL * 1.1 + TIMEOUT + 0.6
        while time.monotonic() - switched_off < recover_limit:
            samples = await scrape()
            now = time.monotonic() - switched_off
            for name, watch in watches.items():
                if watch.recovered is None and samples[("koodrive_up", name)] == 1:
                    watch.recovered = now
            if all_up(samples):
                break
            await asyncio.sleep(0.05)
        assert all_up(samples), f"not recovered within {recover_limit:.1f}s: {samples}"
        assert slowest_scrape < 0.25, f"a scrape took {slowest_scrape * 1000:.0f} ms"

        rows = [f"| {n} | {MATRIX[n][1]} | {w.detected:.2f} | {w.recovered:.2f} |"
                for n, w in watches.items()]  # fmt: skip
        print("\n| fault | reason | detected after s | recovered after s |")
        print("|---|---|---|---|\n" + "\n".join(rows))
        print(f"slowest /metrics during the matrix: {slowest_scrape * 1000:.1f} ms")

        log_text = logs.text
        for secret in (APP_SECRET, TOKEN, "Signature=", "HMAC-SHA256 AppId"):
            assert secret not in log_text
        for reason in {reason for _, reason in MATRIX.values()}:
            assert f'"reason": "{reason}"' in log_text
    finally:
        await runner.cleanup()


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
async def test_soak_ten_thousand_failing_polls_leaks_nothing(tmp_path: Path, aiohttp_client):
    names = [f"soak-{i}" for i in range(50)]
    placeholder = matrix_config(tmp_path, "http://127.0.0.1:1", names)
    # A short request history: the soak measures the exporter, not the simulator's log.
    simulator = Simulator(load_config(placeholder), history=100)
    for name in names:
        simulator.set_fault(name, Fault(FaultKind.HTTP_5XX, status=500))
    runner, url = await start_simulator(simulator)
    try:
        fast = {"interval": "20ms", "timeout": "20ms", "retries": "0"}
        config = load_config(matrix_config(tmp_path, url, names, **fast))
        quiet = make_logger("error", "json", io.StringIO())
        client = await aiohttp_client(create_app(config, quiet, Settings(startup_window=0.02)))

        async def failing_polls(count: int) -> None:
            target = simulator.outcomes["fault:http_5xx"] + count
            deadline = time.monotonic() + 60
            while simulator.outcomes["fault:http_5xx"] < target:
                assert time.monotonic() < deadline, "soak too slow"
                await asyncio.sleep(0.1)

        await failing_polls(2_000)  # warm up: caches, connection pool, allocator
        rss_before, fds_before = rss_bytes(), len(os.listdir("/proc/self/fd"))
        tasks_before = len(asyncio.all_tasks())
        started = time.monotonic()
        await failing_polls(10_000)
        elapsed = time.monotonic() - started
        rss_after, fds_after = rss_bytes(), len(os.listdir("/proc/self/fd"))
        tasks_after = len(asyncio.all_tasks())
        response = await client.get("/metrics")
        assert response.status == 200
        samples = parse_metrics(await response.text())
        total = sum(v for (n, k), v in samples.items() if n == "koodrive_poll_errors_total")
        assert total >= 12_000
        growth = rss_after - rss_before
        print(
            f"\nsoak: 10,000 failing polls in {elapsed:.1f}s; RSS {rss_before / 2**20:.1f} -> "
            f"{rss_after / 2**20:.1f} MiB ({growth / 2**20:+.2f} MiB); fds {fds_before} -> "
            f"{fds_after}; tasks {tasks_before} -> {tasks_after}"
        )
        assert growth < 5 * 2**20
        # Up to one request per account is in flight at any moment (two fds and a handler
        # task each on loopback); a leak over 10,000 polls would show thousands.
        assert fds_after <= fds_before + 2 * len(names) + 10
        assert tasks_after <= tasks_before + len(names) + 10
    finally:
        await runner.cleanup()
