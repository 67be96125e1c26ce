"""Whatever KooDrive answers, every place its text reaches stays valid and bounded.

Arbitrary JSON (huge strings, lone surrogates, control and terminal escape characters,
numeric strings far past int()'s 4,300-digit limit) is served over real loopback HTTP to the
real client, polled by the real poller, and then read back from every sink: the metrics
text and OpenMetrics (parsed by prometheus_client), the landing page (encoded as UTF-8), the
poll log line and `check`'s text and JSON. None may say `internal`, hold an unprintable
character or grow with the answer.
"""

from __future__ import annotations

import asyncio
import json
import random

import aiohttp
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import LogCapture, families

from exporter.check import check_one, render_json, render_text
from exporter.core.exposition import OPENMETRICS, TEXT, Exposition
from exporter.core.model import Reason
from exporter.core.poller import Poller
from exporter.core.settings import AccountConfig, Secret, SecretRef, TokenAuth
from exporter.core.state import ExporterState
from exporter.upstream.client import KooDriveClient
from exporter.upstream.credentials import CredentialStore
from exporter.web.landing import render_landing

HOSTILE_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["E\ud800", "\x1b[31mred\x1b[0m\n\rforged=1", "\u202e\u0000\ufeff"]),
    st.integers(min_value=1, max_value=300_000).map(lambda n: "X\n" * n),
)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=4_000, max_value=20_000).map(lambda n: "9" * n),
    st.integers(min_value=0, max_value=2**63 - 1).map(str),
    HOSTILE_TEXT,
)
ANSWERS = st.fixed_dictionaries(
    {},
    optional={
        "code": st.one_of(st.just("0"), st.just(0), HOSTILE_TEXT),
        "msg": HOSTILE_TEXT,
        "error_code": HOSTILE_TEXT,
        "data": st.fixed_dictionaries(
            {}, optional=dict.fromkeys(("totalAllocation", "totalCapacity", "totalUsed"), NUMBERS)
        ),
    },
)
# What one account's text may cost in any sink, far below what a hostile answer holds.
SINK_LIMIT = 4_000


def account(endpoint: str) -> AccountConfig:
    return AccountConfig(
        name="acme",
        user_id="1",
        auth=TokenAuth(token=SecretRef(key="token", value=Secret("t0k3n"))),
        endpoint=endpoint,
        interval=60.0,
        timeout=5.0,
        retries=0,
    )


def printable(text: str) -> bool:
    return all(ch.isprintable() or ch in "\n" for ch in text)


async def one_answer(status: int, document: dict[str, object]) -> None:
    body = json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")

    async def answer(_: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        configured = account(f"http://127.0.0.1:{port}")
        state = ExporterState((configured,))
        logs = LogCapture()
        async with aiohttp.ClientSession() as session:
            client = KooDriveClient(session, CredentialStore(), rng=random.Random(1))
            poller = Poller(client, state, logs.log, rng=random.Random(2))
            snapshot = await poller.poll_once(configured)
            checked = await check_one(session, CredentialStore(), configured, "overview")
    finally:
        await runner.cleanup()

    assert snapshot.reason is not Reason.INTERNAL
    exposition = Exposition(state)
    for fmt in (TEXT, OPENMETRICS):
        text = exposition.render(fmt).decode("utf-8")
        families(text, openmetrics=fmt is OPENMETRICS)  # parses, or the test fails
        assert 'reason="internal"' not in text
    page = render_landing(state, "/metrics", 0.0)
    page.encode("utf-8")  # a lone surrogate here made every GET / a 500
    assert len(page) < 10 * SINK_LIMIT
    for line in logs.text.splitlines():
        assert len(line) < SINK_LIMIT
        assert json.loads(line)["event"] != "poll_internal_error"
    report = render_text([checked], "test")
    assert len(report) < SINK_LIMIT
    assert printable(report)
    assert len(render_json([checked])) < SINK_LIMIT
    assert checked.reason != "internal"
    for text in (checked.code or "", checked.message, checked.detail, checked.body_head):
        assert printable(text)
        text.encode("utf-8")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(status=st.sampled_from([200, 401, 500]), document=ANSWERS)
def test_any_answer_reaches_every_sink_valid_and_bounded(
    status: int, document: dict[str, object]
) -> None:
    asyncio.run(one_answer(status, document))


def test_the_probes_findings_hold() -> None:
    """D1-D3 of the second hostile probe, exactly as found."""
    asyncio.run(one_answer(200, {"code": "0", "data": {"totalUsed": "9" * 5000}}))
    asyncio.run(one_answer(401, {"code": "X" * 900_000, "msg": "m" * 900_000}))
    asyncio.run(one_answer(200, {"code": "E\ud800", "msg": "\ud800"}))
