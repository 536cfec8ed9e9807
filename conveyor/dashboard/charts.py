"""Bar charts as geometry for server-rendered SVG (no chart library, no script).

A chart is a list of labelled bars, each made of stacked segments (one per series, e.g.
input and output tokens). Columns for a time axis, rows for categories with long names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

WIDTH = 640
ROW_H = 26
COLUMN_AREA_H = 180
LABEL_W = 170
VALUE_W = 90
TOP = 10
AXIS_H = 34
MAX_BARS = 60


@dataclass(frozen=True, slots=True)
class Segment:
    x: float
    y: float
    width: float
    height: float
    series: int  # CSS class series-<n>
    title: str  # tooltip: "label · series: value"


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value_text: str
    segments: list[Segment]
    label_x: float
    label_y: float
    value_x: float
    value_y: float


@dataclass(frozen=True, slots=True)
class Tick:
    position: float  # x for rows, y for columns
    text: str


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    orientation: str  # columns | rows
    width: int
    height: int
    bars: list[Bar]
    ticks: list[Tick]
    series: list[str]
    plot_left: float
    plot_right: float
    plot_top: float
    plot_bottom: float
    empty: bool


def nice_max(value: float) -> float:
    """A round axis maximum at or above ``value`` (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def chart(
    title: str,
    points: Sequence[tuple[str, Sequence[float]]],
    *,
    series: Sequence[str],
    fmt: Callable[[float], str],
    orientation: str = "rows",
) -> Chart:
    """Geometry for ``points`` (label, one value per series) as stacked bars."""
    shown = list(points)[-MAX_BARS:]
    totals = [sum(max(0.0, v) for v in values) for _, values in shown]
    top = nice_max(max(totals, default=0.0))
    ticks_at = [top * i / 4 for i in range(5)]
    bars: list[Bar] = []
    if orientation == "columns":
        height = TOP + COLUMN_AREA_H + AXIS_H
        left, right = 64.0, float(WIDTH - 10)
        bottom = float(TOP + COLUMN_AREA_H)
        slot = (right - left) / max(1, len(shown))
        bar_w = max(4.0, min(48.0, slot * 0.7))
        for i, ((label, values), total) in enumerate(zip(shown, totals, strict=True)):
            x = left + i * slot + (slot - bar_w) / 2
            y = bottom
            segments = []
            for n, value in enumerate(values):
                h = COLUMN_AREA_H * max(0.0, value) / top
                y -= h
                segments.append(Segment(x, y, bar_w, h, n, f"{label} · {series[n]}: {fmt(value)}"))
            bars.append(
                Bar(label, fmt(total), segments, x + bar_w / 2, bottom + 16, x + bar_w / 2, y - 4)
            )
        ticks = [Tick(bottom - COLUMN_AREA_H * t / top, fmt(t)) for t in ticks_at]
        plot = (left, right, float(TOP), bottom)
    else:
        height = TOP + max(1, len(shown)) * ROW_H + AXIS_H
        left, right = float(LABEL_W), float(WIDTH - VALUE_W)
        bottom = float(TOP + max(1, len(shown)) * ROW_H)
        for i, ((label, values), total) in enumerate(zip(shown, totals, strict=True)):
            y = TOP + i * ROW_H + 4
            x = left
            segments = []
            for n, value in enumerate(values):
                w = (right - left) * max(0.0, value) / top
                segments.append(
                    Segment(x, y, w, ROW_H - 8, n, f"{label} · {series[n]}: {fmt(value)}")
                )
                x += w
            middle = y + (ROW_H - 8) / 2 + 4
            bars.append(Bar(label, fmt(total), segments, left - 8, middle, x + 6, middle))
        ticks = [Tick(left + (right - left) * t / top, fmt(t)) for t in ticks_at]
        plot = (left, right, float(TOP), bottom)
    return Chart(
        title=title,
        orientation=orientation,
        width=WIDTH,
        height=height,
        bars=bars,
        ticks=ticks,
        series=list(series),
        plot_left=plot[0],
        plot_right=plot[1],
        plot_top=plot[2],
        plot_bottom=plot[3],
        empty=not shown,
    )


def short_usd(value: float) -> str:
    if value == 0:
        return "$0"
    if value < 0.01:
        # two significant digits: tiny per-call costs stay readable
        decimals = 1 - math.floor(math.log10(value))
        return f"${value:.{decimals}f}"
    if value < 100:
        return f"${value:.2f}"
    return f"${value:,.0f}"


def short_count(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}"
