"""What the garbage-collector freeze buys: collection pauses with and without it, measured.

    .venv/bin/python bench/gc_pauses.py                    # 10,000 accounts at 20 s, 60 s each
    .venv/bin/python bench/gc_pauses.py --accounts 2000 --seconds 20   # a quick check

A collection runs on the event loop's thread with the GIL held: however the engine slices
its own work, a full collection of every tracked object stops the loop for as long as it
walks them. This runs the exporter's app in this process (so `gc.callbacks` can time every
collection) against the simulator in another, once with `freeze_gc` as the command line
sets it and once without, each in a fresh process, and reports per mode: collections by
generation, the longest pause, and the pauses over 10 ms, over a window that starts once
every account has polled and a scrape (gzip) comes every 2 s as Prometheus' would.

Everything binds 127.0.0.1; every process is stopped; the window is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from suite import PY, ROOT, free_port, process, wait_http, write_config

sys.path.insert(0, str(ROOT))


async def measure(sim_url: str, accounts: int, interval: str, seconds: float, freeze: bool) -> dict:
    """Run the app on this loop until ready plus `seconds`; time every collection after."""
    from aiohttp import web

    from exporter.core.config import load_config
    from exporter.log import make_logger
    from exporter.web.server import EXPOSITION, STATE, Settings, create_app

    config = load_config(str(write_config(Path(tempfile.mkdtemp()), accounts, sim_url, interval)))
    app = create_app(config, make_logger("error", "json"), Settings(freeze_gc=freeze))
    runner = web.AppRunner(app)
    await runner.setup()  # starts the poller (and the freeze task when asked)
    pauses: list[tuple[int, float]] = []
    started = [0.0]

    def timed(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - started[0]))

    try:
        deadline = time.monotonic() + 120
        while not app[STATE].ready and time.monotonic() < deadline:  # noqa: ASYNC110 - a property
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)  # the freeze, when on, follows ready within a second
        gc.callbacks.append(timed)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await app[EXPOSITION].render_async(gzipped=True)
            await asyncio.sleep(2.0)
        gc.callbacks.remove(timed)
    finally:
        await runner.cleanup()
    by_generation = [sum(1 for g, _ in pauses if g == n) for n in range(3)]
    return {
        "freeze": freeze,
        "collections": by_generation,
        "longest_ms": max((p for _, p in pauses), default=0.0) * 1000,
        "longest_full_ms": max((p for g, p in pauses if g == 2), default=0.0) * 1000,
        "over_10ms": sum(1 for _, p in pauses if p > 0.010),
        "tracked_objects": len(gc.get_objects()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--interval", default="20s")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--sim", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = asyncio.run(
            measure(args.sim, args.accounts, args.interval, args.seconds, args.child == "on")
        )
        print(json.dumps(result))
        return
    directory = Path(tempfile.mkdtemp())
    port = free_port()
    sim_config = write_config(directory, args.accounts, "http://127.0.0.1:1", args.interval)
    sim_url = f"http://127.0.0.1:{port}"
    rows = []
    with process(PY, "-m", "exporter", "simulate", "--listen", f"127.0.0.1:{port}",
                 "--config", str(sim_config), "--log.level", "error") as sim:  # fmt: skip
        wait_http(f"{sim_url}/-/sim/accounts", timeout=120, proc=sim)
        for mode in ("off", "on"):
            out = subprocess.run(
                [PY, __file__, "--child", mode, "--sim", sim_url, "--accounts",
                 str(args.accounts), "--interval", args.interval, "--seconds", str(args.seconds)],
                check=True, capture_output=True, text=True, timeout=args.seconds + 300, cwd=ROOT,
            )  # fmt: skip
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.accounts:,} accounts at {args.interval}, {args.seconds:g} s after ready, "
          f"gzip scrape every 2 s, Python {sys.version.split()[0]}\n")  # fmt: skip
    print("| freeze | collections gen 0 / 1 / 2 | longest pause | longest full | over 10 ms |")
    print("|---|---|---|---|---|")
    for row in rows:
        gens = " / ".join(str(n) for n in row["collections"])
        print(f"| {'on' if row['freeze'] else 'off'} | {gens} | {row['longest_ms']:.1f} ms | "
              f"{row['longest_full_ms']:.1f} ms | {row['over_10ms']} |")  # fmt: skip


if __name__ == "__main__":
    main()
