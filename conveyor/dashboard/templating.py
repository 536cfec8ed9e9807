"""The Jinja2 environment of the dashboard: autoescaping everywhere, and the filters the
templates use to show engine data (which includes untrusted agent output) as text."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from conveyor.engine.views import public_error

TEMPLATES = Path(__file__).parent / "templates"

#: status names that have a CSS class; anything else is shown as "unknown"
KNOWN_STATUSES = frozenset(
    {
        "pending",
        "queued",
        "delayed",
        "active",
        "running",
        "awaiting_input",
        "completed",
        "failed",
        "cancelled",
        "answered",
        "expired",
        "idle",
        "busy",
        "unhealthy",
        "draining",
        "stopped",
        "paused",
    }
)
TERMINAL = frozenset({"completed", "failed", "cancelled"})
#: shown for a missing value (an en dash)
DASH = "\u2013"


def pretty_json(value: Any) -> str:
    """JSON for a ``<pre>`` block. A plain string (never Markup), so autoescaping turns
    ``<script>`` in agent output into visible text."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def status_class(status: Any) -> str:
    """A CSS class for a status; unknown values never reach the class attribute."""
    text = str(status)
    return f"status-{text}" if text in KNOWN_STATUSES else "status-unknown"


def when(value: datetime | str | None) -> str:
    """A timestamp as ``2026-01-31 12:00:03`` (UTC)."""
    if value is None:
        return DASH
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """How long ago, e.g. ``3 s ago``."""
    if value is None:
        return DASH
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    seconds = max(0.0, ((now or datetime.now(UTC)) - value).total_seconds())
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86_400:.0f} days ago"


def duration(start: datetime | None, end: datetime | None) -> str:
    """Elapsed time between two timestamps (up to now while still running)."""
    if start is None:
        return DASH
    finish = end or datetime.now(UTC)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    if finish.tzinfo is None:
        finish = finish.replace(tzinfo=UTC)
    seconds = max(0.0, (finish - start).total_seconds())
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def usd(value: float | None) -> str:
    if value is None:
        return DASH
    if value == 0:
        return "$0"
    if abs(value) < 0.01:
        return f"${value:.6f}"
    return f"${value:,.2f}"


def number(value: float | int | None) -> str:
    if value is None:
        return DASH
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.2f}"


def percent(value: float | None) -> str:
    """A 0-1 ratio as a percentage."""
    return DASH if value is None else f"{100 * value:.0f}%"


def build_environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        # every template is HTML or SVG: escape everything, always
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        pretty_json=pretty_json,
        when=when,
        ago=ago,
        usd=usd,
        number=number,
        percent=percent,
        # errors as clients see them: tracebacks stay in the database
        public_error=public_error,
    )
    env.globals.update(status_class=status_class, duration=duration, terminal=TERMINAL)
    return env


ENVIRONMENT = build_environment()
