"""Shared bits of the routers: paging parameters, headers, id checks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Query

Limit = Annotated[int, Query(ge=1, le=100, description="Page size (1-100).")]
Cursor = Annotated[
    str | None, Query(max_length=200, description="Opaque cursor from the previous page.")
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
