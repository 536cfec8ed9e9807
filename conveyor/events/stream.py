"""One client's live view of a key: history from the table, then live events, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from conveyor.domain.events import TERMINAL_EXECUTION_EVENTS, TERMINAL_JOB_EVENTS, Event
from conveyor.events.hub import EventHub, Subscription

Replay = Callable[[int, int], Awaitable[list[Event]]]
Finished = Callable[[], Awaitable[bool]]
Allowed = Callable[[], Awaitable[bool]]
REPLAY_PAGE = 500
#: at most this many queued events go out in one write
LIVE_BATCH = 64
RECHECK_S = 30.0


def terminal_for(key: str) -> Callable[[Event], bool]:
    """When a stream about ``key`` is over: its execution's or job's last event."""
    kind, _, ident = key.partition(":")
    if kind == "execution":
        return lambda e: e.execution_id == ident and e.type in TERMINAL_EXECUTION_EVENTS
    if kind == "job":
        return lambda e: e.job_id == ident and e.type in TERMINAL_JOB_EVENTS
    return lambda e: False


def open_subscription(
    hub: EventHub, key: str, *, quota_owner: str, owner_filter: str | None = None
) -> Subscription:
    """Subscribe before answering (a quota refusal is then a 429, not a broken stream)."""
    return hub.subscribe([key], owner=owner_filter, quota_owner=quota_owner)


async def follow(
    hub: EventHub,
    key: str,
    subscription: Subscription,
    *,
    replay: Replay,
    after: int,
    lifetime_s: float,
    finished: Finished | None = None,
    still_allowed: Allowed | None = None,
    recheck_s: float = RECHECK_S,
) -> AsyncIterator[list[Event]]:
    """Every event of ``key`` with an id above ``after``, then live ones, until the
    terminal event, the stream's lifetime ends, or the consumer falls too far behind;
    in batches (never empty) of what is at hand, so a busy stream writes less often.

    The subscription was opened before the history is read, and ids already sent are
    skipped, so nothing committed meanwhile is missed or sent twice. A client resuming
    after the terminal event (``finished`` says so) gets the rest and the stream ends.
    ``still_allowed`` is asked every ``recheck_s``: a revoked caller's stream ends.
    """
    is_terminal = terminal_for(key)
    clock = asyncio.get_running_loop().time  # the clock Subscription.next waits on
    deadline = clock() + lifetime_s
    next_check = clock() + recheck_s
    sent = after

    def fresh(found: list[Event]) -> tuple[list[Event], bool]:
        """The events above ``sent``, up to and including a terminal one."""
        nonlocal sent
        batch: list[Event] = []
        for event in found:
            if event.id <= sent:
                continue
            sent = event.id
            batch.append(event)
            if is_terminal(event):
                return batch, True
        return batch, False

    try:
        while True:
            page = await replay(sent, REPLAY_PAGE)
            batch, over = fresh(page)
            if batch:
                yield batch
            if over:
                return
            if len(page) < REPLAY_PAGE:
                break
        if finished is not None and await finished():
            # over before the resume point: only what is already queued may be newer
            batch, _ = fresh(subscription.ready(subscription.capacity))
            if batch:
                yield batch
            return
        while True:
            now = clock()
            if now >= deadline:
                return  # the client reconnects with fresh credentials
            if now >= next_check:
                if still_allowed is not None and not await still_allowed():
                    return
                next_check = now + recheck_s
            live = await subscription.next(min(deadline, next_check))
            if subscription.closed:
                return  # too far behind, or the server stops: the client resumes from its last id
            if live is None:
                continue
            queued = [live, *subscription.ready(LIVE_BATCH - 1)]
            batch, over = fresh(queued)
            if batch:
                yield batch
            if over:
                return
            if len(queued) == LIVE_BATCH:
                # more may be waiting and next() would not suspend: let others run
                await asyncio.sleep(0)
    finally:
        hub.unsubscribe(subscription)
