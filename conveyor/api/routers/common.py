"""Shared bits of the routers: paging parameters, headers, id checks."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Header, Query
from pydantic import AwareDatetime, BeforeValidator

Limit = Annotated[int, Query(ge=1, le=100, description="Page size (1-100).")]
ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
Cursor = Annotated[
    str | None,
    Query(pattern=ID_PATTERN, description="next_cursor of the previous page."),
]
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


def _rfc3339(value: Any) -> Any:
    if isinstance(value, str) and not _RFC3339.match(value):
        raise ValueError("use an ISO 8601 date-time with a time zone, e.g. 2026-01-31T12:00:00Z")
    return value


Timestamp = Annotated[
    AwareDatetime | None,
    BeforeValidator(_rfc3339),
    Query(description="ISO 8601 date-time with a time zone."),
]
AfterEvent = Annotated[int, Query(ge=0, le=2**62, description="Only events with a larger id.")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=8,
        max_length=200,
        pattern=r"^[A-Za-z0-9_.:-]{8,200}$",
        description="Repeat-safe submission: the same key from the same user returns the "
        "original resource (200) instead of creating another.",
    ),
]
API_PREFIX = "/api/v1"
LastEventId = Annotated[
    int | None,
    Query(
        ge=0,
        le=2**62,
        description="Resume a stream after this event id (for clients "
        "that cannot send the Last-Event-ID header).",
    ),
]
StreamTicket = Annotated[
    str | None,
    Query(
        min_length=10,
        max_length=200,
        description="A single-use ticket from POST /stream-tickets (for browsers' EventSource).",
    ),
]
