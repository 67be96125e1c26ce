"""The landing page at `/`: which accounts are up, and for those that are not, why.

It says for a down account what `check` would: the reason, the HTTP status, KooDrive's code
and message, since when it has been failing, and the same hint (core/diagnosis.py). With
thousands of accounts it stays usable: a summary line first, failing accounts before the
rest, and at most LANDING_ROWS rows. Everything that came from the upstream or the config
is HTML-escaped.
"""

from __future__ import annotations

import html
import time
from collections import Counter

from .. import __version__
from ..core.model import PRIMARY, UsageBytes
from ..core.state import AccountState, CollectorState, ExporterState

LANDING_ROWS = 500
# Sort order of the states: what needs attention first.
_ORDER = {"down": 0, "pending": 1, "no overview": 2, "up": 3}


def render_landing(state: ExporterState, telemetry_path: str, now: float) -> str:
    accounts = [(name, account, _state_of(account)) for name, account in state.accounts.items()]
    counts = Counter(kind for _, _, kind in accounts)
    accounts.sort(key=lambda item: _ORDER[item[2]])  # stable: config order within a state
    rows = [_rows(name, account, kind, now) for name, account, kind in accounts[:LANDING_ROWS]]
    more = len(accounts) - LANDING_ROWS
    if more > 0:
        rows.append(
            f'<tr><td colspan="4">… and {more} more accounts, not shown (the metrics have '
            "them all)</td></tr>"
        )
    summary = ", ".join(f"{counts[kind]} {kind}" for kind in _ORDER if counts[kind])
    path = html.escape(telemetry_path, quote=True)
    return _PAGE.format(
        version=html.escape(__version__),
        path=path,
        rows="\n".join(rows),
        count=len(accounts),
        summary=summary or "no accounts",
    )


def _state_of(account: AccountState) -> str:
    poll = account.collectors.get(PRIMARY)
    if poll is None:
        return "no overview"
    if poll.last is None:
        return "pending"
    return "up" if poll.last.reason is None else "down"


def _rows(name: str, account: AccountState, kind: str, now: float) -> str:
    """The account's row, and for a down account a second row saying why."""
    poll = account.collectors.get(PRIMARY)
    last = poll.last if poll is not None else None
    state = {
        "up": '<span class="up">up</span>',
        "pending": '<span class="pending">pending</span>',
        "no overview": '<span class="pending">no overview collector</span>',
    }.get(kind) or f'<span class="down">down: {html.escape(str(last and last.reason))}</span>'
    success = poll.last_success if poll is not None else None
    usage = success.result if success is not None else None
    cells = f"<td>{html.escape(name)}</td><td>{state}</td>"
    if success is None or not isinstance(usage, UsageBytes):
        row = f"<tr>{cells}<td>never</td><td></td></tr>"
    else:
        row = f"<tr>{cells}<td>{_when(success.started_at, now)}</td><td>{_bar(usage)}</td></tr>"
    if kind == "down" and poll is not None:
        row += "\n" + _why(poll, now)
    return row


def _why(poll: CollectorState, now: float) -> str:
    last = poll.last
    assert last is not None
    facts = []
    if poll.failing_since is not None:
        facts.append(f"failing since {_when(poll.failing_since, now)}")
    if last.status is not None:
        facts.append(f"HTTP {last.status}")
    if last.api_code is not None:
        facts.append(f"KooDrive code {html.escape(last.api_code)}")
    if last.message:
        facts.append(f"message “{html.escape(last.message)}”")
    facts.append(f"detail: {html.escape(last.detail)}")
    hint = f'<br><span class="hint">{html.escape(last.hint.text)}</span>' if last.hint else ""
    return f'<tr class="why"><td></td><td colspan="3">{"; ".join(facts)}{hint}</td></tr>'


def _when(at: float, now: float) -> str:
    return (
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(at))} ({max(0.0, now - at):.0f}s ago)"
    )


def _bar(usage: UsageBytes) -> str:
    ratio = usage.used / usage.capacity if usage.capacity > 0 else 0.0
    return (
        f'<div class="bar"><div style="width:{min(ratio, 1.0) * 100:.1f}%"></div></div>'
        f"{ratio * 100:.1f}% of {human_bytes(usage.capacity)} "
        f"({human_bytes(usage.used)} used)"
    )


def human_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{value:.0f} B"
        value /= 1024
    raise AssertionError("unreachable")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>KooDrive Exporter</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>
body{{font-family:sans-serif;margin:2em;max-width:80em}} table{{border-collapse:collapse}}
td,th{{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}}
.up{{color:#1a7f37}} .down{{color:#cf222e}} .pending{{color:#9a6700}}
.bar{{display:inline-block;width:8em;height:.8em;background:#eee;margin-right:.5em}}
.bar div{{height:100%;background:#0969da}}
tr.why td{{border-bottom:1px solid #ddd;color:#57606a;font-size:.9em;overflow-wrap:anywhere}}
td:first-child{{white-space:nowrap}}
.hint{{color:#1f2328}}
</style></head><body>
<h1>KooDrive Exporter</h1>
<p>Version {version}. Metrics: <a href="{path}">{path}</a>.
Values are cached from background polls of the KooDrive space usage overview.</p>
<h2>Accounts ({count})</h2>
<p class="summary">{summary}. Failing accounts come first;
<code>koodrive-exporter check</code> diagnoses them one request at a time.</p>
<table><tr><th>Account</th><th>State</th><th>Last success</th><th>Used / capacity</th></tr>
{rows}
</table></body></html>
"""
