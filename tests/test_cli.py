"""The command line, run as real processes: config check, demo, serve, signals."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import pty
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from support import (
    APP_SECRET,
    ROOT,
    SCRIPT,
    TOKEN,
    metrics_text,
    read_until,
    reap,
    run_cli,
    samples,
    spawn,
    start_pair,
    stop_process,
    two_account_config,
    value,
    wait_metrics,
)

from exporter import __version__
from exporter.core import build
from exporter.sim.simulator import Growth


def test_console_script_and_module_agree_on_version() -> None:
    script = run_cli("--version")
    module = subprocess.run(
        [sys.executable, "-m", "exporter", "--version"], capture_output=True, text=True, check=False
    )
    assert script.returncode == module.returncode == 0
    assert script.stdout == module.stdout
    revision = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    lines = script.stdout.splitlines()
    assert lines[0].startswith(f"koodrive-exporter, version {__version__} (branch: ")
    assert lines[0].endswith(f", revision: {revision})")  # read from .git, as git has it
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "build user",
        "build date",
        "python version",
        "platform",
    ]
    assert lines[3].endswith(f"CPython {platform.python_version()}")


def test_a_build_record_is_read_and_cleaned(tmp_path: Path) -> None:
    """What the Dockerfile writes is taken; what no build writes (a control character, a
    huge value, a record that is not a mapping) never reaches --version or a label."""
    record = tmp_path / "build_info.json"
    fields = {"revision": "abc123", "branch": "v1\n\x1b[31m", "date": "\ud800", "user": "x" * 10**6}
    record.write_text(json.dumps(fields))  # ASCII: the lone surrogate as an escape
    assert build._recorded(record) == {
        "revision": "abc123",
        "branch": "unknown",
        "date": "unknown",
        "user": "x" * 100,
    }
    for data in (b"[1, 2]", b"{not json", b'{"branch": "\xed\xa0\x80"}'):
        record.write_bytes(data)
        assert build._recorded(record) is None
    assert build._recorded(tmp_path / "absent.json") is None
    # Read as any file whose path is not ours: never a FIFO's wait, never more than 4 MiB.
    record.write_text(json.dumps({"revision": "abc123", "pad": "x" * (4 << 20)}))
    assert build._recorded(record) is None
    record.unlink()
    os.mkfifo(record)
    assert build._recorded(record) is None


def test_a_checkouts_revision_is_read_from_git_and_only_from_git(tmp_path: Path) -> None:
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "packed-refs").write_text(f"# pack-refs\n{'a' * 40} refs/heads/main\n")
    assert build._from_git(tmp_path) == {"branch": "main", "revision": "a" * 40}
    (git / "refs" / "heads" / "main").write_text("b" * 40 + "\n")
    assert build._from_git(tmp_path) == {"branch": "main", "revision": "b" * 40}
    (tmp_path / "secret").write_text("s3cret\n")
    (git / "HEAD").write_text("ref: refs/../../secret\n")
    assert build._from_git(tmp_path) == {}
    (git / "HEAD").unlink()
    os.mkfifo(git / "HEAD")
    assert build._from_git(tmp_path) == {}


def test_config_check_ok(tmp_path: Path) -> None:
    result = run_cli(
        "--config.check", "--config.file", str(two_account_config("https://x.y", tmp_path))
    )
    assert (result.returncode, result.stdout) == (0, "config OK: 2 accounts\n")


def test_config_check_names_negative_interval_and_missing_secret(tmp_path: Path) -> None:
    path = two_account_config("https://x.y", tmp_path)
    text = path.read_text().replace("interval: 60s", "interval: -5s")
    path.write_text(text)
    (tmp_path / "app-secret").unlink()
    result = run_cli("--config.check", f"--config.file={path}")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "config error: defaults.interval: must be a positive duration" in result.stderr
    assert "config error: accounts[0].auth.app_secret_file: no such file" in result.stderr


def test_start_without_config_explains_itself(tmp_path: Path) -> None:
    """The error, and a hint at --demo for a person at a terminal; a pod's log (stderr not
    a terminal) gets the error alone."""
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "config error: config.yaml: no such file\n"
    primary, secondary = pty.openpty()
    with os.fdopen(primary, "rb", buffering=0) as terminal:
        done = subprocess.run(
            [str(SCRIPT)], cwd=tmp_path, stderr=secondary, stdout=subprocess.DEVNULL, timeout=30
        )
        os.close(secondary)
        text = terminal.read(4096).decode()
    assert done.returncode == 1
    assert "config.yaml: no such file" in text
    assert "hint: try `koodrive-exporter --demo`" in text


def test_bad_flags_are_usage_errors() -> None:
    assert run_cli("--web.listen-address", "nonsense").returncode == 2
    assert run_cli("--web.telemetry-path", "metrics").returncode == 2
    assert run_cli("--log.level", "loud").returncode == 2
    assert run_cli("--log.format", "xml").returncode == 2


async def test_demo_is_up_within_five_seconds_and_stops_cleanly() -> None:
    started = time.monotonic()
    process = await spawn("--demo", "--web.listen-address", "127.0.0.1:0")
    try:
        assert process.stdout is not None
        url = await read_until(process.stdout, r"^Metrics:\s+(\S+)")
        both_up = False
        collectors = ("overview", "subscription", "quota_tiers")
        while time.monotonic() - started < 5 and not both_up:
            text = await metrics_text(url)
            both_up = all(
                value(text, "koodrive_collector_up", account=name, collector=collector) == 1
                for name in ("demo-app", "demo-token")
                for collector in collectors
            )
            await asyncio.sleep(0.05)
        up_after = time.monotonic() - started
        assert both_up, f"demo accounts' collectors not all up within 5 s:\n{text}"
        assert value(text, "koodrive_space_used_bytes", account="demo-app") > 0
        assert value(text, "koodrive_up", account="demo-token") == 1
        assert value(text, "koodrive_subscription_users_limit", account="demo-token") > 0
        assert value(text, "koodrive_quota_tier_used_bytes", account="demo-app", quota="1") >= 0
        assert await stop_process(process) < 5
        print(f"demo: both accounts up {up_after:.2f}s after the process started")
    finally:
        await reap(process)


async def test_separate_simulator_and_exporter_processes(tmp_path: Path) -> None:
    sim_dir, exp_dir = tmp_path / "sim", tmp_path / "exp"
    sim_dir.mkdir()
    exp_dir.mkdir()
    simulator = await spawn(
        "simulate", "--listen", "127.0.0.1:0",
        "--config", str(two_account_config("http://127.0.0.1:1", sim_dir)),  # the old spelling
        "--log.level=warn", "--log.format=logfmt",
    )  # fmt: skip
    exporter = None
    try:
        assert simulator.stdout is not None
        sim_url = await read_until(simulator.stdout, r"^KooDrive simulator: (\S+)")
        config = two_account_config(sim_url, exp_dir, interval="1s")
        exporter = await spawn(
            f"--config.file={config}", "--web.listen-address=127.0.0.1:0", "--log.format=json"
        )
        assert exporter.stderr is not None
        urls = json.loads(await read_until(exporter.stderr, r'"urls": (\[[^\]]*\])'))
        deadline = time.monotonic() + 6
        text = ""
        while time.monotonic() < deadline:
            text = await metrics_text(urls[0] + "/metrics")
            if _up(text) == {"acme": 1, "beta": 1}:
                break
            await asyncio.sleep(0.1)
        assert _up(text) == {"acme": 1, "beta": 1}
        for name in ("acme", "beta"):
            growth = Growth.for_account(name)
            capacity = value(text, "koodrive_space_capacity_bytes", account=name)
            allocated = value(text, "koodrive_space_allocated_bytes", account=name)
            assert capacity == growth.capacity_kb * 1024
            assert allocated == growth.allocation_kb * 1024
        assert await stop_process(exporter, signal.SIGINT) < 5
        out, err = await exporter.communicate()
        for secret in (APP_SECRET, TOKEN, "Signature="):
            assert secret not in err.decode()
            assert secret not in out.decode()
    finally:
        await reap(exporter, simulator)


def _up(text: str) -> dict[str, float]:
    """koodrive_up by account: every account the body has, and nothing else."""
    return {
        dict(labels)["account"]: number
        for (name, labels), number in samples(text).items()
        if name == "koodrive_up"
    }


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_port_in_use_is_a_clean_error(sig: int) -> None:
    first = await spawn("--demo", "--web.listen-address", "127.0.0.1:0")
    try:
        assert first.stdout is not None
        url = await read_until(first.stdout, r"^Exporter:\s+(\S+)/")
        second = await spawn("--demo", "--web.listen-address", url.removeprefix("http://"))
        code = await asyncio.wait_for(second.wait(), 10)
        assert second.stderr is not None
        err = (await second.stderr.read()).decode()
        assert code == 1
        assert "cannot_listen" in err
        assert "Traceback" not in err
        assert await stop_process(first, sig) < 5
    finally:
        await reap(first)


GAMMA = """  - name: gamma
    user_id: "1505084218764547202"
    auth:
      token_file: token
"""


async def test_sighup_adds_an_account(tmp_path: Path) -> None:
    simulator, exporter, _, url, config = await start_pair(tmp_path, sim_extra=GAMMA)
    try:
        await wait_metrics(url, lambda t: value(t, "koodrive_up", account="beta") == 1)
        config.write_text(config.read_text() + GAMMA)
        exporter.send_signal(signal.SIGHUP)
        text = await wait_metrics(url, lambda t: _up(t) == {"acme": 1, "beta": 1, "gamma": 1})
        assert value(text, "koodrive_exporter_config_last_reload_successful") == 1
        assert await stop_process(exporter) < 5
    finally:
        await reap(exporter, simulator)


async def test_sigterm_while_polls_hang_exits_within_five_seconds(tmp_path: Path) -> None:
    simulator, exporter, sim_url, url, _ = await start_pair(tmp_path, interval="10s")
    try:
        await wait_metrics(url, lambda t: value(t, "koodrive_up", account="beta") == 1)
        async with aiohttp.ClientSession() as session:
            for name in ("acme", "beta"):
                fault_url = f"{sim_url}/-/sim/accounts/{name}/fault"
                async with session.put(fault_url, json={"kind": "hang"}) as response:
                    assert response.status == 200
        # Restart the polls so they hit the hang now: SIGHUP with a changed timeout.
        (tmp_path / "exp" / "config.yaml").write_text(
            (tmp_path / "exp" / "config.yaml").read_text().replace("timeout: 1s", "timeout: 9s")
        )
        exporter.send_signal(signal.SIGHUP)
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                async with session.get(f"{sim_url}/-/sim/accounts") as response:
                    outcomes = (await response.json())["outcomes"]
                if outcomes.get("fault:hang", 0) >= 2:
                    break
                await asyncio.sleep(0.1)
        assert outcomes.get("fault:hang", 0) >= 2, outcomes
        took = await stop_process(exporter)
        assert took < 5
        print(f"SIGTERM with two polls hanging: exited 0 after {took:.2f}s")
    finally:
        await reap(exporter, simulator)


async def test_container_healthcheck_probe(tmp_path: Path) -> None:
    """The image's HEALTHCHECK command, against a live exporter and against nothing."""

    async def healthcheck(port: str) -> int:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "exporter.healthcheck",
            env={**os.environ, "KOODRIVE_HEALTHCHECK_PORT": port},
        )  # fmt: skip
        return await asyncio.wait_for(process.wait(), 15)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = str(sock.getsockname()[1])
    assert await healthcheck(free) == 1
    process = await spawn("--demo", "--web.listen-address", "127.0.0.1:0")
    try:
        assert process.stdout is not None
        url = await read_until(process.stdout, r"^Exporter:\s+(\S+)/")
        assert await healthcheck(url.rsplit(":", 1)[1]) == 0
        assert await stop_process(process) < 5
    finally:
        await reap(process)
