"""The landing page explains a down account and stays usable with many accounts."""

from __future__ import annotations

from support import account

from exporter.core.model import Hint, Reason, Snapshot, UsageBytes
from exporter.core.state import ExporterState
from exporter.web.landing import LANDING_ROWS, render_landing

NOW = 1_700_000_000.0


def ok(name: str, at: float) -> Snapshot:
    return Snapshot(name, "overview", at, 0.1, "t", result=UsageBytes(1, 100, 25))


def down(name: str, at: float) -> Snapshot:
    return Snapshot(
        name, "overview", at, 0.1, "t", reason=Reason.AUTH, detail="HTTP 401 <x>",
        failures=(Reason.AUTH,), status=401, api_code="APIGW.0301",
        message='<script>alert("x")</script>', hint=Hint("auth_app", "Check the <AppId>."),
    )  # fmt: skip


def test_a_down_account_says_why_and_since_when() -> None:
    state = ExporterState([account("fine"), account("bad"), account("new")])
    state.record(ok("fine", NOW - 5))
    state.record(ok("bad", NOW - 600))
    state.record(down("bad", NOW - 300))
    state.record(down("bad", NOW - 60))  # still failing: the run began 300 s ago
    page = render_landing(state, "/metrics", NOW)
    assert "1 down, 1 pending, 1 up." in page
    assert page.index(">bad<") < page.index(">new<") < page.index(">fine<")
    assert "failing since 2023-11-14 22:08:20 UTC (300s ago)" in page
    assert "HTTP 401; KooDrive code APIGW.0301" in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<script>" not in page
    assert "Check the &lt;AppId&gt;." in page
    assert "25.0% of 100 B (25 B used)" in page


def test_many_accounts_are_bounded_with_the_failing_first() -> None:
    names = [f"acct-{i:04d}" for i in range(LANDING_ROWS + 100)]
    state = ExporterState([account(name) for name in names])
    for name in names[:-3]:
        state.record(ok(name, NOW - 5))
    for name in names[-3:]:
        state.record(down(name, NOW - 5))
    page = render_landing(state, "/metrics", NOW)
    assert f"{len(names) - 3} up" in page
    assert "3 down" in page
    assert page.count('<tr class="why">') == 3
    assert page.index(names[-1]) < page.index(names[0])  # failing first
    assert "… and 100 more accounts, not shown" in page
    assert page.count("<tr>") == LANDING_ROWS + 1 + 1  # header, rows, the note
