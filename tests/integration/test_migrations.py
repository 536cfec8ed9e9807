"""The Alembic migrations create exactly the tables of ``conveyor/store/schema.py``."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import (
    Connection,
    Index,
    Integer,
    MetaData,
    Text,
    create_engine,
    inspect,
    pool,
    select,
    text,
)

from conveyor.runtime import upgrade_database
from conveyor.store import migrate
from conveyor.store.schema import event_counter, metadata
from conveyor.store.types import UtcDateTime


def sync_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return url.replace("postgresql://", "postgresql+psycopg://", 1)
    return url


@pytest.fixture
def conn(db_url: str) -> Iterator[Connection]:
    """A synchronous connection to the migrated, empty database of each backend."""
    engine = create_engine(sync_url(db_url), poolclass=pool.NullPool)
    with engine.connect() as connection:
        yield connection
    engine.dispose()


def schema_diff(connection: Connection, target: MetaData = metadata) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={"compare_type": True, "compare_server_default": True},
    )
    # No filtering is needed: Alembic compares the custom UtcDateTime (REAL on SQLite,
    # timestamptz on PostgreSQL) and json_type() (JSON / JSONB) through their dialect
    # implementations and reports nothing for a matching schema, while a real type change
    # on such a column is still reported (test_type_drift_is_detected).
    return list(compare_metadata(context, target))


def test_head_constant_matches_alembic() -> None:
    assert migrate.alembic_head() == migrate.HEAD


def test_migrated_schema_matches_metadata(conn: Connection) -> None:
    diff = schema_diff(conn)
    assert diff == [], f"migrations and schema.py disagree: {diff}"


def test_migrated_database_is_at_head(db_url: str) -> None:
    assert migrate.current_revision(db_url) == migrate.HEAD


def test_every_table_and_index_exists(conn: Connection) -> None:
    # belt and braces next to compare_metadata: the names the engine relies on exist
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    assert set(metadata.tables) <= tables
    assert "alembic_version" in tables
    for table in metadata.sorted_tables:
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        assert columns == set(table.columns.keys()), table.name
        indexes = {ix["name"] for ix in inspector.get_indexes(table.name)}
        assert {ix.name for ix in table.indexes} <= indexes, table.name
        primary_key = inspector.get_pk_constraint(table.name)["constrained_columns"]
        assert primary_key == [c.name for c in table.primary_key.columns], table.name


def _predicate(value: Any) -> str:
    """A partial index predicate, normalised across backends: PostgreSQL reflects
    ``((status)::text = 'queued'::text)`` for ``status = 'queued'``."""
    raw = str(value).lower().replace("::text", "")
    return re.sub(r"[\s()]", "", raw)


def _metadata_predicate(index: Index, dialect: str) -> str | None:
    where = index.dialect_options[dialect].get("where")
    return None if where is None else _predicate(where)


def test_partial_and_unique_indexes_match(conn: Connection) -> None:
    # compare_metadata does not look at index predicates: a partial index recreated as a
    # full one (or the reverse) would change claim performance and uniqueness semantics
    dialect = conn.dialect.name
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        reflected = {ix["name"]: ix for ix in inspector.get_indexes(table.name)}
        for index in table.indexes:
            assert index.name is not None
            found = reflected[index.name]
            assert bool(found["unique"]) == bool(index.unique), index.name
            assert list(found["column_names"]) == [c.name for c in index.columns], index.name
            expected = _metadata_predicate(index, dialect)
            where = found.get("dialect_options", {}).get(f"{dialect}_where")
            actual = None if where is None else _predicate(where)
            assert actual == expected, index.name


def test_event_counter_is_seeded(conn: Connection) -> None:
    rows = conn.execute(select(event_counter.c.id, event_counter.c.last_id)).all()
    assert [tuple(r) for r in rows] == [(1, 0)]


def test_drift_is_detected(tmp_path: Path) -> None:
    """The comparison above can fail: drop a column, an index and a table and see."""
    url = f"sqlite:///{tmp_path / 'drift.db'}"
    migrate.upgrade(url)
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        assert schema_diff(connection) == []
        connection.execute(text("DROP INDEX ix_jobs_owner_id"))
        connection.execute(text("ALTER TABLE workers DROP COLUMN pid"))
        connection.execute(text("DROP TABLE queues"))
        connection.commit()
        kinds = {entry[0] for entry in schema_diff(connection) if isinstance(entry, tuple)}
    engine.dispose()
    assert {"add_index", "add_column", "add_table"} <= kinds


def test_type_drift_is_detected(conn: Connection) -> None:
    """Changed column types are reported too, custom types included."""
    drifted = MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(drifted)
    drifted.tables["events"].c.created_at.type = Text()  # was UtcDateTime
    drifted.tables["jobs"].c.input.type = Integer()  # was json_type()
    drifted.tables["jobs"].c.priority.type = UtcDateTime()  # was SmallInteger
    changed = {
        (entry[0][2], entry[0][3])
        for entry in schema_diff(conn, drifted)
        if isinstance(entry, list) and entry[0][0] == "modify_type"
    }
    assert changed == {("events", "created_at"), ("jobs", "input"), ("jobs", "priority")}


def test_upgrade_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert migrate.current_revision(url) is None
    upgrade_database(url)
    assert migrate.current_revision(url) == migrate.HEAD
    upgrade_database(url)
    assert migrate.current_revision(url) == migrate.HEAD
    migrate.upgrade(url)  # even straight through Alembic, a second run changes nothing
    assert migrate.current_revision(url) == migrate.HEAD
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        assert schema_diff(connection) == []
        counters = connection.execute(select(event_counter.c.id)).all()
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    engine.dispose()
    assert len(counters) == 1  # the seed row was not inserted twice
    assert [v[0] for v in versions] == [migrate.HEAD]


def test_upgrade_database_on_a_migrated_database_is_a_no_op(db_url: str) -> None:
    upgrade_database(db_url)
    assert migrate.current_revision(db_url) == migrate.HEAD


def test_current_revision_of_an_empty_database_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    assert migrate.current_revision(f"sqlite:///{empty}") is None
    # a file some other program created tables in is not a Conveyor database either
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    assert migrate.current_revision(f"sqlite:///{other}") is None


def test_downgrade_to_base_and_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'roundtrip.db'}"
    migrate.upgrade(url)
    command.downgrade(migrate.alembic_config(url), "base")
    assert migrate.current_revision(url) is None
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        leftovers = set(inspect(connection).get_table_names()) - {"alembic_version"}
    engine.dispose()
    assert leftovers == set()
    migrate.upgrade(url)
    assert migrate.current_revision(url) == migrate.HEAD
