"""The landing page in a real browser: Debian's headless Chromium, driven over the DevTools
protocol on loopback, renders it with a healthy, a failing and a never-polled account.

What is checked is what a person sees: the rendered text (not the HTML source), that nothing
overflows a 1,280-pixel-wide window, and that the page logs no console error.
`KOODRIVE_WRITE_SCREENSHOT=1` refreshes the screenshot in docs/reference.md (docs/landing.png).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support import ROOT, LogCapture, required_tool

from exporter.core.config import load_config
from exporter.core.model import Usage
from exporter.sim.simulator import Fault, FaultKind, Simulator, start_simulator
from exporter.web.server import Settings, create_app

WIDTH = 1280
SCREENSHOT = ROOT / "docs" / "landing.png"
CONFIG = """
defaults: {{endpoint: "{url}", interval: 60s, timeout: 20s}}
accounts:
  - {{name: finance, user_id: "1", auth: {{token: "Bearer+finance"}}}}
  - {{name: research, user_id: "2", auth: {{token: "Bearer+research"}}}}
  - {{name: legal-archive, user_id: "3", auth: {{token: "Bearer+legal"}}}}
"""


class DevTools:
    """The smallest DevTools protocol client: commands with ids, events collected."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        command = next(self.ids)
        await self.socket.send_json({"id": command, "method": method, "params": params})
        async with asyncio.timeout(15):
            while True:
                message = json.loads((await self.socket.receive()).data)
                if message.get("id") == command:
                    assert "error" not in message, message
                    return message["result"]
                self.events.append(message)

    async def until(self, event: str) -> None:
        async with asyncio.timeout(15):
            while not any(e.get("method") == event for e in self.events):
                self.events.append(json.loads((await self.socket.receive()).data))

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"]["value"]


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[DevTools]:
    binary = required_tool("chromium")
    process = await asyncio.create_subprocess_exec(
        binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-extensions", "--disable-background-networking", "--remote-debugging-port=0",
        "--remote-debugging-address=127.0.0.1", f"--user-data-dir={tmp_path / 'profile'}",
        f"--window-size={WIDTH},900", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        endpoint = ""
        async with asyncio.timeout(30):
            while not endpoint:
                line = (await process.stderr.readline()).decode()
                assert line, "chromium exited before DevTools listened"
                match = re.search(r"DevTools listening on (ws://127\.0\.0\.1:\d+)/", line)
                endpoint = match[1] if match else ""
        http = endpoint.replace("ws://", "http://")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{http}/json/list") as response:
                pages = [t for t in await response.json() if t["type"] == "page"]
            async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield DevTools(ws)
    finally:
        process.kill()
        await process.wait()


@pytest.fixture
async def landing_url(tmp_path: Path) -> AsyncIterator[str]:
    """An exporter with one healthy account, one whose token expired, one never polled."""
    (tmp_path / "sim.yaml").write_text(CONFIG.format(url="http://127.0.0.1:1"))
    simulator = Simulator(load_config(tmp_path / "sim.yaml"))
    simulator.set_usage("finance", Usage(300 * 2**20, 1024 * 2**20, 712 * 2**20))
    simulator.set_fault("research", Fault(FaultKind.EXPIRED_TOKEN))
    simulator.set_fault("legal-archive", Fault(FaultKind.HANG))
    sim_runner, sim_url = await start_simulator(simulator)
    (tmp_path / "exporter.yaml").write_text(CONFIG.format(url=sim_url))
    settings = Settings(startup_window=0.05)
    app = create_app(load_config(tmp_path / "exporter.yaml"), LogCapture().log, settings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # until both answering accounts have been polled
                async with session.get(url) as response:
                    if "1 down, 1 pending, 1 up" in await response.text():
                        break
                await asyncio.sleep(0.05)
        yield url
    finally:
        await runner.cleanup()
        await sim_runner.cleanup()


async def test_the_landing_page_renders_in_chromium(landing_url: str, tmp_path: Path) -> None:
    async with chromium(tmp_path) as tab:
        await tab.send("Runtime.enable")
        await tab.send("Log.enable")
        await tab.send("Page.enable")
        await tab.send(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH, height=900, deviceScaleFactor=1, mobile=False,
        )  # fmt: skip
        await tab.send("Page.navigate", url=landing_url)
        await tab.until("Page.loadEventFired")
        text = await tab.evaluate("document.body.innerText")
        width = await tab.evaluate("document.documentElement.scrollWidth")
        clipped = await tab.evaluate(
            "[...document.querySelectorAll('td, p, h1, h2')]"
            ".filter(e => e.scrollWidth > e.clientWidth + 1).length"
        )
        height = await tab.evaluate("document.documentElement.scrollHeight")
        shot = await tab.send(
            "Page.captureScreenshot",
            format="png",
            clip={"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1},
        )
    assert "1 down, 1 pending, 1 up." in text
    lines = text.splitlines()
    order = [next(i for i, line in enumerate(lines) if line.startswith(n)) for n in
             ("research", "legal-archive", "finance")]  # fmt: skip
    assert order == sorted(order), "failing, then pending, then healthy"
    assert "down: auth" in text
    assert "HTTP 401; KooDrive code 401; message “access token expired”" in text
    assert "KooDrive refused the token: tokens expire after 20 idle minutes" in text
    assert "pending" in text
    assert "69.5% of 1.0 TiB (712.0 GiB used)" in text
    assert width <= WIDTH, f"the page is {width}px wide"
    assert clipped == 0
    errors = [
        e for e in tab.events
        if e.get("method") == "Runtime.exceptionThrown"
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
        or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
    ]  # fmt: skip
    assert errors == []
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG")
    if os.environ.get("KOODRIVE_WRITE_SCREENSHOT") == "1":
        SCREENSHOT.write_bytes(png)
