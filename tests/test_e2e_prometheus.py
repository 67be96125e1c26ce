"""End to end: simulator -> exporter -> a real Prometheus with the project's rules.

Prometheus (Debian's package) runs on 127.0.0.1 with a 1 s scrape and evaluation interval.
The test checks what Prometheus stored, evaluates every dashboard expression (as an
instant query, and the time series' as range queries too) and every rule expression
through its HTTP API, and drives an account to 95 % to see KooDriveSpaceAlmostFull pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from support import (
    DASHBOARD,
    RULES,
    FakeSource,
    account,
    dashboard_exprs,
    panels,
    two_account_config,
)

from exporter.core.config import load_config
from exporter.core.model import Usage
from exporter.core.settings import Config
from exporter.sim.simulator import quota_tiers
from exporter.web.server import Settings, create_app

JOB = "koodrive-exporter"
ACME = Usage(allocation_kb=400_000_000, capacity_kb=1_000_000_000, used_kb=500_000_000)
# Panels that must show data in a healthy run (errors and reload failures need not).
MAIN_PANELS = {
    "Accounts polled",
    "Used",
    "Capacity",
    "Fleet utilization",
    "Fleet used and capacity",
    "Accounts",
    "Utilization, top $topn",
    "Used space, top $topn",
    "Growth per day, top $topn",
    "Full in, soonest $topn",
    "Age of last success, oldest $topn",
    "Poll duration",
    "Clock skew",
    "Config reload",
    "Seats taken, top $topn",
    "Seats used and subscribed",
    "Subscribed capacity and used",
    "Quota and usage per space type",
    "Quota tiers",
}
TIME_LAPSE = 30.0
# Every collector, each polled every second, so the Subscription row fills within the run.
COLLECTORS = (
    "  collectors: {overview: null, subscription: {interval: 1s}, quota_tiers: {interval: 1s}}"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def substitute(expr: str) -> str:
    """Grafana's variables as the dashboard would send them with "All" selected."""
    return (
        expr.replace("$job", JOB)
        .replace("$account", "acme|beta")
        .replace("$__rate_interval", "15s")
        .replace("$__interval", "1s")
        .replace("$topn", "10")
    )


class Prometheus:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def get(self, path: str, **params: str) -> Any:
        async with self.session.get(self.url + path, params=params) as response:
            body = await response.json()
            assert body["status"] == "success", (path, params, body)
            return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.get("/api/v1/query", query=expr)
        return data["result"]

    async def wait(self, expr: str, predicate, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            result = await self.query(expr)
            if predicate(result) or time.monotonic() > deadline:
                return result
            await asyncio.sleep(0.25)


async def test_end_to_end_with_prometheus(simulated, logs, tmp_path: Path, prometheus_binary):
    started, wall_start = time.monotonic(), time.time()
    simulator = simulated.simulator
    simulator.set_usage("acme", ACME)
    # Beta's usage grows 30 times faster than real time, so that its growth trend and
    # forecast have something to show within the run.
    simulator.time_lapse = TIME_LAPSE

    (tmp_path / "e2e").mkdir()
    config_file = two_account_config(
        simulated.url, tmp_path / "e2e", interval="1s", extra=COLLECTORS
    )
    settings = Settings(startup_window=0.1)
    exporter = web.AppRunner(create_app(load_config(config_file), logs.log, settings))
    await exporter.setup()
    site = web.TCPSite(exporter, "127.0.0.1", 0)
    await site.start()
    exporter_port = exporter.addresses[0][1]

    try:
        async with prometheus(prometheus_binary, tmp_path, exporter_port, rules=True) as prom:
            # Prometheus stored exactly what the exporter published.
            up = await prom.wait("koodrive_up", lambda r: len(r) == 2, timeout=30)
            first_sample = time.time()
            assert {s["metric"]["account"]: s["value"][1] for s in up} == {"acme": "1", "beta": "1"}
            used = await prom.query('koodrive_space_used_bytes{account="acme"}')
            assert float(used[0]["value"][1]) == ACME.used_kb * 1024
            capacity = await prom.query('koodrive_space_capacity_bytes{account="acme"}')
            assert float(capacity[0]["value"][1]) == ACME.capacity_kb * 1024
            assert used[0]["metric"]["job"] == JOB
            utilization = await prom.wait(
                'account:koodrive_space_utilization:ratio{account="acme"}', bool, timeout=10
            )
            assert float(utilization[0]["value"][1]) == 0.5
            # deriv() needs a few samples of beta's growing usage.
            await prom.wait("account:koodrive_space_full_in:seconds", bool, timeout=20)
            # The subscription and tier figures arrived as the simulator answered them.
            seats = await prom.wait("account:koodrive_subscription_seats_used:ratio", bool, 10)
            assert {s["metric"]["account"] for s in seats} == {"acme", "beta"}
            tiers = await prom.query('koodrive_quota_tier_used_bytes{account="acme"}')
            expected = {t["quota"]: t["totalUsed"] * 1024 for t in quota_tiers(ACME, "acme")}
            assert {s["metric"]["quota"]: float(s["value"][1]) for s in tiers} == expected

            # Every dashboard expression evaluates, and the main panels have data.
            values: dict[str, list[tuple[str, float]]] = {}
            for panel in panels(json.loads(DASHBOARD.read_text(encoding="utf-8"))):
                for target in panel["targets"]:
                    result = await prom.query(substitute(target["expr"]))
                    legend = target["legendFormat"]
                    for sample in result:
                        label = re.sub(
                            r"\{\{(\w+)\}\}", lambda m, s=sample: s["metric"].get(m[1], ""), legend
                        )
                        values.setdefault(panel["title"], []).append(
                            (label, float(sample["value"][1]))
                        )
                if panel["title"] in MAIN_PANELS:
                    assert values.get(panel["title"]), f"no data for panel {panel['title']!r}"
            for expr in dashboard_exprs(json.loads(DASHBOARD.read_text(encoding="utf-8"))):
                match = re.fullmatch(r"label_values\((.+), (\w+)\)", expr)
                if match:  # a Grafana variable query: ask for the label's values
                    data = await prom.get(
                        f"/api/v1/label/{match[2]}/values", **{"match[]": substitute(match[1])}
                    )
                    assert data, expr

            # Every rule expression evaluates without error.
            groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
            for rule in (rule for group in groups for rule in group["rules"]):
                await prom.query(rule["expr"])
            rule_groups = (await prom.get("/api/v1/rules"))["groups"]
            health = {r.get("name"): r["health"] for g in rule_groups for r in g["rules"]}
            assert set(health.values()) == {"ok"}, health

            # Drive acme to 95 %: KooDriveSpaceAlmostFull (warning) goes pending.
            simulator.set_usage(
                "acme", Usage(ACME.allocation_kb, ACME.capacity_kb, ACME.capacity_kb * 95 // 100)
            )
            alert = await wait_alert(prom, "KooDriveSpaceAlmostFull", "acme", timeout=15)
            assert alert["state"] == "pending"
            assert alert["labels"]["severity"] == "warning"
            assert "acme" in alert["annotations"]["summary"]

            # The time series evaluate over a range too (`@ end()` in the top N).
            await asyncio.sleep(max(0.0, first_sample + 5 - time.time()))
            lines = await range_series(prom, started_at=wall_start)
            for title in MAIN_PANELS & set(lines):
                assert lines[title], f"no lines for panel {title!r}"
            top = lines["Utilization, top $topn"]
            assert {legend for legend, _ in top} == {"acme", "beta"}

        print(f"\nend-to-end with Prometheus: {time.monotonic() - started:.1f}s")
    finally:
        await exporter.cleanup()


@contextlib.asynccontextmanager
async def prometheus(
    binary: str, tmp_path: Path, exporter_port: int, *, rules: bool
) -> AsyncIterator[Prometheus]:
    """A real Prometheus on 127.0.0.1 scraping the exporter every second (with the project's
    rules, evaluated every second, if `rules`), stopped on the way out."""
    prom_port = free_port()
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}
        ],
    }
    if rules:
        config["rule_files"] = [str(RULES)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115
    )
    try:
        async with aiohttp.ClientSession() as session:
            prom = Prometheus(session, f"http://127.0.0.1:{prom_port}")
            await wait_ready(session, prom.url, process, tmp_path)
            yield prom
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


async def test_prometheus_reads_a_large_gzip_built_from_segments(
    logs, tmp_path: Path, prometheus_binary
) -> None:
    """1,500 accounts polled every second: a body of over a megabyte whose gzip is made of
    per-chunk deflate segments, the compressed chunks of accounts that did not land reused.
    Go's gzip reader (Prometheus's) must read every sample of it, scrape after scrape."""
    accounts = tuple(account(f"tenant-{i:04d}", interval=1.0, timeout=0.5) for i in range(1500))
    source = FakeSource()
    settings = Settings(source_factory=lambda _session: source, startup_window=0.5)
    exporter = web.AppRunner(create_app(Config(accounts=accounts), logs.log, settings))
    await exporter.setup()
    site = web.TCPSite(exporter, "127.0.0.1", 0)
    await site.start()
    try:
        async with prometheus(
            prometheus_binary, tmp_path, exporter.addresses[0][1], rules=False
        ) as prom:
            count = f'count(koodrive_up{{job="{JOB}"}} == 1)'
            await prom.wait(count, lambda r: r and r[0]["value"][1] == "1500", timeout=30)
            # Several scrapes later every one still parsed whole, with every sample in it.
            await asyncio.sleep(4)
            scrapes = await prom.query(f'count_over_time(up{{job="{JOB}"}}[4s])')
            assert int(scrapes[0]["value"][1]) >= 3
            assert (await prom.query(f'min_over_time(up{{job="{JOB}"}}[4s])'))[0]["value"][1] == "1"
            # Every scrape held every sample: as many as the plain body has lines for.
            url = f"http://127.0.0.1:{exporter.addresses[0][1]}/metrics"
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                lines = (await response.text()).splitlines()
            expected = sum(1 for line in lines if line and not line.startswith("#"))
            assert expected > 8 * 1500
            for over_time in ("min_over_time", "max_over_time"):
                query = f'{over_time}(scrape_samples_scraped{{job="{JOB}"}}[4s])'
                assert int((await prom.query(query))[0]["value"][1]) == expected
            used = await prom.query('koodrive_space_used_bytes{account="tenant-1234"}')
            assert float(used[0]["value"][1]) > 0
    finally:
        await exporter.cleanup()


async def range_series(prom: Prometheus, started_at: float) -> dict[str, list]:
    """Each time-series panel's lines over the run: (legend, [(time, value)]); an empty
    list for a panel whose queries returned nothing."""
    out: dict[str, list] = {}
    for panel in panels(json.loads(DASHBOARD.read_text(encoding="utf-8"))):
        if panel["type"] != "timeseries":
            continue
        out.setdefault(panel["title"], [])
        for target in panel["targets"]:
            data = await prom.get(
                "/api/v1/query_range",
                query=substitute(target["expr"]),
                start=f"{started_at:.3f}",
                end=f"{time.time():.3f}",
                step="1",
            )
            for result in data["result"]:
                legend = re.sub(
                    r"\{\{(\w+)\}\}", lambda m, r=result: r["metric"].get(m[1], ""),
                    target["legendFormat"],
                )  # fmt: skip
                points = [(float(t), float(v)) for t, v in result["values"]]
                out.setdefault(panel["title"], []).append((legend, points))
    return out


async def wait_ready(
    session: aiohttp.ClientSession, url: str, process: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
        try:
            async with session.get(url + "/-/ready") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("Prometheus did not become ready within 30 s")


async def wait_alert(prom: Prometheus, name: str, account: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for alert in (await prom.get("/api/v1/alerts"))["alerts"]:
            labels = alert["labels"]
            if labels["alertname"] == name and labels.get("account") == account:
                return alert
        await asyncio.sleep(0.25)
    raise AssertionError(f"{name} for {account} did not appear within {timeout}s")
