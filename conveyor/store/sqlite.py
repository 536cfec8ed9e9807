"""SQLite backend: WAL, ``BEGIN IMMEDIATE`` writes, asynchronous waiting for the lock."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool

from conveyor import faults
from conveyor.domain.events import Event
from conveyor.errors import StoreUnavailableError
from conveyor.store.database import Database, Listener, Tx
from conveyor.store.types import dumps
from conveyor.store.wake import WakeListener, WakeSender

T = TypeVar("T")
log = logging.getLogger("conveyor.store.sqlite")

_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_FULL = 13


def _sqlite_code(exc: BaseException) -> int | None:
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlite_errorcode", None)
    if code is None and isinstance(orig, sqlite3.OperationalError):
        text = str(orig)
        if "locked" in text or "busy" in text:
            return _SQLITE_BUSY
    return None if code is None else int(code) & 0xFF


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///...`` URL (any driver suffix)."""
    database = make_url(url).database
    if not database or database == ":memory:":
        raise StoreUnavailableError(
            "SQLite needs a file (sqlite:///path/to/conveyor.db): several connections "
            "and processes share it"
        )
    return database


class SqliteDatabase(Database):
    """One SQLite file shared by any number of processes.

    Writers take the lock up front with ``BEGIN IMMEDIATE`` (so a transaction never
    fails half-way on a lock), and a busy lock is retried with jittered asynchronous
    back-off instead of SQLite's blocking busy handler, so the event loop keeps serving.

    ``transactions`` counts reads and writes run; ``busy_retries`` how many of their
    tries found the file locked and waited (beyond the driver's 5 ms), for
    ``busy_wait_s`` seconds in all. The totals are logged when the database is closed.
    """

    dialect = "sqlite"

    def __init__(
        self,
        url: str,
        *,
        synchronous: str = "FULL",
        lock_timeout_s: float = 30.0,
    ) -> None:
        super().__init__()
        self.url = url
        path = sqlite_path(url)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock_timeout_s = lock_timeout_s
        self._engine: Engine = create_engine(
            f"sqlite+pysqlite:///{path}",
            poolclass=StaticPool,
            connect_args={"check_same_thread": False, "isolation_level": None},
            json_serializer=dumps,
        )
        pragmas = (
            "PRAGMA journal_mode=WAL",
            f"PRAGMA synchronous={synchronous}",
            # waiting happens in write() without blocking the loop; only a tiny
            # in-driver wait absorbs the checkpoint hand-offs readers can hit
            "PRAGMA busy_timeout=5",
            "PRAGMA temp_store=MEMORY",
            "PRAGMA cache_size=-32000",
        )

        @event.listens_for(self._engine, "connect")
        def _configure(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            for pragma in pragmas:
                cursor.execute(pragma)
            cursor.close()

        self._conn: Connection | None = None
        self._wake = WakeSender(path)
        self.transactions = 0
        self.busy_retries = 0
        self.busy_wait_s = 0.0

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = self._engine.connect()
            except DBAPIError as exc:
                raise StoreUnavailableError(
                    f"cannot open SQLite database {self.path}: {exc.orig}"
                ) from exc
        return self._conn

    async def write(self, fn: Callable[[Tx], T]) -> T:
        return await self._retrying(lambda: self._write_once(fn))

    async def read(self, fn: Callable[[Connection], T]) -> T:
        return await self._retrying(lambda: self._read_once(fn))

    def listen(
        self,
        channels: list[str],
        on_notify: Callable[[str, str], None],
        on_reconnect: Callable[[], None] | None = None,
    ) -> Listener | None:
        return WakeListener(self.path, channels, on_notify)

    def _committed(self, tx: Tx, recorded: list[Event]) -> None:
        super()._committed(tx, recorded)
        if tx.notifications and not faults.active("drop_notify"):
            self._wake.send(tx.notifications)

    async def close(self) -> None:
        if self.transactions:
            log.info(
                "SQLite %s: %d busy retries (%.3fs waited) over %d transactions",
                self.path,
                self.busy_retries,
                self.busy_wait_s,
                self.transactions,
            )
        self._wake.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._engine.dispose()

    def _write_once(self, fn: Callable[[Tx], T]) -> T:
        conn = self._connection()
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            tx = Tx(conn, self.dialect)
            result = fn(tx)
            recorded = self._finish(tx)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        self._committed(tx, recorded)
        return result

    def _read_once(self, fn: Callable[[Connection], T]) -> T:
        conn = self._connection()
        conn.exec_driver_sql("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.rollback()

    async def _retrying(self, attempt: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lock_timeout_s
        delay = 0.0005
        self.transactions += 1
        while True:
            try:
                return attempt()
            except DBAPIError as exc:
                code = _sqlite_code(exc)
                if code in (_SQLITE_BUSY, _SQLITE_LOCKED) and loop.time() < deadline:
                    pause = delay * (0.5 + random.random())
                    self.busy_retries += 1
                    self.busy_wait_s += pause
                    await asyncio.sleep(pause)
                    delay = min(delay * 2, 0.05)
                    continue
                if code == _SQLITE_FULL:
                    raise StoreUnavailableError(
                        "the SQLite database's disk is full; nothing was written"
                    ) from exc
                if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
                    raise StoreUnavailableError(
                        f"the SQLite database stayed locked for {self._lock_timeout_s:.0f}s"
                    ) from exc
                if isinstance(exc.orig, sqlite3.OperationalError):
                    raise StoreUnavailableError(f"SQLite error: {exc.orig}") from exc
                raise
