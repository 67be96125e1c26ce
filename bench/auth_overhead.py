"""What basic auth costs a scrape once credentials are cached.

Starts two demo exporters on loopback, one plain and one with a bcrypt user in its web
config, and scrapes them in alternating rounds from one client process. Prints medians and
the cost ratio (time per authenticated scrape / time per plain scrape), both measured in the
same run. Bounded: ROUNDS x REQUESTS requests per exporter, and both exporters are stopped.

    .venv/bin/python bench/auth_overhead.py
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import bcrypt

ROUNDS = 7
REQUESTS = 1500
CONCURRENCY = 8
PASSWORD = "bench-password"  # noqa: S105 - a throwaway local benchmark user


async def start(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "--demo", "--web.listen-address=127.0.0.1:0",
        "--log.level=error", *args,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    async with asyncio.timeout(20):
        while True:
            line = (await process.stdout.readline()).decode()
            match = re.match(r"Metrics:\s+(\S+)", line)
            if match:
                return process, match.group(1)
            if not line:
                raise RuntimeError("exporter exited before printing its URL")


async def round_rps(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> float:
    remaining = REQUESTS

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            async with session.get(url, headers=headers) as response:
                assert response.status == 200, response.status
                await response.read()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return REQUESTS / (time.perf_counter() - started)


async def main() -> None:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    with tempfile.TemporaryDirectory() as directory:
        web = Path(directory) / "web.yml"
        web.write_text(f"basic_auth_users:\n  bench: {hashed}\n", encoding="utf-8")
        plain, plain_url = await start()
        secured, secured_url = await start(f"--web.config.file={web}")
        token = base64.b64encode(f"bench:{PASSWORD}".encode()).decode()
        auth = {"Authorization": f"Basic {token}"}
        results: dict[str, list[float]] = {"plain": [], "basic auth (cached)": []}
        try:
            async with aiohttp.ClientSession() as session:
                await round_rps(session, plain_url, {})  # warm-up both
                await round_rps(session, secured_url, auth)
                for _ in range(ROUNDS):
                    results["plain"].append(await round_rps(session, plain_url, {}))
                    results["basic auth (cached)"].append(
                        await round_rps(session, secured_url, auth)
                    )
        finally:
            for process in (plain, secured):
                process.send_signal(signal.SIGTERM)
                await process.wait()
    medians = {name: statistics.median(values) for name, values in results.items()}
    print(f"| exporter | median req/s ({ROUNDS} rounds x {REQUESTS}, {CONCURRENCY} conns) |")
    print("|---|---|")
    for name, value in medians.items():
        print(f"| {name} | {value:,.0f} |")
    ratio = medians["plain"] / medians["basic auth (cached)"]
    print(f"\ncost of a cached-credential scrape relative to a plain one: {ratio:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
