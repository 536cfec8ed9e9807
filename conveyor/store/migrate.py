"""Apply the Alembic migrations programmatically (``conveyor db upgrade``, start-up).

Checking whether a database is current must be cheap (every CLI command does it), so it
reads ``alembic_version`` directly and compares with :data:`HEAD`; Alembic itself is
only imported to upgrade. A unit test keeps :data:`HEAD` equal to Alembic's head.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, pool, text
from sqlalchemy.exc import DBAPIError

from conveyor.errors import StoreUnavailableError
from conveyor.store.url import sync_url

#: the newest revision in ``migrations/versions``
HEAD = "0008"

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation would choke on "%" in passwords
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return config


def alembic_head() -> str | None:
    """Alembic's own idea of the head revision (slow: parses every migration)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite:///unused.db")).get_current_head()


def current_revision(url: str) -> str | None:
    """The revision the database is at (``None`` for an empty database)."""
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            return None if value is None else str(value)
    except DBAPIError as exc:
        raise StoreUnavailableError(f"cannot reach the database: {exc.orig}") from exc
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database to ``revision`` (idempotent; safe from several processes)."""
    from alembic import command

    try:
        command.upgrade(alembic_config(url), revision)
    except DBAPIError as exc:
        raise StoreUnavailableError(f"cannot migrate the database: {exc.orig}") from exc


async def upgrade_async(url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, url, revision)
