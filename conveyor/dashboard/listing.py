"""List pages' shared parts: filter values from the query string and page links."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Query

from conveyor.errors import InvalidInputError

PAGE_SIZE = 25
#: a list page's query parameters: a filter value, the first and the last day
Filter = Annotated[str | None, Query(max_length=200)]
DateFrom = Annotated[str | None, Query(alias="from", max_length=10)]
DateTo = Annotated[str | None, Query(alias="to", max_length=10)]


def choice(value: str | None, allowed: Iterable[str]) -> str | None:
    """``value`` if it is one of ``allowed``; empty means no filter."""
    if not value:
        return None
    if value not in set(allowed):
        raise InvalidInputError(f"unknown filter value {value!r}")
    return value


def text(value: str | None) -> str | None:
    """A free-text filter (trimmed; empty means no filter)."""
    value = (value or "").strip()
    return value or None


def day_start(value: str | None) -> datetime | None:
    """``2026-01-31`` as the first instant of that UTC day."""
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise InvalidInputError("dates are YYYY-MM-DD") from None
    return datetime.combine(day, time.min, tzinfo=UTC)


def day_end(value: str | None) -> datetime | None:
    """``2026-01-31`` as the first instant after that UTC day (an inclusive "to")."""
    start = day_start(value)
    return None if start is None else start + timedelta(days=1)


def page_url(path: str, filters: Mapping[str, str | None], cursor: str | None = None) -> str:
    """The URL of a list page with the same filters (and ``cursor`` for the next page)."""
    query = {k: v for k, v in filters.items() if v}
    if cursor:
        query["cursor"] = cursor
    return f"{path}?{urlencode(query)}" if query else path


def page_links(
    path: str, filters: Mapping[str, str | None], next_cursor: str | None, cursor: str | None
) -> dict[str, Any]:
    """``next_url`` and ``first_url`` of a list page (``None`` where there is none)."""
    return {
        "next_url": None if next_cursor is None else page_url(path, filters, next_cursor),
        "first_url": page_url(path, filters) if cursor else None,
    }
