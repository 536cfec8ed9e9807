"""Open the right Database for a URL."""

from __future__ import annotations

from conveyor.store.database import Database
from conveyor.store.url import backend_of


def open_database(
    url: str,
    *,
    sqlite_synchronous: str = "FULL",
    pool_size: int = 10,
    call_deadline_s: float = 60.0,
    statement_timeout_s: float = 30.0,
    connect_timeout_s: float = 5.0,
) -> Database:
    """A :class:`Database` for ``sqlite:///file.db`` or ``postgresql://...``.

    ``sqlite+aiosqlite://`` and ``postgresql+psycopg://`` spellings are accepted too; the
    driver is chosen here (see :mod:`conveyor.store.database` for why).
    """
    if backend_of(url) == "sqlite":
        from conveyor.store.sqlite import SqliteDatabase

        return SqliteDatabase(url, synchronous=sqlite_synchronous)
    from conveyor.store.postgres import PostgresDatabase

    return PostgresDatabase(
        url,
        pool_size=pool_size,
        statement_timeout_s=statement_timeout_s,
        connect_timeout_s=connect_timeout_s,
        call_deadline_s=call_deadline_s,
    )
