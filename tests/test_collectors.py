"""The subscription and quota-tier collectors against the simulator over real loopback HTTP:
exact values for an app-auth and a token account, paging, the signed query string, and a
failing collector that leaves the overview alone."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import aiohttp
import pytest
from support import two_account_config, value

from exporter.core.config import load_config
from exporter.core.endpoints import QUOTA_TIERS
from exporter.core.model import Usage
from exporter.core.settings import Config
from exporter.sim.simulator import (
    Fault,
    FaultKind,
    Simulator,
    quota_tiers,
    start_simulator,
    subscription_body,
)
from exporter.upstream.credentials import CredentialStore
from exporter.upstream.signing import request_headers
from exporter.web.server import Settings, create_app

ALL = "  collectors: [overview, subscription, quota_tiers]\n  page_size: 10"
PINNED = {
    "acme": Usage(allocation_kb=43, capacity_kb=10 * 1024 * 1024, used_kb=33085606),
    "beta": Usage(allocation_kb=1, capacity_kb=2 * 1024 * 1024, used_kb=1_500_000),
}
GIB = 1024**3


@dataclass
class Rig:
    simulator: Simulator
    url: str
    config: Config


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """The simulator pages at most 2 tiers, below the exporter's page size of 10."""
    placeholder = two_account_config("http://127.0.0.1:1", tmp_path, extra=ALL)
    simulator = Simulator(load_config(placeholder), max_page=2)
    for name, usage in PINNED.items():
        simulator.set_usage(name, usage)
    runner, url = await start_simulator(simulator)
    config = load_config(two_account_config(url, tmp_path, interval="1s", extra=ALL))
    try:
        yield Rig(simulator, url, config)
    finally:
        await runner.cleanup()


async def scrape_when(client, predicate, timeout: float = 8.0) -> str:
    """The /metrics text once `predicate(text)` holds."""
    text = ""

    async def ready() -> bool:
        nonlocal text
        response = await client.get("/metrics")
        text = await response.text()
        return predicate(text)

    deadline = time.monotonic() + timeout
    while not await ready():
        assert time.monotonic() < deadline, text[-2000:]
        await asyncio.sleep(0.1)
    return text


def has_all(text: str) -> bool:
    return all(
        value(text, name, account=account) is not None
        for name in ("koodrive_subscription_users", "koodrive_space_used_bytes")
        for account in PINNED
    ) and all(
        value(text, "koodrive_quota_tier_used_bytes", account=account, quota="1") is not None
        for account in PINNED
    )


async def test_every_new_metric_has_the_exact_value_for_both_auth_kinds(
    rig, aiohttp_client, logs, promtool
) -> None:
    client = await aiohttp_client(create_app(rig.config, logs.log, Settings(startup_window=0.05)))
    text = await scrape_when(client, has_all)
    for name, usage in PINNED.items():
        data = subscription_body(usage, name)["data"]
        assert isinstance(data, dict)
        labels = {"account": name}
        assert value(text, "koodrive_subscription_capacity_bytes", **labels) == (
            data["spaceCapacity"] * GIB
        )
        assert value(text, "koodrive_subscription_users", **labels) == data["userCount"]
        assert value(text, "koodrive_subscription_users_limit", **labels) == data["userMaxCount"]
        info = value(text, "koodrive_subscription_info", product_type="1", **labels)
        assert info == 1
        for label, key in (("department", "dept"), ("personal", "personal"), ("group", "group")):
            typed = {**labels, "type": label}
            assert value(text, "koodrive_space_type_quota_bytes", **typed) == (
                data[f"{key}SpaceQuota"] * GIB
            )
            assert value(text, "koodrive_space_type_quota_assigned_bytes", **typed) == (
                data[f"{key}SpaceQuotaUsed"] * GIB
            )
            assert value(text, "koodrive_space_type_used_bytes", **typed) == (
                data[f"{key}SpaceUsed"] * 1024
            )
        reserved = {**labels, "type": "reserved"}
        assert value(text, "koodrive_space_type_quota_bytes", **reserved) == (
            data["reservedSpaceQuota"] * GIB
        )
        # The simulator keeps the endpoints consistent, and so the exporter's figures agree.
        used = value(text, "koodrive_space_used_bytes", **labels)
        types = [
            value(text, "koodrive_space_type_used_bytes", **labels, type=t)
            for t in ("department", "personal", "group")
        ]
        assert sum(types) == used == usage.used_kb * 1024  # type: ignore[arg-type]
        tiers = quota_tiers(usage, name)
        assert len(tiers) >= 5  # with 2 a page: at least three pages
        for tier in tiers:
            tiered = {**labels, "quota": str(tier["quota"])}
            for metric, field in (
                ("allocated", "totalAllocation"),
                ("capacity", "totalCapacity"),
                ("used", "totalUsed"),
            ):
                got = value(text, f"koodrive_quota_tier_{metric}_bytes", **tiered)
                assert got == tier[field] * 1024, (metric, tier)  # type: ignore[operator]
        for collector in ("overview", "subscription", "quota_tiers"):
            up = value(text, "koodrive_collector_up", collector=collector, **labels)
            assert up == 1, (name, collector)
    assert set(rig.simulator.outcomes) == {"accepted"}, rig.simulator.outcomes
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")


async def test_tiers_are_paged_by_items_collected_with_the_query_signed(
    rig, aiohttp_client, logs
) -> None:
    client = await aiohttp_client(create_app(rig.config, logs.log, Settings(startup_window=0.05)))
    await scrape_when(client, has_all)
    tiers = len(quota_tiers(PINNED["acme"], "acme"))
    pages = [
        dict(parse_qsl(seen.query))
        for seen in rig.simulator.accepted
        if seen.account == "acme" and seen.path == QUOTA_TIERS.path
    ]
    first_poll = pages[: (tiers + 1) // 2]
    # 2 items a page whatever the limit: offsets follow the items collected, all signed
    # (acme uses app authentication, whose signature the simulator checks, query included).
    assert first_poll == [{"limit": "10", "offset": str(n)} for n in range(0, tiers, 2)]
    assert len(first_poll) >= 3


async def test_a_signature_without_the_query_string_is_refused(rig) -> None:
    """The simulator's check is independent of `signing`: leaving the query out of the
    canonical request, as a client unaware of it would, is a signature mismatch."""
    acme = next(a for a in rig.config.accounts if a.name == "acme")
    credentials = await CredentialStore().resolve(acme)
    host = rig.url.removeprefix("http://")
    signed = {"query": (("limit", "5"), ("offset", "0")), "unsigned": ()}
    statuses = {}
    async with aiohttp.ClientSession() as session:
        for kind, query in signed.items():
            headers = request_headers(
                credentials,
                host=host,
                user_id=acme.user_id,
                now=time.time() - 2,
                trace_id="0" * 58,
                path=QUOTA_TIERS.path,
                query=query,
            )
            url = f"{rig.url}{QUOTA_TIERS.path}?limit=5&offset=0"
            async with session.get(url, headers=headers) as response:
                statuses[kind] = (response.status, (await response.json()).get("msg"))
    assert statuses == {"query": (200, "success"), "unsigned": (401, "signature mismatch")}


async def test_a_failing_subscription_leaves_the_overview_alone(rig, aiohttp_client, logs) -> None:
    rig.simulator.set_fault("acme", Fault(FaultKind.HTTP_5XX, status=503, collector="subscription"))
    client = await aiohttp_client(create_app(rig.config, logs.log, Settings(startup_window=0.05)))

    def settled(text: str) -> bool:
        failed = value(
            text, "koodrive_collector_errors_total", account="acme", collector="subscription",
            reason="http_error",
        )  # fmt: skip
        return failed is not None and failed >= 2 and has_overview(text)

    def has_overview(text: str) -> bool:
        return value(text, "koodrive_space_used_bytes", account="acme") is not None

    text = await scrape_when(client, settled)
    acme = {"account": "acme"}
    assert value(text, "koodrive_up", **acme) == 1
    assert value(text, "koodrive_space_used_bytes", **acme) == PINNED["acme"].used_kb * 1024
    assert value(text, "koodrive_collector_up", collector="subscription", **acme) == 0
    assert value(text, "koodrive_collector_up", collector="overview", **acme) == 1
    assert value(text, "koodrive_subscription_users", **acme) is None  # never succeeded
    assert value(text, "koodrive_poll_errors_total", reason="http_error", **acme) is None
    # The other account and the other collectors of acme are untouched.
    assert value(text, "koodrive_collector_up", collector="subscription", account="beta") == 1
    assert value(text, "koodrive_collector_up", collector="quota_tiers", **acme) == 1
