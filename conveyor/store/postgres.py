"""PostgreSQL backend: psycopg 3 (asyncio), NOTIFY wake-ups, LISTEN with reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from conveyor import faults
from conveyor.domain.events import Event
from conveyor.errors import StoreUnavailableError
from conveyor.store.database import Database, Listener, Tx
from conveyor.store.types import dumps

T = TypeVar("T")
log = logging.getLogger("conveyor.store.postgres")

# deadlock and serialization failures roll the whole transaction back: safe to rerun
_RETRYABLE_SQLSTATES = {"40001", "40P01"}
_notify = text("SELECT pg_notify(:channel, :payload)")


def _new_origin() -> str:
    """A tag unique to one Database instance: its listeners skip their own echo, since
    the instance already dispatched those notifications locally at commit."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def async_url(url: str) -> str:
    """Normalise ``postgres://``, ``postgresql://`` and friends to psycopg's driver."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """The same URL in the form psycopg's own ``connect()`` takes."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        statement_timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        call_deadline_s: float = 60.0,
    ) -> None:
        super().__init__()
        self.url = url
        self.origin = _new_origin()
        # A black-holed network never answers and server-side timeouts cannot fire for a
        # server that is not reached: every call also has a client-side deadline.
        self._deadline_s = call_deadline_s
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._engine: AsyncEngine = create_async_engine(
            async_url(url),
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            pool_timeout=connect_timeout_s + statement_timeout_s,
            json_serializer=dumps,
            connect_args={
                "connect_timeout": max(1, int(connect_timeout_s)),
                "options": f"-c statement_timeout={int(statement_timeout_s * 1000)}"
                " -c idle_in_transaction_session_timeout=60000",
            },
        )

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def write(self, fn: Callable[[Tx], T]) -> T:
        for attempt in range(6):
            try:
                result, tx, recorded = await self._bounded(self._write_once(fn))
                self._committed(tx, recorded)
                return result
            except DBAPIError as exc:
                if _sqlstate(exc) in _RETRYABLE_SQLSTATES and attempt < 5:
                    await asyncio.sleep(0.002 * (2**attempt) * (0.5 + random.random()))
                    continue
                raise self._translate(exc) from exc
            except TimeoutError as exc:
                raise StoreUnavailableError(
                    f"database call exceeded {self._deadline_s:.0f}s"
                ) from exc
            except OSError as exc:
                raise StoreUnavailableError(f"PostgreSQL unreachable: {exc}") from exc
        raise AssertionError("unreachable")

    async def read(self, fn: Callable[[Connection], T]) -> T:
        try:
            return await self._bounded(self._read_once(fn))
        except DBAPIError as exc:
            raise self._translate(exc) from exc
        except TimeoutError as exc:
            raise StoreUnavailableError(f"database call exceeded {self._deadline_s:.0f}s") from exc
        except OSError as exc:
            raise StoreUnavailableError(f"PostgreSQL unreachable: {exc}") from exc

    async def _write_once(self, fn: Callable[[Tx], T]) -> tuple[T, Tx, list[Event]]:
        async with self._engine.connect() as aconn:
            return await aconn.run_sync(self._write_sync, fn)

    async def _read_once(self, fn: Callable[[Connection], T]) -> T:
        async with self._engine.connect() as aconn:
            return await aconn.run_sync(fn)

    async def _bounded(self, call: Coroutine[Any, Any, T]) -> T:
        """Run ``call`` within the call deadline, clean-up included.

        ``asyncio.timeout`` around the call is not enough: it cancels the query, but
        giving the connection back (a ROLLBACK on a socket nobody answers) would then hang
        the caller until the network heals. Past the deadline the caller gets
        ``TimeoutError`` at once and the cancelled call unwinds in the background (the
        pool's size bounds how many such connections can be stuck at once).
        """
        task = asyncio.ensure_future(call)
        try:
            done, _ = await asyncio.wait({task}, timeout=self._deadline_s)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task in done:
            return task.result()
        task.cancel()
        self._abandoned.add(task)
        task.add_done_callback(self._forget)
        raise TimeoutError

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned call's error is no news

    async def close(self) -> None:
        for task in list(self._abandoned):
            task.cancel()
        await self._engine.dispose()

    def listen(
        self,
        channels: list[str],
        on_notify: Callable[[str, str], None],
        on_reconnect: Callable[[], None] | None = None,
    ) -> Listener | None:
        return PgListener(self.url, channels, on_notify, on_reconnect, own_origin=self.origin)

    def _write_sync(self, conn: Connection, fn: Callable[[Tx], T]) -> tuple[T, Tx, list[Event]]:
        with conn.begin():
            tx = Tx(conn, self.dialect)
            result = fn(tx)
            recorded = self._finish(tx)
        return result, tx, recorded

    def _send_notifications(self, tx: Tx) -> None:
        if faults.active("drop_notify"):
            return
        for channel, payload in sorted(tx.notifications):
            tx.conn.execute(_notify, {"channel": channel, "payload": f"{self.origin}|{payload}"})

    @staticmethod
    def _translate(exc: DBAPIError) -> Exception:
        if isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated:
            return StoreUnavailableError(f"PostgreSQL unavailable: {exc.orig}")
        state = _sqlstate(exc) or ""
        # 08: connection exceptions, 57P: operator intervention (shutdown, terminate)
        if state.startswith(("08", "57P", "53")):
            return StoreUnavailableError(f"PostgreSQL unavailable: {exc.orig}")
        return exc


class PgListener:
    """Keeps one dedicated connection LISTENing on some channels, forever.

    Notifications are only hints: after any reconnect the listener calls
    ``on_reconnect`` so its users poll once, covering anything sent while it was away.
    """

    def __init__(
        self,
        url: str,
        channels: list[str],
        on_notify: Callable[[str, str], None],
        on_reconnect: Callable[[], None] | None = None,
        *,
        own_origin: str = "",
    ) -> None:
        self._url = libpq_url(url)
        self._own_origin = own_origin
        self._channels = channels
        self._on_notify = on_notify
        self._on_reconnect = on_reconnect
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="conveyor-pg-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        import psycopg

        delay = 0.1
        while True:
            try:
                conn: Any = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=5
                )
                async with conn:
                    for channel in self._channels:
                        await conn.execute(f'LISTEN "{channel}"')
                    self.connected.set()
                    if self.reconnects and self._on_reconnect is not None:
                        self._on_reconnect()
                    delay = 0.1
                    async for note in conn.notifies():
                        origin, _, payload = note.payload.partition("|")
                        if origin != self._own_origin:
                            self._on_notify(note.channel, payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any connection trouble: reconnect and re-LISTEN
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
            self.connected.clear()
            self.reconnects += 1
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)
