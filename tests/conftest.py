"""Fixtures shared by every test: databases on both backends, engines, workers.

PostgreSQL tests use a fresh database per test run on 127.0.0.1:5432 (override with
``CONVEYOR_TEST_PG``). Without PostgreSQL they are skipped locally, but with ``CI=true``
a missing PostgreSQL fails the run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from conveyor.engine.core import Engine, EngineSettings
from conveyor.store.database import Database
from conveyor.store.factory import open_database
from conveyor.store.migrate import upgrade

PG_ADMIN_URL = os.environ.get("CONVEYOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# tables emptied between PostgreSQL tests (alembic_version and event_counter stay)
_PG_TABLES: list[str] = []


def _pg_reachable() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return str(exc).splitlines()[0]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    problem = _pg_reachable()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI but unreachable: {problem}")
        pytest.skip(f"PostgreSQL unreachable: {problem}")
    name = f"conveyor_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(
        PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    upgrade(url)
    sync = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with sync.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename NOT IN ('alembic_version', 'event_counter')"
            )
        )
        _PG_TABLES[:] = [r[0] for r in rows]
    sync.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def reset_pg(url: str) -> None:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(_PG_TABLES)}"))
        conn.execute(text("UPDATE event_counter SET last_id = 0"))
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of each backend."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "conveyor.db"
        shutil.copy(template, target)
        return f"sqlite:///{target}"
    url: str = request.getfixturevalue("pg_url")
    reset_pg(url)
    return url


@pytest.fixture
def backend(db_url: str) -> str:
    return "sqlite" if db_url.startswith("sqlite") else "postgresql"


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = open_database(db_url)
    yield database
    await database.close()


@pytest.fixture
def engine_settings() -> EngineSettings:
    return EngineSettings(lease_ttl_s=30.0, worker_heartbeat_timeout_s=30.0)


@pytest.fixture
async def engine(db: Database, engine_settings: EngineSettings) -> Engine:
    return Engine(db, settings=engine_settings)


@pytest.fixture
def open_db(db_url: str) -> Callable[[], Database]:
    """Opens another connection to the same database (as another worker would)."""
    return lambda: open_database(db_url)


async def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    *,
    what: str = "condition",
    details: Callable[[], str] | None = None,
) -> Any:
    """Poll an async or sync predicate until it returns something truthy; on timeout,
    fail naming ``what`` and ``details()`` (a process's output, say)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"{what}: not met within {timeout}s{extra}")
        await asyncio.sleep(interval)
