"""`koodrive-exporter check` against the simulator's faults over real loopback HTTP: the
verdict, the hint class, the exit status, the JSON shape, and no secret in any output."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from support import APP_SECRET, TOKEN, spawn, two_account_config

from exporter.check import CORRECTED, FAILED, OK, Result, run_checks, select
from exporter.core.config import load_config
from exporter.core.settings import Config
from exporter.sim.simulator import Fault, FaultKind, Simulator, start_simulator

JSON_KEYS = {
    "account", "collector", "endpoint_host", "auth", "verdict", "status", "code", "message",
    "latency_ms", "clock_offset_s", "reason", "detail", "body_head", "hint", "retried",
    "canonical_request", "string_to_sign",
}  # fmt: skip
LEAKS = (APP_SECRET, TOKEN, "Signature=", "HMAC-SHA256 AppId")


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[tuple[Simulator, str]]:
    simulator = Simulator(load_config(two_account_config("http://127.0.0.1:1", tmp_path)))
    runner, url = await start_simulator(simulator)
    try:
        yield simulator, url
    finally:
        await runner.cleanup()


def config_at(tmp_path: Path, url: str, extra: str = "") -> Config:
    directory = tmp_path / "exporter"
    directory.mkdir(exist_ok=True)
    return load_config(two_account_config(url, directory, interval="1s", extra=extra))


def by_account(results: list[Result]) -> dict[str, Result]:
    return {result.account: result for result in results}


@pytest.mark.parametrize(
    ("fault", "account", "verdict", "hint"),
    [
        (Fault(FaultKind.CLOCK_OFFSET, seconds=-300), "acme", CORRECTED, "clock_ahead"),
        (Fault(FaultKind.CLOCK_OFFSET, seconds=1200), "beta", CORRECTED, "clock_behind"),
        (Fault(FaultKind.EXPIRED_TOKEN), "beta", FAILED, "auth_token"),
        (Fault(FaultKind.WRONG_SIGNATURE), "acme", FAILED, "auth_app"),
        (Fault(FaultKind.RATE_LIMIT, retry_after="30"), "acme", FAILED, "rate_limited"),
        (Fault(FaultKind.MALFORMED_JSON), "beta", FAILED, "invalid_response"),
        (Fault(FaultKind.API_ERROR, code=13000201), "acme", FAILED, "api_error"),
        (Fault(FaultKind.HTTP_5XX, status=502), "acme", FAILED, "upstream_error"),
    ],
    ids=lambda v: v.kind.value if isinstance(v, Fault) else None,
)
async def test_a_fault_gets_its_verdict_and_hint(
    sim, tmp_path: Path, fault: Fault, account: str, verdict: str, hint: str
) -> None:
    simulator, url = sim
    simulator.set_fault(account, fault)
    config = config_at(tmp_path, url)
    results = by_account(await run_checks(config, config.accounts))
    checked = results[account]
    assert (checked.verdict, checked.hint.id if checked.hint else None) == (verdict, hint)
    assert checked.hint is not None
    assert len(checked.hint.text) > 40
    other = results["beta" if account == "acme" else "acme"]
    assert (other.verdict, other.hint, other.status) == (OK, None, 200)
    if verdict == CORRECTED:
        assert checked.retried
        assert checked.status == 200
        offset = fault.seconds
        assert checked.clock_offset_s is not None
        assert abs(checked.clock_offset_s - offset) < 2
        assert f"{abs(offset):.0f} s" in checked.hint.text
    else:
        assert not checked.retried


async def test_details_of_a_failure_are_reported(sim, tmp_path: Path) -> None:
    simulator, url = sim
    simulator.set_fault("acme", Fault(FaultKind.API_ERROR, code=13000201))
    simulator.set_fault("beta", Fault(FaultKind.MALFORMED_JSON))
    config = config_at(tmp_path, url)
    results = by_account(await run_checks(config, config.accounts))
    acme, beta = results["acme"], results["beta"]
    assert (acme.status, acme.code, acme.message) == (
        200,
        "13000201",
        "space missing or abnormal state",
    )
    assert acme.reason == "api_error"
    assert (beta.reason, beta.status) == ("invalid_response", 200)
    assert beta.body_head.startswith('{"code":0,"msg":"success","data":{"totalAlloca')
    assert acme.endpoint_host == url.removeprefix("http://")
    assert (acme.auth, beta.auth) == ("app", "token")
    assert acme.latency_ms is not None
    assert acme.latency_ms < 2000


async def test_wrong_secret_and_wrong_user_id_are_auth_failures(sim, tmp_path: Path) -> None:
    _, url = sim
    config = config_at(tmp_path, url)
    acme, beta = config.accounts
    secret = tmp_path / "exporter" / "app-secret"
    secret.write_text("not-the-secret\n", encoding="utf-8")
    wrong_user = dataclasses.replace(beta, user_id="999")
    results = by_account(await run_checks(config, [acme, wrong_user]))
    assert (results["acme"].verdict, results["acme"].hint.id) == (FAILED, "auth_app")
    assert (results["beta"].verdict, results["beta"].hint.id) == (FAILED, "auth_token")
    assert results["beta"].message == "unknown X-User-Id"


async def test_tls_with_a_private_ca_and_a_refused_connection(tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    simulator = Simulator(load_config(two_account_config("http://127.0.0.1:1", tmp_path)))
    runner, url = await start_simulator(simulator, ssl_context=server)
    try:
        config = config_at(tmp_path, url)
        closed = dataclasses.replace(config.accounts[1], endpoint="http://127.0.0.1:9")
        results = by_account(await run_checks(config, [config.accounts[0], closed]))
    finally:
        await runner.cleanup()
    assert (results["acme"].reason, results["acme"].hint.id) == ("tls", "tls")
    assert (results["beta"].reason, results["beta"].hint.id) == ("connection", "connection")
    assert results["beta"].status is None


async def test_every_collector_is_checked_and_accounts_can_be_selected(sim, tmp_path: Path):
    _, url = sim
    config = config_at(tmp_path, url, extra="  collectors: [overview, subscription, quota_tiers]")
    results = await run_checks(config, select(config, ["beta"]))
    assert [(r.account, r.collector, r.verdict) for r in results] == [
        ("beta", "overview", OK), ("beta", "subscription", OK), ("beta", "quota_tiers", OK),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="no account named 'nope'"):
        select(config, ["nope"])


async def run_command(*args: str) -> tuple[int, str, str]:
    process = await spawn("check", *args)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_the_command_exit_statuses_json_shape_and_no_secret_anywhere(sim, tmp_path: Path):
    simulator, url = sim
    config = config_at(tmp_path, url, extra="  collectors: [overview, quota_tiers]")
    path = config.source
    code, text, _ = await run_command("--config.file", path, "--verbose")
    assert code == 0, text
    assert text.endswith("4 passed, 0 failed\n")
    assert "canonical request:" in text
    assert "x-user-id:1505084218764547200" in text

    simulator.set_fault("acme", Fault(FaultKind.WRONG_SIGNATURE))
    simulator.set_fault("beta", Fault(FaultKind.EXPIRED_TOKEN, collector="quota_tiers"))
    code, out, err = await run_command("--config.file", path, "--output", "json", "--verbose")
    assert code == 2, err
    document = json.loads(out)
    assert [set(item) for item in document] == [JSON_KEYS] * 4
    verdicts = {(d["account"], d["collector"]): (d["verdict"], d["hint"]) for d in document}
    assert verdicts[("acme", "overview")][0] == FAILED
    assert verdicts[("acme", "overview")][1]["id"] == "auth_app"
    assert verdicts[("beta", "overview")] == (OK, None)
    assert verdicts[("beta", "quota_tiers")][1]["id"] == "auth_token"

    code, text_failed, _ = await run_command("--config.file", path, "--verbose")
    assert code == 2
    assert "hint (auth_app):" in text_failed
    bad = tmp_path / "bad.yaml"
    bad.write_text("accounts: []\n", encoding="utf-8")
    code, _, err = await run_command("--config.file", str(bad))
    assert (code, err.startswith("config error: accounts:")) == (1, True)
    code, _, err = await run_command("--config.file", path, "--account", "nope")
    assert (code, err) == (1, "config error: no account named 'nope' in the config\n")
    for output in (text, out, text_failed):
        for leak in LEAKS:
            assert leak not in output


async def test_two_accounts_take_under_two_seconds_and_a_thousand_under_thirty(
    sim, tmp_path: Path
) -> None:
    _, url = sim
    config = config_at(tmp_path, url)
    started = time.monotonic()
    code, _, _ = await run_command("--config.file", config.source)
    two = time.monotonic() - started
    assert code == 0
    assert two < 2, two

    many = tmp_path / "many"
    many.mkdir()
    lines = ["max_concurrency: 64", "defaults: {endpoint: PLACEHOLDER}", "accounts:"]
    lines += [f'  - {{name: t{i}, user_id: "{i}", auth: {{token: "T{i}"}}}}' for i in range(1000)]
    (many / "sim.yaml").write_text("\n".join(lines).replace("PLACEHOLDER", "http://127.0.0.1:1"))
    big = Simulator(load_config(many / "sim.yaml"))
    runner, big_url = await start_simulator(big)
    try:
        (many / "check.yaml").write_text("\n".join(lines).replace("PLACEHOLDER", big_url))
        started = time.monotonic()
        code, out, _ = await run_command("--config.file", str(many / "check.yaml"))
        thousand = time.monotonic() - started
    finally:
        await runner.cleanup()
    assert code == 0, out[-500:]
    assert out.endswith("1000 passed, 0 failed\n")
    assert thousand < 30, thousand
    print(f"\ncheck: 2 accounts {two:.2f}s, 1,000 accounts {thousand:.2f}s")
