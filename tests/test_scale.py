"""Scale: 2,000 accounts in three shards against the simulator, on a short interval."""

from __future__ import annotations

import asyncio
import io
import time
from collections import Counter
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from support import matrix_config, samples

from exporter.core.config import load_config
from exporter.log import make_logger
from exporter.sim.simulator import Simulator, start_simulator
from exporter.web.server import STATE, Settings, create_app

ACCOUNTS = 2000
SHARDS = 3
INTERVAL = "3s"


async def test_two_thousand_accounts_in_three_shards(tmp_path: Path) -> None:
    names = [f"tenant-{i:04d}" for i in range(ACCOUNTS)]
    settings = {"interval": INTERVAL, "timeout": "2s", "retries": "1", "backoff": "100ms"}
    simulator = Simulator(load_config(matrix_config(tmp_path, "http://127.0.0.1:1", names)))
    runner, url = await start_simulator(simulator)
    clients: list[TestClient] = []
    try:
        config = load_config(matrix_config(tmp_path, url, names, **settings))
        quiet = make_logger("error", "json", io.StringIO())
        started = time.monotonic()
        for index in range(SHARDS):
            app = create_app(config, quiet, Settings(shard_count=SHARDS, shard_index=index))
            client = TestClient(TestServer(app, host="127.0.0.1"))
            await client.start_server()
            clients.append(client)
        states = [client.server.app[STATE] for client in clients]

        deadline = time.monotonic() + 30
        while not all(state.ready for state in states):
            assert time.monotonic() < deadline, "not ready within 30 s"
            await asyncio.sleep(0.2)
        ready_after = time.monotonic() - started

        # Every account belongs to exactly one shard, and every shard says how many it has.
        owned = [set(state.accounts) for state in states]
        assert sum(len(shard) for shard in owned) == ACCOUNTS
        assert set().union(*owned) == set(names)
        for client, shard in zip(clients, owned, strict=True):
            parsed = samples(await (await client.get("/metrics")).text())
            assert parsed[("koodrive_exporter_shard_accounts", frozenset())] == len(shard)
            up = {
                dict(labels)["account"]: value
                for (name, labels), value in parsed.items()
                if name == "koodrive_up"
            }
            assert up == dict.fromkeys(shard, 1)

        # No account starves: within two more intervals every account is polled again.
        await asyncio.sleep(2 * 3.0)
        polls = Counter(seen.account for seen in simulator.seen if seen.outcome == "accepted")
        assert set(polls) == set(names)
        starved = [name for name in names if polls[name] < 2]
        assert not starved, f"{len(starved)} accounts polled fewer than twice: {starved[:5]}"
        print(
            f"\nscale: {ACCOUNTS} accounts in {SHARDS} shards ready after {ready_after:.1f}s; "
            f"shard sizes {[len(s) for s in owned]}; polls per account min {min(polls.values())}"
            f" max {max(polls.values())}"
        )
    finally:
        for client in clients:
            await client.close()
        await runner.cleanup()
