"""Shared fixtures: loggers that capture output, secret files, a running simulator."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from exporter.core.config import Config, load_config
from exporter.log import make_logger
from exporter.sim.simulator import Simulator, start_simulator

APP_SECRET = "s3cr3t-app-ключ"
TOKEN = "Bearer+tok-0123456789abcdef"
APP_ID = "a378331eca141163119eb602adb67b7802cc79cd33ba44c7d2fe61d1586c96a1"


class LogCapture:
    """A JSON logger writing to memory, with helpers to read the lines back."""

    def __init__(self, level: str = "debug") -> None:
        self.stream = io.StringIO()
        self.log = make_logger(level, "json", self.stream)

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def events(self, name: str | None = None) -> list[dict[str, object]]:
        lines = [json.loads(line) for line in self.text.splitlines() if line.strip()]
        return [e for e in lines if name is None or e.get("event") == name]


@pytest.fixture
def logs() -> LogCapture:
    return LogCapture()


def write_secret_files(directory: Path) -> tuple[Path, Path]:
    app_secret = directory / "app-secret"
    token = directory / "token"
    app_secret.write_text(APP_SECRET + "\n", encoding="utf-8")
    token.write_text(TOKEN + "\n", encoding="utf-8")
    return app_secret, token


def two_account_config(
    endpoint: str, directory: Path, interval: str = "60s", timeout: str = "1s"
) -> Path:
    """The issue's config shape: one app account with a secret file, one token account."""
    app_secret, token = write_secret_files(directory)
    path = directory / "config.yaml"
    path.write_text(
        f"""
defaults:
  endpoint: {endpoint}
  interval: {interval}
  timeout: {timeout}
  language: en-US
  kilobyte: 1024
accounts:
  - name: acme
    user_id: "1505084218764547200"
    auth:
      app_id: "{APP_ID}"
      app_secret_file: {app_secret}
  - name: beta
    user_id: "1505084218764547201"
    auth:
      token_file: {token}
""",
        encoding="utf-8",
    )
    return path


@dataclass
class RunningSimulator:
    simulator: Simulator
    url: str
    config: Config
    config_path: Path


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


def required_tool(name: str) -> str:
    """Path of a real tool. Missing is a failure, never a skip: ./scripts/test installs it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run ./scripts/test, which installs Debian's prometheus")
    return path


@pytest.fixture
def promtool() -> str:
    return required_tool("promtool")


@pytest.fixture
def prometheus_binary() -> str:
    return required_tool("prometheus")


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)
