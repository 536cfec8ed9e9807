"""One stream's buffer in the event hub: order, waiting, deadlines, overflow, close."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from conveyor.domain.events import Event
from conveyor.events.hub import Subscription


def event(n: int) -> Event:
    return Event(
        id=n,
        type="job.progress",
        owner="alice",
        job_id="job-1",
        execution_id=None,
        step_id=None,
        queue="default",
        data={"n": n},
        created_at=datetime.now(UTC),
    )


def subscription(capacity: int = 10) -> Subscription:
    return Subscription({"job:job-1"}, None, capacity, "alice")


async def test_buffered_events_come_out_in_order_without_waiting() -> None:
    sub = subscription()
    for n in (1, 2, 3):
        sub.offer(event(n))
    until = asyncio.get_running_loop().time() + 60
    first = await sub.next(until)
    assert first is not None and first.id == 1
    assert [e.id for e in sub.ready(10)] == [2, 3]
    assert sub.ready(10) == []


async def test_a_waiting_reader_wakes_for_the_next_event() -> None:
    sub = subscription()
    loop = asyncio.get_running_loop()
    loop.call_soon(sub.offer, event(7))
    got = await sub.next(loop.time() + 60)
    assert got is not None and got.id == 7


async def test_the_deadline_ends_a_wait_and_the_timer_is_reused() -> None:
    sub = subscription()
    loop = asyncio.get_running_loop()
    until = loop.time() + 0.05
    assert await sub.next(until) is None
    alarm = sub._alarm
    # the deadline has passed: the same deadline answers at once, with no new timer
    assert await sub.next(until) is None
    assert sub._alarm is alarm
    sub.offer(event(1))
    got = await sub.next(until)
    assert got is not None and got.id == 1


async def test_a_reader_too_far_behind_is_cut_off() -> None:
    sub = subscription(capacity=2)
    for n in (1, 2, 3):
        sub.offer(event(n))
    assert sub.overflowed and sub.closed
    assert await sub.next(asyncio.get_running_loop().time() + 60) is None
    sub.offer(event(4))  # ignored once closed
    assert [e.id for e in sub.ready(10)] == [1, 2]


async def test_close_wakes_the_reader_and_cancels_its_timer() -> None:
    sub = subscription()
    loop = asyncio.get_running_loop()
    reader = asyncio.ensure_future(sub.next(loop.time() + 60))
    await asyncio.sleep(0)
    alarm = sub._alarm
    assert alarm is not None and not alarm.cancelled()
    sub.close()
    assert await reader is None
    assert alarm.cancelled()
    # closed for good: a later wait answers at once instead of waiting for nothing
    assert await sub.next(loop.time() + 60) is None
