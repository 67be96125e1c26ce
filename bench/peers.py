"""Peer servers for the benchmark, each serving the same per-account gauges.

    python bench/peers.py stock    --accounts N --port P   # prometheus_client start_http_server
    python bench/peers.py aio      --accounts N --port P   # a prometheus-aioexporter exporter
    python bench/peers.py ceiling  --body FILE --port P    # aiohttp serving FILE's bytes
    python bench/peers.py text     --accounts N            # the exposition text (for pushgateway)

All bind 127.0.0.1 only and run until killed (the suite stops them).
"""

from __future__ import annotations

import argparse
import sys
import time

GAUGES = (
    ("koodrive_space_capacity_bytes", "Total space quota in bytes."),
    ("koodrive_space_used_bytes", "Total space used in bytes."),
    ("koodrive_space_allocated_bytes", "Total space allocated in bytes."),
    ("koodrive_up", "1 if the last poll succeeded."),
    ("koodrive_last_success_timestamp_seconds", "Unix time of the last success."),
    ("koodrive_last_poll_duration_seconds", "Duration of the last poll."),
    ("koodrive_clock_skew_seconds", "Server minus local clock."),
)


def value(gauge: int, account: int) -> float:
    return float([1 << 40, (1 << 39) + account, 1 << 38, 1, 1.7e9 + account, 0.012, -0.4][gauge])


def names(count: int) -> list[str]:
    return [f"tenant-{i:05d}" for i in range(count)]


def text(count: int) -> str:
    lines = []
    for gauge, (name, documentation) in enumerate(GAUGES):
        lines.append(f"# HELP {name} {documentation}\n# TYPE {name} gauge\n")
        accounts = enumerate(names(count))
        lines += [f'{name}{{account="{a}"}} {value(gauge, i)}\n' for i, a in accounts]
    return "".join(lines)


def stock(count: int, port: int) -> None:
    from prometheus_client import Gauge, start_http_server

    for gauge, (name, documentation) in enumerate(GAUGES):
        metric = Gauge(name, documentation, ["account"])
        for i, account in enumerate(names(count)):
            metric.labels(account).set(value(gauge, i))
    start_http_server(port, addr="127.0.0.1")
    while True:
        time.sleep(3600)


def aio(count: int, port: int) -> None:
    from aiohttp.web import Application
    from prometheus_aioexporter import (
        EXPORTER_APP_KEY,
        Arguments,
        MetricConfig,
        PrometheusExporterScript,
    )

    class Peer(PrometheusExporterScript):
        """koodrive gauges served by prometheus-aioexporter."""

        name = "koodrive-bench-peer"

        def configure(self, args: Arguments) -> None:
            self.create_metrics(
                [MetricConfig(n, d, "gauge", labels=("account",)) for n, d in GAUGES]
            )

        async def on_application_startup(self, application: Application) -> None:
            metrics = application[EXPORTER_APP_KEY].registry.get_metrics()
            for gauge, (name, _) in enumerate(GAUGES):
                for i, account in enumerate(names(count)):
                    metrics[name].labels(account=account).set(value(gauge, i))

    Peer()("-H", "127.0.0.1", "-p", str(port), "-L", "error")


def ceiling(body: bytes, port: int) -> None:
    from aiohttp import web

    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["stock", "aio", "ceiling", "text"])
    parser.add_argument("--accounts", type=int, default=0)
    parser.add_argument("--body", help="ceiling: the file whose bytes to serve")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.kind == "text":
        sys.stdout.write(text(args.accounts))
    elif args.kind == "ceiling":
        with open(args.body, "rb") as file:
            ceiling(file.read(), args.port)
    else:
        {"stock": stock, "aio": aio}[args.kind](args.accounts, args.port)


if __name__ == "__main__":
    main()
