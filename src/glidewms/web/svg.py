"""Line charts as server-rendered SVG: no JavaScript library to vendor, and a
plot is in the page the moment it loads (the browser tests read its path).

Every text placed in the SVG (titles, series labels) is escaped: series
labels come from the services (entry names, states) and are input."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
MAX_SERIES = 8  # legends beyond this are unreadable: the largest are drawn


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]  # (Unix time, value)


def nice_max(value: float) -> float:
    """The axis top: 1, 2 or 5 times a power of ten at or above `value`."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if m * power >= value:
            return float(m * power)
    return float(10 * power)  # pragma: no cover - the loop returns


def _number(value: float) -> str:
    if value >= 1000 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.2g}"


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    since: float,
    until: float | None = None,
    unit: str = "",
    width: int = 640,
    height: int = 220,
) -> Markup:
    """One chart: time on x (UTC), values on y from 0; one path per series
    with its points, a legend; "no data yet" when there are no points."""
    until = time.time() if until is None else until
    left, right, top, bottom = 56, 150, 26, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    drawn = sorted(series, key=lambda s: -max((v for _, v in s.points), default=0))[:MAX_SERIES]
    drawn = sorted(drawn, key=lambda s: s.label)
    highest = max((v for s in drawn for _, v in s.points), default=0.0)
    y_top = nice_max(highest)
    span = max(until - since, 1.0)

    def x(t: float) -> float:
        return left + plot_w * min(max((t - since) / span, 0.0), 1.0)

    def y(v: float) -> float:
        return top + plot_h * (1 - min(max(v / y_top, 0.0), 1.0))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'aria-label="{escape(title)}">',
        f'<text x="{left}" y="16" class="chart-title">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="chart-area"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        value = y_top * frac
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            'class="chart-grid"/>'
            f'<text x="{left - 4}" y="{y(value) + 4:.1f}" text-anchor="end" class="chart-tick">'
            f"{escape(_number(value))}{escape(unit)}</text>"
        )
    for frac in (0.0, 0.5, 1.0):
        t = since + span * frac
        label = time.strftime("%H:%M", time.gmtime(t))
        anchor = ("start", "middle", "end")[int(frac * 2)]
        parts.append(
            f'<text x="{x(t):.1f}" y="{height - 8}" text-anchor="{anchor}" class="chart-tick">'
            f"{label}{' UTC' if frac == 1.0 else ''}</text>"
        )
    if not any(s.points for s in drawn):
        parts.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle" '
            'class="chart-empty">no data yet</text>'
        )
    for i, s in enumerate(drawn):
        color = PALETTE[i % len(PALETTE)]
        points = sorted(p for p in s.points if since <= p[0] <= until + 60)
        if points:
            d = " ".join(
                f"{'M' if j == 0 else 'L'}{x(t):.1f},{y(v):.1f}" for j, (t, v) in enumerate(points)
            )
            if len(points) == 1:  # a lone point: a dot, still a path with a point
                d += " l0.1,0"
            parts.append(
                f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2" '
                f'class="chart-line" data-series="{escape(s.label)}" '
                f'data-points="{len(points)}"/>'
            )
        ly = top + 12 + 16 * i
        parts.append(
            f'<rect x="{left + plot_w + 10}" y="{ly - 9}" width="10" height="10" fill="{color}"/>'
            f'<text x="{left + plot_w + 24}" y="{ly}" class="chart-legend">'
            f"{escape(s.label[:22])}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
