"""Shared fixtures: loggers that capture output, secret files, a running simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support import LogCapture, RunningSimulator, required_tool, two_account_config

from exporter.core.config import load_config
from exporter.sim.simulator import Simulator, start_simulator


@pytest.fixture
def logs() -> LogCapture:
    return LogCapture()


@pytest.fixture
async def simulated(tmp_path: Path) -> AsyncIterator[RunningSimulator]:
    """A simulator on loopback serving the two-account config, and that config pointed at it."""
    placeholder = two_account_config("http://127.0.0.1:1", tmp_path)
    simulator = Simulator(load_config(placeholder))
    runner, url = await start_simulator(simulator)
    config_path = two_account_config(url, tmp_path, interval="1s")
    try:
        yield RunningSimulator(simulator, url, load_config(config_path), config_path)
    finally:
        await runner.cleanup()


@pytest.fixture
def promtool() -> str:
    return required_tool("promtool")


@pytest.fixture
def prometheus_binary() -> str:
    return required_tool("prometheus")
