"""The in-process event bus: every committed event, in id order, to whoever subscribed.

Event ids are gap-free and in commit order (see :mod:`conveyor.store.database`), so the
hub keeps one number, the last id it delivered, and reads ``events WHERE id > last``
whenever it has reason to believe there is more: a commit in this process, a hint from
another process (NOTIFY on PostgreSQL, a datagram on SQLite), or a periodic tail read.
A lost hint therefore delays an event, never drops it, and subscribers always see ids
in increasing order.

Each subscriber has a bounded queue. One that falls behind is cut off (``overflowed``),
never buffered without bound; it resumes from the table with its last id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from conveyor.domain.events import Event
from conveyor.errors import ConveyorError, QuotaExceededError
from conveyor.store.database import EVENTS_CHANNEL, Database, Listener
from conveyor.store.schema import events

log = logging.getLogger("conveyor.events")

_READ_BATCH = 500


def event_keys(event: Event) -> list[str]:
    """The subscription keys an event is delivered to."""
    keys = []
    if event.execution_id:
        keys.append(f"execution:{event.execution_id}")
    if event.job_id:
        keys.append(f"job:{event.job_id}")
    if event.queue:
        keys.append(f"queue:{event.queue}")
    return keys


@dataclass(eq=False)
class Subscription:
    """Events for some keys, in id order; ``owner`` (if set) filters queue events.

    A bounded buffer and one waiting reader, without ``asyncio.Queue`` and its timer per
    wait: a thousand subscribers of one busy execution each wake once per event, so what
    a wake-up costs is what the fan-out costs. The reader's wake-up deadline is armed
    once and kept while it does not change (a stream's deadline moves every 30 s).
    """

    keys: set[str]
    owner: str | None
    capacity: int
    quota_owner: str = ""
    overflowed: bool = False
    closed: bool = False
    registered: bool = True
    _events: deque[Event] = field(init=False, default_factory=deque)
    _waiter: asyncio.Future[None] | None = field(init=False, default=None)
    _alarm: asyncio.TimerHandle | None = field(init=False, default=None)
    _alarm_at: float = field(init=False, default=-1.0)

    def wants(self, event: Event) -> bool:
        return self.owner is None or event.owner == self.owner

    def offer(self, event: Event) -> None:
        if self.closed:
            return
        if len(self._events) >= self.capacity:
            # a consumer this far behind is cut off; it resumes from the table
            self.overflowed = True
            self.closed = True
        else:
            self._events.append(event)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, until: float) -> Event | None:
        """The next event, or ``None`` once the event loop's clock passes ``until`` or
        once closed (cut off, unsubscribed, or the hub stopped)."""
        if self.closed:
            return None
        if self._events:
            return self._events.popleft()
        loop = asyncio.get_running_loop()
        if until <= loop.time():
            return None
        if until != self._alarm_at:
            if self._alarm is not None:
                self._alarm.cancel()
            self._alarm = loop.call_at(until, self._wake)
            self._alarm_at = until
        self._waiter = loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self.closed or not self._events:
            return None
        return self._events.popleft()

    def ready(self, limit: int) -> list[Event]:
        """Up to ``limit`` events already queued, without waiting."""
        found: list[Event] = []
        while len(found) < limit and self._events:
            found.append(self._events.popleft())
        return found

    def close(self) -> None:
        self.closed = True
        if self._alarm is not None:
            self._alarm.cancel()
            self._alarm = None
            self._alarm_at = -1.0
        self._wake()


class EventHub:
    def __init__(
        self,
        db: Database,
        *,
        poll_s: float = 1.0,
        subscriber_capacity: int = 1000,
        max_per_owner: int = 100,
    ) -> None:
        self.db = db
        self.poll_s = poll_s
        self.subscriber_capacity = subscriber_capacity
        self.max_per_owner = max_per_owner
        self.last_id = 0
        self._by_key: dict[str, set[Subscription]] = {}
        self._per_owner: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: Listener | None = None
        self.delivered = 0
        self.cut_off = 0

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self.last_id = int(
            await self.db.read(lambda c: c.execute(select(func.max(events.c.id))).scalar() or 0)
        )
        self.db.add_commit_listener(self._on_commit)
        self._listener = self.db.listen([EVENTS_CHANNEL], self._on_hint, self._poke)
        if self._listener is not None:
            self._listener.start()
        self._task = asyncio.create_task(self._pump(), name="conveyor-event-hub")

    async def stop(self) -> None:
        self.db.remove_commit_listener(self._on_commit)
        if self._listener is not None:
            await self._listener.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for subscribers in self._by_key.values():
            for sub in subscribers:
                sub.close()

    # -- subscribing ------------------------------------------------------------------------

    def subscribe(
        self, keys: Iterable[str], *, owner: str | None, quota_owner: str
    ) -> Subscription:
        """Start receiving events for ``keys`` (call before replaying history, so nothing
        committed in between is missed; dedupe by id)."""
        if self._per_owner.get(quota_owner, 0) >= self.max_per_owner:
            raise QuotaExceededError(
                f"at most {self.max_per_owner} open streams per user", retry_after_s=5
            )
        sub = Subscription(set(keys), owner, self.subscriber_capacity, quota_owner)
        self._per_owner[quota_owner] = self._per_owner.get(quota_owner, 0) + 1
        for key in sub.keys:
            self._by_key.setdefault(key, set()).add(sub)
        return sub

    def add_keys(self, sub: Subscription, keys: Iterable[str]) -> None:
        for key in keys:
            sub.keys.add(key)
            self._by_key.setdefault(key, set()).add(sub)

    def remove_keys(self, sub: Subscription, keys: Iterable[str]) -> None:
        for key in keys:
            sub.keys.discard(key)
            found = self._by_key.get(key)
            if found is not None:
                found.discard(sub)
                if not found:
                    del self._by_key[key]

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to ``sub`` (idempotent)."""
        if not sub.registered:
            return
        sub.registered = False
        sub.close()
        self.remove_keys(sub, list(sub.keys))
        remaining = self._per_owner.get(sub.quota_owner, 1) - 1
        if remaining <= 0:
            self._per_owner.pop(sub.quota_owner, None)
        else:
            self._per_owner[sub.quota_owner] = remaining

    @property
    def subscriber_count(self) -> int:
        return len({sub for subs in self._by_key.values() for sub in subs})

    # -- delivery ---------------------------------------------------------------------------

    def _on_commit(self, committed: list[Event]) -> None:
        # fast path: the very next ids, committed here, need no read
        if committed and committed[0].id == self.last_id + 1:
            self._deliver(committed)
        else:
            self._poke()

    def _on_hint(self, _channel: str, _payload: str) -> None:
        self._poke()

    def _poke(self) -> None:
        self._wake.set()

    def _deliver(self, batch: list[Event]) -> None:
        for event in batch:
            if event.id <= self.last_id:
                continue
            self.last_id = event.id
            seen: set[Subscription] = set()
            for key in event_keys(event):
                for sub in self._by_key.get(key, ()):
                    if sub not in seen and sub.wants(event):
                        seen.add(sub)
                        sub.offer(event)
                        if sub.overflowed:
                            self.cut_off += 1
            self.delivered += 1

    async def _pump(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()
            try:
                while True:
                    batch = await self._read_after(self.last_id)
                    self._deliver(batch)
                    if len(batch) < _READ_BATCH:
                        break
            except ConveyorError as exc:
                log.warning("event hub cannot read events: %s", exc)
            except Exception:
                log.exception("event hub read failed")

    async def _read_after(self, after: int) -> list[Event]:
        def body(conn: Any) -> list[Event]:
            rows = conn.execute(
                select(events).where(events.c.id > after).order_by(events.c.id).limit(_READ_BATCH)
            ).all()
            return [Event(**row._mapping) for row in rows]

        return await self.db.read(body)
