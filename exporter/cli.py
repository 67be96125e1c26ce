"""Command line: parse flags, load config, run. Nothing else lives here."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from . import __version__
from .check import render_json, render_text, run_checks, select
from .core.build import build_info, version_text
from .core.config import load_config
from .core.settings import Config, ConfigError
from .core.sharding import resolve_index
from .log import FORMATS, LEVELS, make_logger, route_stdlib_logging
from .signals import Signals
from .web.edge import MAX_CONNECTIONS
from .web.server import (
    Settings,
    check_telemetry_path,
    create_app,
    parse_listen_address,
    request_reload,
    serve,
)
from .web.webconfig import WebConfig, load_web_config

if TYPE_CHECKING:
    from .sim.simulator import Simulator


def run(argv: Sequence[str] | None = None, signals: Signals | None = None) -> int:
    signals = signals or Signals().install()
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["simulate"]:
        return _simulate(args_list[1:], signals)
    if args_list[:1] == ["check"]:
        signals.serving = False
        return _live_check(args_list[1:])
    args = _parser().parse_args(args_list)
    if args.version:
        print(version_text())
        return 0
    if args.config_schema:
        from .core.configschema import json_schema_text  # only this flag needs it

        sys.stdout.write(json_schema_text())
        return 0
    if args.config_check:
        signals.serving = False
        return _check(args.config_file, args.web_config_file)
    try:
        check_telemetry_path(args.telemetry_path)
        parse_listen_address(args.listen_address)
        if args.max_requests < 1:
            raise ValueError("--web.max-requests must be at least 1")
        if args.max_connections < 1:
            raise ValueError("--web.max-connections must be at least 1")
        if args.shard_count < 1:
            raise ValueError("--shard.count must be at least 1")
        args.shard_index = resolve_index(
            args.shard_index, args.shard_count, os.environ.get("HOSTNAME") or socket.gethostname()
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        web_config = load_web_config(args.web_config_file) if args.web_config_file else None
    except ConfigError as exc:
        _print_errors(exc, "web config error")
        return 1
    log = make_logger(args.log_level, args.log_format)
    route_stdlib_logging(args.log_level, args.log_format)
    if args.demo:
        return asyncio.run(_run_demo(args, log, web_config, signals))
    try:
        config = load_config(args.config_file)
    except ConfigError as exc:
        _print_errors(exc)
        if sys.stderr.isatty():  # a person trying it out, not a pod's log
            print(
                "hint: try `koodrive-exporter --demo` to run against the built-in simulator",
                file=sys.stderr,
            )
        return 1
    return asyncio.run(_run(config, args, log, web_config, signals))


def _add_config_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config.file",
        dest="config_file",
        default="config.yaml",
        help="YAML configuration file (default: %(default)s)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="koodrive-exporter",
        description="Prometheus exporter for Huawei Cloud KooDrive space usage. "
        "Run `koodrive-exporter check --help` to test a config against KooDrive, and "
        "`koodrive-exporter simulate --help` for the built-in KooDrive simulator.",
    )
    _add_config_file(parser)
    parser.add_argument(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the configuration, print the result and exit",
    )
    parser.add_argument(
        "--config.schema",
        dest="config_schema",
        action="store_true",
        help="print the JSON Schema of the configuration file (for editors and CI) and exit",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=":9877",
        help="address to serve metrics on (default: %(default)s)",
    )
    parser.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default="/metrics",
        help="path under which to expose metrics (default: %(default)s)",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default=None,
        help="exporter-toolkit web config file: TLS, basic auth, response headers",
    )
    parser.add_argument(
        "--web.max-requests",
        dest="max_requests",
        type=int,
        default=40,
        help="concurrent scrapes before answering 503 (default: %(default)s)",
    )
    parser.add_argument(
        "--web.max-connections",
        dest="max_connections",
        type=int,
        default=MAX_CONNECTIONS,
        help="open connections; at the cap an idle or unfinished one is closed to make room, "
        "else the new one is (default: %(default)s)",
    )
    parser.add_argument(
        "--web.protect-probes",
        dest="protect_probes",
        action="store_true",
        help="require basic auth on /-/healthy and /-/ready too (default: they are open)",
    )
    parser.add_argument(
        "--shard.count",
        dest="shard_count",
        type=int,
        default=1,
        help="number of replicas sharing the accounts (default: %(default)s)",
    )
    parser.add_argument(
        "--shard.index",
        dest="shard_index",
        default="0",
        help="this replica's shard, 0..count-1, or auto for a StatefulSet pod's ordinal",
    )
    parser.add_argument(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        help="allow reloading the config with POST /-/reload (SIGHUP always does)",
    )
    _add_log_flags(parser)
    parser.add_argument(
        "--demo",
        action="store_true",
        help="poll the built-in simulator with two demo accounts; no config",
    )
    # Not argparse's version action, which re-wraps the lines of a multi-line text.
    parser.add_argument("--version", action="store_true", help="print the build and exit")
    return parser


def _add_log_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log.level",
        dest="log_level",
        choices=LEVELS,
        default="info",
        metavar="{debug,info,warn,error}",
        help="least severe level logged (default: %(default)s)",
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        choices=FORMATS,
        default="auto",
        help="auto (the default): console on a terminal, JSON otherwise",
    )


def _check(path: str, web_config_file: str | None) -> int:
    failed = False
    if web_config_file:
        try:
            load_web_config(web_config_file)
        except ConfigError as exc:
            _print_errors(exc, "web config error")
            failed = True
    try:
        config = load_config(path)
    except ConfigError as exc:
        _print_errors(exc)
        return 1
    if failed:
        return 1
    print(f"config OK: {len(config.accounts)} accounts")
    return 0


def _live_check(argv: list[str]) -> int:
    """`check`: 0 when every live check passed, 1 for an invalid config, 2 when any failed."""
    parser = argparse.ArgumentParser(
        prog="koodrive-exporter check",
        description="Load the config like --config.check, then make one live signed request "
        "per account and collector and explain any failure.",
    )
    _add_config_file(parser)
    parser.add_argument(
        "--account", action="append", default=[], help="check only this account (repeatable)"
    )
    parser.add_argument("--output", choices=("text", "json"), default="text")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also print each canonical request and string to sign (they hold no secret)",
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config_file)
        accounts = select(config, args.account)
    except ConfigError as exc:
        _print_errors(exc)
        return 1
    except ValueError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 1
    results = asyncio.run(run_checks(config, accounts, verbose=args.verbose))
    if args.output == "json":
        sys.stdout.write(render_json(results))
    else:
        sys.stdout.write(render_text(results, config.source))
    return 0 if all(result.passed for result in results) else 2


def _print_errors(exc: ConfigError, kind: str = "config error") -> None:
    for error in exc.errors:
        print(f"{kind}: {error}", file=sys.stderr)


def _settings(args: argparse.Namespace, web_config: WebConfig | None) -> Settings:
    return Settings(
        telemetry_path=args.telemetry_path,
        web_config=web_config,
        web_config_file=args.web_config_file,
        max_requests=args.max_requests,
        max_connections=args.max_connections,
        protect_probes=args.protect_probes,
        shard_count=args.shard_count,
        shard_index=args.shard_index,
        freeze_gc=True,
    )


async def _run(
    config: Config,
    args: argparse.Namespace,
    log: structlog.typing.FilteringBoundLogger,
    web_config: WebConfig | None,
    signals: Signals,
) -> int:
    log.info(
        "starting",
        version=__version__,
        revision=build_info().revision,
        accounts=len(config.accounts),
        config_file=config.source,
        shard=f"{args.shard_index}/{args.shard_count}",
    )
    settings = dataclasses.replace(
        _settings(args, web_config),
        config_file=args.config_file,
        enable_lifecycle=args.enable_lifecycle,
    )
    app = create_app(config, log, settings)
    stop = asyncio.Event()
    signals.attach(stop, lambda: request_reload(app))
    return await _serve(app, args.listen_address, log, stop)


async def _serve(
    app: web.Application,
    address: str,
    log: structlog.typing.FilteringBoundLogger,
    stop: asyncio.Event,
    on_ready: Callable[[list[str]], None] | None = None,
) -> int:
    try:
        await serve(app, address, log, stop, on_ready)
    except OSError as exc:
        log.error("cannot_listen", address=address, error=exc.strerror or str(exc))
        return 1
    return 0


async def _run_demo(
    args: argparse.Namespace,
    log: structlog.typing.FilteringBoundLogger,
    web_config: WebConfig | None,
    signals: Signals,
) -> int:
    # The simulator is imported only here and in `simulate`: the production command never
    # loads it.
    from .sim.demo import demo_config, point_at
    from .sim.simulator import Simulator, start_simulator

    stop = asyncio.Event()
    signals.attach(stop)
    accounts = demo_config()
    simulator = Simulator(accounts)
    sim_runner, sim_url = await start_simulator(simulator)
    try:
        config = point_at(accounts, sim_url)

        def announce(urls: list[str]) -> None:
            base = urls[0].replace("0.0.0.0", "localhost").replace("[::]", "localhost")  # noqa: S104
            print(f"KooDrive simulator: {sim_url}", flush=True)
            print(f"Exporter:           {base}/", flush=True)
            print(f"Metrics:            {base}{args.telemetry_path}", flush=True)

        log.info("demo", simulator=sim_url, accounts=[a.name for a in config.accounts])
        app = create_app(config, log, _settings(args, web_config))
        return await _serve(app, args.listen_address, log, stop, announce)
    finally:
        await sim_runner.cleanup()


def _simulate(argv: list[str], signals: Signals) -> int:
    parser = argparse.ArgumentParser(
        prog="koodrive-exporter simulate",
        description="Serve a fake KooDrive overview API for the accounts of a config file.",
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:9878", help="host:port to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--config.file",
        "--config",  # the spelling of earlier releases
        dest="config_file",
        required=True,
        help="exporter config whose accounts to serve",
    )
    _add_log_flags(parser)
    args = parser.parse_args(argv)
    try:
        host, port = parse_listen_address(args.listen)
        config = load_config(args.config_file)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        _print_errors(exc)
        return 1
    log = make_logger(args.log_level, args.log_format)
    route_stdlib_logging(args.log_level, args.log_format)
    from .sim.simulator import Simulator

    simulator = Simulator(config)
    return asyncio.run(_run_simulator(simulator, host or "127.0.0.1", port, log, signals))


async def _run_simulator(
    simulator: Simulator,
    host: str,
    port: int,
    log: structlog.typing.FilteringBoundLogger,
    signals: Signals,
) -> int:
    from .sim.simulator import start_simulator

    stop = asyncio.Event()
    signals.attach(stop)
    try:
        runner, url = await start_simulator(simulator, host, port)
    except OSError as exc:
        log.error("cannot_listen", address=f"{host}:{port}", error=exc.strerror or str(exc))
        return 1
    print(f"KooDrive simulator: {url}", flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await stop.wait()
    await runner.cleanup()
    return 0
