"""One client's live view of a key: history from the table, then live events, in order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from conveyor.domain.events import TERMINAL_EXECUTION_EVENTS, TERMINAL_JOB_EVENTS, Event
from conveyor.events.hub import EventHub

Replay = Callable[[int, int], Awaitable[list[Event]]]
REPLAY_PAGE = 500


def terminal_for(key: str) -> Callable[[Event], bool]:
    """When a stream about ``key`` is over: its execution's or job's last event."""
    kind, _, ident = key.partition(":")
    if kind == "execution":
        return lambda e: e.execution_id == ident and e.type in TERMINAL_EXECUTION_EVENTS
    if kind == "job":
        return lambda e: e.job_id == ident and e.type in TERMINAL_JOB_EVENTS
    return lambda e: False


async def follow(
    hub: EventHub,
    key: str,
    *,
    replay: Replay,
    after: int,
    quota_owner: str,
    owner_filter: str | None = None,
    lifetime_s: float,
) -> AsyncIterator[Event]:
    """Every event of ``key`` with an id above ``after``, then live ones, until the
    terminal event, the stream's lifetime ends, or the consumer falls too far behind.

    The subscription starts before the history is read, and ids already sent are
    skipped, so nothing committed meanwhile is missed or sent twice.
    """
    is_terminal = terminal_for(key)
    subscription = hub.subscribe([key], owner=owner_filter, quota_owner=quota_owner)
    deadline = time.monotonic() + lifetime_s
    sent = after
    try:
        while True:
            page = await replay(sent, REPLAY_PAGE)
            for event in page:
                sent = event.id
                yield event
                if is_terminal(event):
                    return
            if len(page) < REPLAY_PAGE:
                break
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return  # the client reconnects with fresh credentials
            live = await subscription.next(min(remaining, 30.0))
            if subscription.overflowed:
                return  # too far behind: the client resumes from its last id
            if live is None or live.id <= sent:
                continue
            sent = live.id
            yield live
            if is_terminal(live):
                return
            await asyncio.sleep(0)
    finally:
        hub.unsubscribe(subscription)
