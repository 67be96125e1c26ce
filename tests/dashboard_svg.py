"""Draw the dashboard's panel grid as SVG, with live values, for docs/dashboards.md.

It reads the real dashboard JSON (titles, grid positions, units), so the picture cannot
drift from the dashboard; the end-to-end test fills in values that Prometheus returned, and
the time-series panels' lines from the range data it stored.
"""

from __future__ import annotations

import html
import time
from typing import Any

COLUMN = 50  # px per grid column (24 columns)
ROW = 28  # px per grid row
LINE = 16
COLORS = ("#0969da", "#1a7f37", "#bf3989", "#9a6700", "#8250df", "#cf222e", "#1b7c83")
Points = list[tuple[float, float]]


def format_value(value: float, unit: str, now: float) -> str:
    if unit == "bytes":
        for suffix in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
            if abs(value) < 1024 or suffix == "PiB":
                return f"{value:.1f} {suffix}" if suffix != "B" else f"{value:.0f} B"
            value /= 1024
    if unit == "percentunit":
        return f"{value * 100:.1f} %"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "reqps":
        return f"{value:.3f}/s"
    if unit == "dateTimeFromNow":
        days = (value / 1000 - now) / 86400
        return f"in {days:.1f} days"
    return f"{value:g}"


def plot(
    x: float, y: float, w: float, h: float, unit: str, lines: list[tuple[str, Points]]
) -> list[str]:
    """Polylines of `lines` in the box, scaled to the data (as Grafana without a fixed min),
    with the value range and the time span written at its edges."""
    points = [point for _, series in lines for point in series]
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    lo, hi = min(v for _, v in points), max(v for _, v in points)
    if hi - lo < abs(hi) * 1e-9 + 1e-12:
        lo, hi = lo - (abs(lo) * 0.01 or 1), hi + (abs(hi) * 0.01 or 1)
    span = max(t1 - t0, 1e-9)
    out = [f'<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="#ffffff" stroke="#eaeef2"/>']
    for index, (_, series) in enumerate(lines):
        coords = " ".join(
            f"{x + (t - t0) / span * w:.1f},{y + h - (v - lo) / (hi - lo) * h:.1f}"
            for t, v in series
        )
        color = COLORS[index % len(COLORS)]
        out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5"/>')
    now = t1
    for text, ty in (
        (format_value(hi, unit, now), y + 10),
        (format_value(lo, unit, now), y + h - 2),
    ):
        out.append(
            f'<text x="{x + 3}" y="{ty:.0f}" fill="#6e7781" font-size="10">'
            f"{html.escape(text)}</text>"
        )
    out.append(f'<text x="{x + w - 3}" y="{y + h + 11:.0f}" fill="#6e7781" font-size="10" '
               f'text-anchor="end">last {span:.0f} s</text>')  # fmt: skip
    return out


def render(
    dashboard: dict[str, Any],
    values: dict[str, list[tuple[str, float]]],
    series: dict[str, list[tuple[str, Points]]] | None = None,
) -> str:
    """`values` maps a panel title to (legend, value) pairs to print inside the panel;
    `series` maps a time-series panel's title to (legend, [(time, value)]) to draw."""
    series = series or {}
    panels = dashboard["panels"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) * ROW + 20
    width = 24 * COLUMN + 20
    now = time.time()
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    for panel in panels:
        grid = panel["gridPos"]
        x, y = 10 + grid["x"] * COLUMN, 10 + grid["y"] * ROW
        w, h = grid["w"] * COLUMN - 6, grid["h"] * ROW - 6
        title = html.escape(panel["title"])
        if panel["type"] == "row":
            out.append(f'<text x="{x}" y="{y + 18}" fill="#1f2328" font-size="15" '
                       f'font-weight="bold">{title}</text>')  # fmt: skip
            continue
        unit = panel["fieldConfig"]["defaults"]["unit"]
        out.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="3" fill="#f6f8fa" '
                   f'stroke="#d0d7de"/>')  # fmt: skip
        out.append(f'<text x="{x + 8}" y="{y + 18}" fill="#1f2328" font-weight="bold">'
                   f"{title}</text>")  # fmt: skip
        out.append(f'<text x="{x + 8}" y="{y + 18 + LINE}" fill="#6e7781" font-size="11">'
                   f'{panel["type"]} · unit {unit}</text>')  # fmt: skip
        lines = values.get(panel["title"], [])
        top = y + 18 + 2.5 * LINE
        drawn = [(legend, points) for legend, points in series.get(panel["title"], []) if points]
        text_x = x + 12
        if panel["type"] == "timeseries" and drawn:
            plot_w = w * 0.55
            out += plot(x + 8, top - LINE + 4, plot_w, y + h - top - 4, unit, drawn)
            text_x = x + 16 + plot_w
            colors = {legend: COLORS[i % len(COLORS)] for i, (legend, _) in enumerate(drawn)}
        else:
            colors = {}
        room = max(0, int((y + h - top) // LINE))
        for index, (legend, value) in enumerate(lines[:room]):
            text = f"{legend}: {format_value(value, unit, now)}"
            color = colors.get(legend, "#1a7f37")
            out.append(f'<text x="{text_x:.0f}" y="{top + index * LINE:.0f}" fill="{color}">'
                       f"{html.escape(text)}</text>")  # fmt: skip
        if not lines:
            out.append(f'<text x="{x + 12}" y="{top:.0f}" fill="#6e7781">no data</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
