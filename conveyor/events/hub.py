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
    """Events for some keys, in id order; ``owner`` (if set) filters queue events."""

    keys: set[str]
    owner: str | None
    capacity: int
    quota_owner: str = ""
    queue: asyncio.Queue[Event] = field(init=False)
    overflowed: bool = False
    closed: bool = False
    registered: bool = True

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.capacity)

    def wants(self, event: Event) -> bool:
        return self.owner is None or event.owner == self.owner

    def offer(self, event: Event) -> None:
        if self.closed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # a consumer this far behind is cut off; it resumes from the table
            self.overflowed = True
            self.closed = True

    async def next(self, timeout: float | None = None) -> Event | None:
        """The next event, or ``None`` after ``timeout`` seconds or once cut off."""
        if self.overflowed:
            return None
        if not self.queue.empty():
            return self.queue.get_nowait()
        try:
            # asyncio.timeout, unlike wait_for on 3.11, does not start a task per call
            async with asyncio.timeout(timeout):
                return await self.queue.get()
        except TimeoutError:
            return None

    def ready(self, limit: int) -> list[Event]:
        """Up to ``limit`` events already queued, without waiting."""
        found: list[Event] = []
        while len(found) < limit and not self.queue.empty():
            found.append(self.queue.get_nowait())
        return found


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
                sub.closed = True

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
        sub.closed = True
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
