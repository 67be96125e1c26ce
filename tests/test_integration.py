"""Exporter + simulator over real loopback HTTP, asserting exact values and a clean exposition."""

from __future__ import annotations

import calendar
import itertools
import subprocess
import time
from pathlib import Path

from support import APP_SECRET, TOKEN, samples, two_account_config, value, wait_for

from exporter.core.config import load_config
from exporter.core.model import Usage
from exporter.sim.simulator import Fault, FaultKind, Simulator, start_simulator
from exporter.web.server import Settings, create_app

DOC_USAGE = Usage(allocation_kb=43, capacity_kb=1051187, used_kb=33085606)


def sample(text: str, name: str, account: str) -> float | None:
    return value(text, name, account=account)


def errors(text: str, account: str, reason: str) -> float | None:
    return value(text, "koodrive_poll_errors_total", account=account, reason=reason)


async def scrape(client) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    return await response.text()


async def test_both_auth_kinds_are_up_with_exact_values(simulated, aiohttp_client, logs, promtool):
    simulator = simulated.simulator
    simulator.set_usage("acme", DOC_USAGE)
    simulator.set_usage("beta", Usage(allocation_kb=1, capacity_kb=2_000_000, used_kb=1_500_000))
    client = await aiohttp_client(
        create_app(simulated.config, logs.log, Settings(startup_window=0.05))
    )
    # Three polls per account at the 1 s interval, each of which must be signed afresh.
    await wait_for(lambda: simulator.outcomes["accepted"] >= 6, timeout=6)
    text = await scrape(client)

    for account in ("acme", "beta"):
        assert sample(text, "koodrive_up", account) == 1
    assert sample(text, "koodrive_space_allocated_bytes", "acme") == 43 * 1024
    assert sample(text, "koodrive_space_capacity_bytes", "acme") == 1051187 * 1024
    assert sample(text, "koodrive_space_used_bytes", "acme") == 33085606 * 1024
    assert sample(text, "koodrive_space_used_bytes", "beta") == 1_500_000 * 1024
    assert sample(text, "koodrive_space_capacity_bytes", "beta") == 2_000_000 * 1024
    last = sample(text, "koodrive_last_success_timestamp_seconds", "acme")
    assert last is not None
    assert time.time() - 3 < last <= time.time()

    assert set(simulator.outcomes) == {"accepted"}, simulator.outcomes
    accepted = list(simulator.accepted)
    assert len({a.trace_id for a in accepted}) == len(accepted)
    for request in accepted:
        signed_at = calendar.timegm(time.strptime(request.x_date, "%Y%m%dT%H%M%SZ"))
        # Never later than the server clock; at most the 2 s margin + 1 s truncation earlier.
        assert 0 <= request.server_time - signed_at < 3.5, request

    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")

    log_text = logs.text
    polls = logs.events("poll")
    assert len(polls) >= 6
    assert {p["account"] for p in polls} == {"acme", "beta"}
    assert all(len(str(p["trace_id"])) == 58 for p in polls)
    for secret in (APP_SECRET, TOKEN, "Signature=", "HMAC-SHA256 AppId"):
        assert secret not in log_text


async def test_rotated_token_file_is_used_without_restart(tmp_path: Path, aiohttp_client, logs):
    server_dir, exporter_dir = tmp_path / "server", tmp_path / "exporter"
    server_dir.mkdir()
    exporter_dir.mkdir()
    simulator = Simulator(load_config(two_account_config("http://127.0.0.1:1", server_dir)))
    (server_dir / "token").write_text("Bearer+rotated\n", encoding="utf-8")
    runner, url = await start_simulator(simulator)
    try:
        config = load_config(two_account_config(url, exporter_dir, interval="0.3s", timeout="0.3s"))
        client = await aiohttp_client(create_app(config, logs.log, Settings(startup_window=0.05)))
        await wait_for(lambda: simulator.outcomes["rejected:401"] >= 2)
        text = await scrape(client)
        assert sample(text, "koodrive_up", "beta") == 0
        assert errors(text, "beta", "auth") >= 1
        assert sample(text, "koodrive_up", "acme") == 1

        (exporter_dir / "token").write_text("Bearer+rotated\n", encoding="utf-8")
        await wait_for(lambda: sample_up(simulator, "beta"), timeout=3)
        text = await scrape(client)
        assert sample(text, "koodrive_up", "beta") == 1
        assert "Bearer+rotated" not in logs.text
    finally:
        await runner.cleanup()


def sample_up(simulator: Simulator, account: str) -> bool:
    return any(a.account == account for a in simulator.accepted)


async def test_upstream_going_away_keeps_last_values(simulated, aiohttp_client, logs):
    simulated.simulator.set_usage("acme", DOC_USAGE)
    client = await aiohttp_client(
        create_app(simulated.config, logs.log, Settings(startup_window=0.05))
    )
    await wait_for(lambda: simulated.simulator.outcomes["accepted"] >= 2)
    simulated.simulator.set_fault("acme", Fault(FaultKind.HTTP_5XX, status=503))
    await wait_for(lambda: simulated.simulator.outcomes["fault:http_5xx"] >= 2, timeout=4)
    text = await scrape(client)
    assert sample(text, "koodrive_up", "acme") == 0
    assert sample(text, "koodrive_space_used_bytes", "acme") == 33085606 * 1024


async def test_upstream_clock_two_minutes_behind(simulated, aiohttp_client, logs):
    """Acceptance: up within two polls, and the skew metric reads about -120 s."""
    simulator = simulated.simulator
    simulator.clock_offset = -120
    client = await aiohttp_client(
        create_app(simulated.config, logs.log, Settings(startup_window=0.05))
    )
    await wait_for(lambda: {s.account for s in simulator.accepted} == {"acme", "beta"}, 4)
    for account in ("acme", "beta"):
        polls = [s.outcome for s in simulator.seen if s.account == account]
        assert polls.index("accepted") <= 1, polls  # the first or the second poll succeeds
    text = await scrape(client)
    for account in ("acme", "beta"):
        assert sample(text, "koodrive_up", account) == 1
        skew = sample(text, "koodrive_clock_skew_seconds", account)
        assert skew is not None
        assert -121 < skew < -119


async def test_429_retry_after_one_second_is_never_undercut(simulated, aiohttp_client, logs):
    simulator = simulated.simulator
    simulator.set_fault("beta", Fault(FaultKind.RATE_LIMIT, retry_after="1"))
    # A short interval and tiny backoff: only Retry-After can hold the exporter back.
    path = simulated.config_path
    path.write_text(
        path.read_text().replace("interval: 1s", "interval: 300ms\n  backoff: 10ms")
        .replace("timeout: 1s", "timeout: 200ms")
    )  # fmt: skip
    config = load_config(path)
    client = await aiohttp_client(create_app(config, logs.log, Settings(startup_window=0.05)))
    await wait_for(lambda: simulator.outcomes["fault:rate_limit"] >= 4, timeout=6)
    times = [s.server_time for s in simulator.seen if s.account == "beta"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.999, gaps
    text = await scrape(client)
    assert sample(text, "koodrive_up", "beta") == 0
    assert errors(text, "beta", "rate_limited") >= 1
    assert sample(text, "koodrive_up", "acme") == 1


async def test_reload_endpoint(simulated, aiohttp_client, logs, tmp_path):
    path = simulated.config_path
    settings = Settings(startup_window=0.05, config_file=str(path), enable_lifecycle=True)
    client = await aiohttp_client(create_app(simulated.config, logs.log, settings))
    await wait_for(lambda: simulated.simulator.outcomes["accepted"] >= 2)
    assert (await client.get("/-/reload")).status == 405

    original = path.read_text()
    path.write_text(original.replace("interval: 1s", "interval: -1s"))
    response = await client.post("/-/reload")
    assert response.status == 500
    assert "defaults.interval: must be a positive duration" in await response.text()
    text = await scrape(client)
    assert value(text, "koodrive_exporter_config_last_reload_successful") == 0
    assert sample(text, "koodrive_up", "acme") == 1  # the old config keeps running

    # Drop beta, keep acme untouched.
    path.write_text(original.split("  - name: beta")[0])
    response = await client.post("/-/reload")
    assert response.status == 200
    assert "1 accounts: 0 added, 1 removed, 0 changed" in await response.text()
    text = await scrape(client)
    assert value(text, "koodrive_exporter_config_last_reload_successful") == 1
    assert sample(text, "koodrive_up", "beta") is None
    assert not [key for key in samples(text) if ("account", "beta") in key[1]]
    assert sample(text, "koodrive_up", "acme") == 1
    assert logs.events("reloaded")


async def test_reload_needs_the_lifecycle_flag(simulated, aiohttp_client, logs):
    settings = Settings(config_file=str(simulated.config_path))
    client = await aiohttp_client(create_app(simulated.config, logs.log, settings))
    response = await client.post("/-/reload")
    assert response.status == 403
