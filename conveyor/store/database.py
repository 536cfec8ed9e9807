"""The Database: one transaction is one synchronous function over a SQLAlchemy Connection.

All state-changing SQL in Conveyor is written once, as plain functions taking a
:class:`Tx` (a Core ``Connection`` plus the events and wake-ups the transaction
produces). A backend decides how to run such a function:

* SQLite runs it inline on the event loop between ``BEGIN IMMEDIATE`` and ``COMMIT``
  (a whole claim-and-complete batch costs a few hundred microseconds, far less than
  handing each statement to a driver thread); a locked database is waited for with an
  asynchronous back-off, never by blocking the loop.
* PostgreSQL runs it through psycopg's asyncio driver with ``AsyncConnection.run_sync``.

Events are written at the end of every write transaction with ids taken from a counter
row, so event ids are gap-free and in commit order on both backends.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, bindparam, update

from conveyor.domain.events import Event, NewEvent
from conveyor.store.schema import event_counter
from conveyor.store.sql import db_now
from conveyor.store.types import UtcDateTime, dumps

T = TypeVar("T")
log = logging.getLogger("conveyor.store")

CommitListener = Callable[[list[Event]], None]
#: every transaction that writes events notifies this channel with its last event id
EVENTS_CHANNEL = "conveyor_events"

_STAMP = UtcDateTime()
_EVENT_COLUMNS = "id, type, owner, job_id, execution_id, step_id, queue, data, created_at"


def _insert_events_sql(dialect: str) -> str:
    if dialect == "postgresql":
        values = "%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s"
        return f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES ({values})"
    return f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


_next_event_ids = (
    update(event_counter)
    .where(event_counter.c.id == 1)
    .values(last_id=event_counter.c.last_id + bindparam("count"))
    .returning(event_counter.c.last_id, db_now())
)


@dataclass
class Tx:
    """A write transaction in progress."""

    conn: Connection
    dialect: str
    events: list[NewEvent] = field(default_factory=list)
    notifications: set[tuple[str, str]] = field(default_factory=set)
    on_commit: list[Callable[[], None]] = field(default_factory=list)

    def emit(
        self,
        type: str,
        *,
        owner: str,
        job_id: str | None = None,
        execution_id: str | None = None,
        step_id: str | None = None,
        queue: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Record an event; it is written in this transaction, just before the commit."""
        self.events.append(NewEvent(type, owner, job_id, execution_id, step_id, queue, data or {}))

    def notify(self, channel: str, payload: str = "") -> None:
        """Wake listeners on ``channel`` after the commit (coalesced; a hint only)."""
        self.notifications.add((channel, payload))

    def after_commit(self, callback: Callable[[], None]) -> None:
        self.on_commit.append(callback)


class Listener(Protocol):
    """Delivers other processes' notifications (a hint: they can be lost)."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class Database(abc.ABC):
    """A connection to one Conveyor database (SQLite file or PostgreSQL)."""

    dialect: str
    url: str

    def __init__(self) -> None:
        self._commit_listeners: list[CommitListener] = []
        self._notification_listeners: dict[str, list[Callable[[str], None]]] = {}

    @abc.abstractmethod
    async def write(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in a write transaction and commit; retried whole on lock conflicts."""

    @abc.abstractmethod
    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a read-only snapshot."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    def listen(
        self,
        channels: list[str],
        on_notify: Callable[[str, str], None],
        on_reconnect: Callable[[], None] | None = None,
    ) -> Listener | None:
        """A listener for notifications other processes commit, if the backend has one."""
        return None

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Call ``listener`` with the events of every transaction this process commits."""
        self._commit_listeners.append(listener)

    def remove_commit_listener(self, listener: CommitListener) -> None:
        if listener in self._commit_listeners:
            self._commit_listeners.remove(listener)

    def add_notification_listener(self, channel: str, listener: Callable[[str], None]) -> None:
        """Call ``listener(payload)`` when this process commits a notification on
        ``channel`` (other processes learn of it through the backend, if it can tell)."""
        self._notification_listeners.setdefault(channel, []).append(listener)

    def remove_notification_listener(self, channel: str, listener: Callable[[str], None]) -> None:
        found = self._notification_listeners.get(channel, [])
        if listener in found:
            found.remove(listener)

    # -- shared by the backends ---------------------------------------------------------

    def _finish(self, tx: Tx) -> list[Event]:
        """Write the transaction's events; called last, just before COMMIT.

        Taking the ids last keeps the counter row locked for as short a time as possible
        (on PostgreSQL that row lock is what orders event ids by commit). The rows go
        straight to the driver's ``executemany``: this runs for every state change, and
        per-row statement processing would cost more than the insert itself.
        """
        if not tx.events:
            self._send_notifications(tx)
            return []
        count = len(tx.events)
        last_id, created_at = tx.conn.execute(_next_event_ids, {"count": count}).one()
        first = last_id - count + 1
        stamp = _STAMP.process_bind_param(created_at, tx.conn.dialect)
        rows = [
            (
                first + i,
                ev.type,
                ev.owner,
                ev.job_id,
                ev.execution_id,
                ev.step_id,
                ev.queue,
                dumps(ev.data),
                stamp,
            )
            for i, ev in enumerate(tx.events)
        ]
        tx.conn.exec_driver_sql(_insert_events_sql(tx.dialect), rows)
        tx.notify(EVENTS_CHANNEL, str(last_id))
        self._send_notifications(tx)
        if not self._commit_listeners:
            return []
        return [
            Event(
                first + i,
                ev.type,
                ev.owner,
                ev.job_id,
                ev.execution_id,
                ev.step_id,
                ev.queue,
                ev.data,
                created_at,
            )
            for i, ev in enumerate(tx.events)
        ]

    def _send_notifications(self, tx: Tx) -> None:  # noqa: B027 - optional hook
        """Backends with cross-process notifications send ``tx.notifications`` here."""

    def _committed(self, tx: Tx, recorded: list[Event]) -> None:
        for callback in tx.on_commit:
            try:
                callback()
            except Exception:  # a wake-up hint must never undo a committed transaction
                log.exception("after-commit callback failed")
        for channel, payload in tx.notifications:
            for notified in list(self._notification_listeners.get(channel, ())):
                try:
                    notified(payload)
                except Exception:
                    log.exception("notification listener failed")
        if recorded:
            for listener in list(self._commit_listeners):
                try:
                    listener(recorded)
                except Exception:
                    log.exception("commit listener failed")
