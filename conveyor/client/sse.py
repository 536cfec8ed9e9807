"""Reading Server-Sent Events (the subset Conveyor sends), with resume on reconnect."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx

from conveyor.client import calls
from conveyor.domain.events import TERMINAL_EXECUTION_EVENTS, TERMINAL_JOB_EVENTS


@dataclass(frozen=True, slots=True)
class Message:
    id: str | None
    event: str | None
    data: str


async def parse(lines: AsyncIterator[str]) -> AsyncIterator[Message]:
    """Messages of an event stream (comments and ``retry:`` are skipped)."""
    event_id: str | None = None
    event: str | None = None
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data:
                yield Message(event_id, event, "\n".join(data))
            event, data = None, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
        elif name == "event":
            event = value


async def follow_events(
    http: httpx.AsyncClient, kind: str, ident: str, *, after: int = 0, reconnects: int = 20
) -> AsyncIterator[dict[str, Any]]:
    """Events of an execution or a job until its terminal event, resuming with
    ``Last-Event-ID`` whenever the connection drops."""
    path = f"{calls.PREFIX}/{kind}s/{ident}/events"
    terminal = TERMINAL_EXECUTION_EVENTS if kind == "execution" else TERMINAL_JOB_EVENTS
    last = after
    failures = 0
    while True:
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(last)}
        try:
            async with http.stream("GET", path, headers=headers, timeout=None) as response:
                if response.status_code >= 400:
                    await response.aread()
                    calls.result(response)
                async for message in parse(response.aiter_lines()):
                    event: dict[str, Any] = json.loads(message.data)
                    last = int(event["id"])
                    failures = 0
                    yield event
                    own = event.get(f"{kind}_id") == ident
                    if (
                        own
                        and event["type"] in terminal
                        and (kind == "job" or not event.get("job_id"))
                    ):
                        return
        except httpx.TransportError as exc:
            failures += 1
            if failures > reconnects:
                raise calls.unreachable(str(http.base_url), exc) from exc
        await asyncio.sleep(min(5.0, 0.2 * 2 ** min(failures, 5)))
