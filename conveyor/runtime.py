"""Everything one process needs to run an app: database, engine, workers."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from conveyor.app import Conveyor
from conveyor.engine.core import Engine, EngineSettings
from conveyor.engine.jobs import Limits
from conveyor.engine.sealing import Sealer
from conveyor.settings import Settings
from conveyor.store import migrate
from conveyor.store.database import Database
from conveyor.store.factory import open_database
from conveyor.store.secrets import shared_secret
from conveyor.store.url import backend_of
from conveyor.worker.http import SafeHttp
from conveyor.worker.runtime import Worker, WorkerSettings


@contextlib.contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """Serialise migrations of one SQLite file across processes (PostgreSQL uses an
    advisory lock inside the migration itself)."""
    if backend_of(url) != "sqlite":
        yield
        return
    from conveyor.store.sqlite import sqlite_path

    path = Path(sqlite_path(url))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.migrate-lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade_database(url: str) -> None:
    """Apply pending migrations (safe to call from several processes at once)."""
    with _migration_lock(url):
        if migrate.current_revision(url) != migrate.HEAD:
            migrate.upgrade(url)


class TaskServices:
    """Offered to task code through its Context, created on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._llm: Any = None
        self._http: SafeHttp | None = None

    def llm_for(self, ctx: Any) -> Any:
        if self._llm is None:
            from conveyor.llm.service import LLMService

            self._llm = LLMService(self.settings)
        return self._llm.llm_for(ctx)

    def http_for(self, ctx: Any) -> SafeHttp:
        if self._http is None:
            s = self.settings
            self._http = SafeHttp(
                allow=s.http_allow, timeout_s=s.http_timeout_s, max_bytes=s.http_max_bytes
            )
        return self._http


class Runtime:
    """A database, an engine and workers for one app, in this process."""

    def __init__(self, app: Conveyor, settings: Settings | None = None) -> None:
        self.app = app
        self.settings = settings or Settings()
        self._db: Database | None = None
        self._engine: Engine | None = None
        self._services: TaskServices | None = None

    async def open(self, *, upgrade: bool = True) -> Engine:
        url = self.settings.database_url
        backend_of(url)  # a clear error for a URL we cannot use, before anything else
        if upgrade:
            await asyncio.to_thread(upgrade_database, url)
        self._db = self._open_db()
        self._engine = Engine(
            self._db,
            catalog=self.app,
            settings=EngineSettings(
                lease_ttl_s=self.settings.lease_ttl_s,
                worker_heartbeat_timeout_s=self.settings.worker_heartbeat_timeout_s,
                limits=Limits(max_waiting_per_owner=self.settings.max_waiting_jobs_per_user),
            ),
        )
        key = self.settings.secret_key
        self._engine.sealer = Sealer(
            key.get_secret_value() if key else await shared_secret(self._db, "seal_key")
        )
        return self._engine

    def _open_db(self) -> Database:
        s = self.settings
        return open_database(
            s.database_url,
            sqlite_synchronous=s.sqlite_synchronous,
            pool_size=s.pool_size,
            call_deadline_s=s.db_call_deadline_s,
            statement_timeout_s=s.db_statement_timeout_s,
            connect_timeout_s=s.db_connect_timeout_s,
        )

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("Runtime.open() was not awaited")
        return self._engine

    def worker(
        self,
        *,
        concurrency: int = 4,
        queues: list[str] | None = None,
        kind: str = "process",
        worker_id: str | None = None,
    ) -> Worker:
        s = self.settings
        return Worker(
            self.engine,
            self.app.tasks,
            WorkerSettings(
                concurrency=concurrency,
                queues=queues,
                lease_ttl_s=s.lease_ttl_s,
                heartbeat_interval_s=s.heartbeat_interval_s,
                poll_max_s=s.poll_max_s,
                sweep_interval_s=s.sweep_interval_s,
                drain_timeout_s=s.drain_timeout_s,
                cancel_grace_s=s.cancel_grace_s,
                kind=kind,
                worker_id=worker_id,
            ),
            open_db=partial(self._open_db),
            services=self.services,
        )

    @property
    def services(self) -> TaskServices:
        """What task code gets beyond the engine: ``ctx.llm`` and ``ctx.http``."""
        if self._services is None:
            self._services = TaskServices(self.settings)
        return self._services

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None
            self._engine = None
