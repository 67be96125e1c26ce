"""Draw the dashboard's panel grid as SVG, with live values, for the README.

It reads the real dashboard JSON (titles, grid positions, units), so the picture cannot
drift from the dashboard; the end-to-end test fills in values that Prometheus returned.
"""

from __future__ import annotations

import html
import time
from typing import Any

COLUMN = 50  # px per grid column (24 columns)
ROW = 28  # px per grid row
LINE = 16


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


def render(dashboard: dict[str, Any], values: dict[str, list[tuple[str, float]]]) -> str:
    """`values` maps a panel title to (legend, value) pairs to print inside the panel."""
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
        room = max(0, int((y + h - top) // LINE))
        for index, (legend, value) in enumerate(lines[:room]):
            text = f"{legend}: {format_value(value, unit, now)}"
            out.append(f'<text x="{x + 12}" y="{top + index * LINE:.0f}" fill="#1a7f37">'
                       f"{html.escape(text)}</text>")  # fmt: skip
        if not lines:
            out.append(f'<text x="{x + 12}" y="{top:.0f}" fill="#6e7781">no data</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
