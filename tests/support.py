"""Helpers shared by the test modules: one place, so no test module imports another."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import trustme
from aiohttp import web
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from exporter.core.endpoints import Endpoint
from exporter.core.settings import AccountConfig, Config, Secret, SecretRef, TokenAuth
from exporter.core.state import CollectorState, ExporterState
from exporter.log import make_logger
from exporter.sim.simulator import Simulator
from exporter.web.server import Settings, create_app, serve
from exporter.web.webconfig import load_web_config

# --- credentials, logs, configs, waiting --------------------------------------------

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


def write_secret_files(directory: Path) -> tuple[Path, Path]:
    app_secret = directory / "app-secret"
    token = directory / "token"
    app_secret.write_text(APP_SECRET + "\n", encoding="utf-8")
    token.write_text(TOKEN + "\n", encoding="utf-8")
    return app_secret, token


def two_account_config(
    endpoint: str,
    directory: Path,
    interval: str = "60s",
    timeout: str = "1s",
    extra: str = "",
) -> Path:
    """The issue's config shape: one app account with a secret file, one token account;
    `extra` is more YAML for `defaults` (indented by two spaces)."""
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
{extra}
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


def in_ci() -> bool:
    """Whether this run is CI, where a missing tool or privilege fails instead of skipping.

    CI systems spell it differently ("true", "1", "yes", "True"), so anything set other than
    "0" or "false" (any case) counts; checking for "true" alone made CI=1 runs skip.
    """
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false"}


def required_tool(name: str, package: str = "prometheus") -> str:
    """Path of a real tool. Missing is a failure, never a skip: ./scripts/test installs it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run ./scripts/test, which installs Debian's {package}")
    return path


def run_tsc(
    package: Path, work: Path, files: list[str], paths: dict[str, list[str]]
) -> subprocess.CompletedProcess[str]:
    """Type-check `files` in `work` (strict, no output) with the TypeScript pinned by the
    npm package directory `package`, resolving imports through `paths`.

    A JSON document written as a typed object literal gets TypeScript's excess-property
    check, which refuses unknown keys that open JSON schemas let through.
    """
    tsc = package / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        pytest.fail(f"{tsc} missing: ./scripts/test installs it (npm ci in {package})")
    node = node_binary()
    tsconfig = {
        "compilerOptions": {
            "strict": True,
            "noEmit": True,
            "target": "es2022",
            "module": "esnext",
            "moduleResolution": "bundler",
            "skipLibCheck": True,
            "types": [],
            "baseUrl": ".",
            "paths": paths,
        },
        "files": files,
    }
    (work / "tsconfig.json").write_text(json.dumps(tsconfig), encoding="utf-8")
    result = subprocess.run(
        [node, str(tsc), "-p", str(work / "tsconfig.json"), "--pretty", "false"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if result.returncode != 0:
        # Callers print stdout + stderr on failure; say which node ran it (see node_binary).
        result.stderr += f"\n[{node_version(node)}]"
    return result


def node_binary() -> str:
    """The node that runs the npm packages' checks (tsc, helm/schema-check/validate.js).

    ./scripts/test installs Debian's nodejs, which on bookworm is 18.20.4, although the
    @kubernetes-models packages declare node >= 22 (npm only warns); their verdicts were
    checked to be the same under node 18 (helm/schema-check/validate.js says how). A
    failure message should therefore name the node that gave it: node_version().
    """
    node = shutil.which("node")
    if node is None:
        pytest.fail("node missing: ./scripts/test installs it (Debian's nodejs)")
    return node


def node_version(node: str) -> str:
    """`node --version` and where it is, for failure messages of node-run checks."""
    try:
        result = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
        version = result.stdout.strip() or result.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as error:
        version = f"version unknown: {error}"
    return f"node {version} at {node}"


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


# --- clients from a second loopback address --------------------------------------------


def _no_port(sock: socket.socket) -> socket.socket:
    """Let the kernel pick the port at connect, for the whole 4-tuple. A bind to port 0
    alone takes a port no socket of that address uses, TIME_WAIT ones included: after a
    suite has left ~20,000 in TIME_WAIT, such binds fail with `Address already in use`."""
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
    return sock


def socket_from(source: str) -> socket.socket:
    """A non-blocking TCP socket bound to `source` (a loopback address), port chosen later."""
    sock = _no_port(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.bind((source, 0))
    sock.setblocking(False)
    return sock


async def connect_from(
    source: str, port: int, sock: socket.socket | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream to 127.0.0.1:`port` from `source` (or from `sock`, made by socket_from)."""
    sock = sock or socket_from(source)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


def connector_from(source: str, **options: object) -> aiohttp.TCPConnector:
    """An aiohttp connector whose connections come from `source`."""
    return aiohttp.TCPConnector(
        local_addr=(source, 0),
        socket_factory=lambda info: _no_port(socket.socket(info[0], info[1], info[2])),
        **options,  # type: ignore[arg-type]
    )


# --- a scripted upstream for the poller and the server ------------------------------


def account(
    name: str, interval: float = 0.1, timeout: float = 0.05, retries: int = 0, backoff: float = 1
) -> AccountConfig:
    return AccountConfig(
        name=name,
        user_id=name,
        auth=TokenAuth(token=SecretRef(key="token", value=Secret("t"))),
        endpoint="http://127.0.0.1:1",
        interval=interval,
        timeout=timeout,
        kilobyte=1000,
        retries=retries,
        backoff=backoff,
    )


def polls(state: ExporterState, name: str, collector: str = "overview") -> CollectorState:
    """One collector's record of one account (by default the overview's)."""
    return state.accounts[name].collectors[collector]


# The documented quotaUsed example (docs/koodrive-api.md section 3.1).
DOC_SUBSCRIPTION = {
    "spaceUsed": 7753298, "spaceCapacity": 10240, "deptSpaceQuota": 6144,
    "personalSpaceQuota": 2048, "groupSpaceQuota": 2048, "reservedSpaceQuota": 0,
    "spaceQuotaUsed": 327, "deptSpaceUsed": 1975057, "deptSpaceQuotaUsed": 42,
    "personalSpaceUsed": 3933426, "personalSpaceQuotaUsed": 35, "groupSpaceUsed": 1844815,
    "groupSpaceQuotaUsed": 250, "userCount": 20, "userMaxCount": 100,
    "packageDownloadExpires": 7, "productType": "1",
}  # fmt: skip


# What FakeSource answers for a successful poll, in KB as the API sends it.
SCRIPTED_OVERVIEW = {"totalAllocation": 1, "totalCapacity": 10, "totalUsed": 5}


class FakeSource:
    """Scripted upstream: per-account behaviour, with call and concurrency bookkeeping."""

    def __init__(self) -> None:
        self.behaviour: dict[str, object] = {}
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.collector_calls: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.in_flight: dict[str, int] = defaultdict(int)
        self.max_in_flight: dict[str, int] = defaultdict(int)
        self.rotated: set[str] = set()  # accounts whose secret "changes" at the next check
        self.skew: float | None = None
        self.notices: dict[str, list[tuple[str, dict[str, object]]]] = defaultdict(list)
        self.forgotten: list[tuple[list[str], list[str]]] = []  # (gone, kept) per forget()
        self._ids = 0

    def drain_notices(self, account: AccountConfig) -> list[tuple[str, dict[str, object]]]:
        return self.notices.pop(account.name, [])

    def forget(self, gone, keep) -> None:
        self.forgotten.append(([a.name for a in gone], [a.name for a in keep]))

    async def credentials_changed(self, account: AccountConfig) -> bool:
        if account.name in self.rotated:
            self.rotated.discard(account.name)
            self.behaviour.pop(account.name, None)
            return True
        return False

    def clock_skew(self, account: AccountConfig) -> float | None:
        return self.skew

    def new_trace_id(self) -> str:
        self._ids += 1
        return f"{self._ids:058d}"

    async def fetch(self, account: AccountConfig, endpoint: Endpoint, trace_id: str) -> object:
        name = account.name
        self.calls[name].append(asyncio.get_running_loop().time())
        self.collector_calls[(name, endpoint.name)].append(asyncio.get_running_loop().time())
        self.in_flight[name] += 1
        self.max_in_flight[name] = max(self.max_in_flight[name], self.in_flight[name])
        try:
            what = self.behaviour.get(name, "ok")
            if what == "hang":
                await asyncio.sleep(3600)
            if isinstance(what, float):
                await asyncio.sleep(what)
            if isinstance(what, list):  # a script of outcomes, one per call
                what = what.pop(0) if what else "ok"
            if isinstance(what, BaseException):
                raise what
            return endpoint.parse(SCRIPTED_OVERVIEW, account.kilobyte)
        finally:
            self.in_flight[name] -= 1


# --- a guarded server with TLS and basic auth ---------------------------------------

PASSWORD = "correct horse battery staple"


HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@dataclass
class Served:
    url: str
    app: web.Application
    ca: trustme.CA
    directory: Path

    def client_context(self, **versions: ssl.TLSVersion) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        for name, value in versions.items():
            setattr(context, name, value)
        return context


def write_pki(directory: Path, ca: trustme.CA, name: str = "server") -> None:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(directory / f"{name}.key"))
    cert.cert_chain_pems[0].write_to_path(str(directory / f"{name}.crt"))
    ca.cert_pem.write_to_path(str(directory / "ca.crt"))


async def serve_guarded(tmp_path: Path, web_yaml: str, **settings: object) -> AsyncIterator[Served]:
    ca = trustme.CA()
    write_pki(tmp_path, ca)
    (tmp_path / "web.yml").write_text(web_yaml, encoding="utf-8")
    web_config = load_web_config(tmp_path / "web.yml")
    source = FakeSource()
    app = create_app(
        Config(accounts=(account("acme", interval=5, timeout=1),)),
        LogCapture().log,
        Settings(
            source_factory=lambda _s: source,
            startup_window=0.01,
            web_config=web_config,
            web_config_file=str(tmp_path / "web.yml"),
            **settings,  # type: ignore[arg-type]
        ),
    )
    stop = asyncio.Event()
    urls: list[str] = []
    task = asyncio.create_task(serve(app, "127.0.0.1:0", LogCapture().log, stop, urls.extend))
    await wait_for(lambda: bool(urls) or task.done())
    try:
        yield Served(urls[0], app, ca, tmp_path)
    finally:
        stop.set()
        await task


TLS_AND_AUTH = f"""
tls_server_config:
  cert_file: server.crt
  key_file: server.key
basic_auth_users:
  alice: {HASH}
http_server_config:
  headers:
    X-Frame-Options: deny
"""


async def fetch(served: Served, path: str, **kwargs: object) -> tuple[int, dict[str, str], str]:
    context = kwargs.pop("ssl", served.client_context())
    async with (
        aiohttp.ClientSession() as session,
        session.get(served.url + path, ssl=context, **kwargs) as response,  # type: ignore[arg-type]
    ):
        return response.status, dict(response.headers), await response.text()


# --- the command line as a real process ---------------------------------------------

SCRIPT = Path(sys.executable).parent / "koodrive-exporter"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=30, cwd=cwd, check=False
    )


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(SCRIPT),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def read_until(stream: asyncio.StreamReader, pattern: str, timeout: float = 10) -> str:
    async with asyncio.timeout(timeout):
        while True:
            line = (await stream.readline()).decode()
            if not line:
                raise AssertionError(f"stream ended before {pattern!r}")
            match = re.search(pattern, line)
            if match:
                return match.group(1)


async def stop_process(process: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> float:
    """Send `sig`; return how long the process took to exit (it must exit 0)."""
    started = time.monotonic()
    process.send_signal(sig)
    try:
        code = await asyncio.wait_for(process.wait(), 10)
    finally:
        if process.returncode is None:
            process.kill()
    assert code == 0
    return time.monotonic() - started


async def reap(*processes: asyncio.subprocess.Process | None) -> None:
    """Kill whatever a test left running (a passing test has already stopped them)."""
    for process in processes:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()


async def metrics_text(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.text()


async def start_pair(tmp_path: Path, *exporter_args: str, sim_extra: str = "", interval="1s"):
    """A simulator process and an exporter process polling it; returns both and the URLs."""
    sim_dir, exp_dir = tmp_path / "sim", tmp_path / "exp"
    sim_dir.mkdir()
    exp_dir.mkdir()
    sim_config = two_account_config("http://127.0.0.1:1", sim_dir)
    sim_config.write_text(sim_config.read_text() + sim_extra)
    simulator = await spawn("simulate", "--listen", "127.0.0.1:0", "--config.file", str(sim_config))
    assert simulator.stdout is not None
    sim_url = await read_until(simulator.stdout, r"^KooDrive simulator: (\S+)")
    config = two_account_config(sim_url, exp_dir, interval=interval)
    exporter = await spawn(
        f"--config.file={config}", "--web.listen-address=127.0.0.1:0", "--log.format=json",
        *exporter_args,
    )  # fmt: skip
    assert exporter.stderr is not None
    urls = json.loads(await read_until(exporter.stderr, r'"urls": (\[[^\]]*\])'))
    return simulator, exporter, sim_url, urls[0], config


async def wait_metrics(url: str, predicate, timeout: float = 6) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = await metrics_text(url + "/metrics")
        if predicate(text):
            return text
        await asyncio.sleep(0.1)
    raise AssertionError(f"metrics never matched:\n{text}")


# --- the fault matrix config and the metrics text -----------------------------------

INTERVAL = 1.0
TIMEOUT = 0.4


def matrix_config(directory: Path, endpoint: str, names: list[str], **overrides: str) -> Path:
    """One account per name, alternating app and token auth, inline secrets from env-free text."""
    settings = {"interval": f"{INTERVAL}s", "timeout": f"{TIMEOUT}s", "retries": "1",
                "backoff": "50ms"} | overrides  # fmt: skip
    lines = ["defaults:", f"  endpoint: {endpoint}"]
    lines += [f"  {key}: {value}" for key, value in settings.items()]
    lines.append("accounts:")
    for index, name in enumerate(names):
        lines += [f"  - name: {name}", f'    user_id: "{1000 + index}"', "    auth:"]
        if index % 2:
            lines += [f'      token: "{TOKEN}-{index}"']
        else:
            lines += [f'      app_id: "app-{index}"', f'      app_secret: "{APP_SECRET}"']
    path = directory / "matrix.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def parse_metrics(text: str) -> dict[tuple[str, str], float]:
    """{(metric name, account[:reason]): value} for the per-account koodrive samples."""
    found: dict[tuple[str, str], float] = {}
    for (name, labels), number in samples(text).items():
        label = dict(labels)
        if name.startswith("koodrive_") and "account" in label:
            reason = label.get("reason")
            found[(name, label["account"] + (f":{reason}" if reason else ""))] = number
    return found


# --- the dashboard and the rules ----------------------------------------------------

ROOT = Path(__file__).parent.parent
DASHBOARD = ROOT / "dashboards" / "koodrive.json"


RULES = ROOT / "dashboards" / "koodrive-rules.yaml"


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.extend(panel.get("panels", []))
        if panel["type"] != "row":
            out.append(panel)
    return out


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


# --- the metrics text, read by prometheus_client's parsers ------------------------------

SampleKey = tuple[str, frozenset[tuple[str, str]]]


def families(text: str, *, openmetrics: bool = False) -> list[Metric]:
    """The metric families of a body, read by prometheus_client's 0.0.4 or OpenMetrics parser.

    The one reader of metrics text in the tests: a malformed body fails here, in the parser
    Prometheus' own client ships, rather than slipping past a regex.
    """
    if openmetrics:
        return list(openmetrics_families(text))
    return list(text_string_to_metric_families(text))


def samples(text: str, *, openmetrics: bool = False) -> dict[SampleKey, float]:
    """{(sample name, frozenset of its labels): value}; a sample that appears twice fails."""
    found: dict[SampleKey, float] = {}
    for family in families(text, openmetrics=openmetrics):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, f"duplicate sample {key}"
            found[key] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` with exactly these labels, or None when absent."""
    return samples(text).get((name, frozenset(labels.items())))
