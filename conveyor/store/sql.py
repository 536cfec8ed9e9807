"""SQL expressions whose spelling differs between SQLite and PostgreSQL.

Lease and due-time decisions always use the database clock through :class:`db_now`,
never a worker's clock (a skewed worker must not steal or keep a lease).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, ColumnElement, Float, Select, Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import FunctionElement
from sqlalchemy.sql.visitors import InternalTraversal

from conveyor.store.types import UtcDateTime

# julianday('now') has millisecond precision and is stable within one statement.
_SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


class db_now(FunctionElement[Any]):
    """The database's current time (transaction time on PostgreSQL)."""

    type = UtcDateTime()
    inherit_cache = True
    name = "db_now"


@compiles(db_now, "sqlite")
def _now_sqlite(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return _SQLITE_NOW


@compiles(db_now, "postgresql")
def _now_pg(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "now()"


class db_now_plus(FunctionElement[Any]):
    """``db_now() + seconds`` where ``seconds`` is a numeric SQL expression."""

    type = UtcDateTime()
    inherit_cache = True
    name = "db_now_plus"


@compiles(db_now_plus, "sqlite")
def _now_plus_sqlite(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    (seconds,) = element.clauses
    return f"({_SQLITE_NOW} + {compiler.process(seconds, **kw)})"


@compiles(db_now_plus, "postgresql")
def _now_plus_pg(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    (seconds,) = element.clauses
    return f"(now() + make_interval(secs => {compiler.process(seconds, **kw)}))"


class seconds_between(FunctionElement[Any]):
    """``later - earlier`` in seconds, as a float."""

    type = Float()
    inherit_cache = True
    name = "seconds_between"


@compiles(seconds_between, "sqlite")
def _between_sqlite(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    later, earlier = element.clauses
    return f"({compiler.process(later, **kw)} - {compiler.process(earlier, **kw)})"


@compiles(seconds_between, "postgresql")
def _between_pg(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    later, earlier = element.clauses
    return (
        f"EXTRACT(EPOCH FROM ({compiler.process(later, **kw)} - {compiler.process(earlier, **kw)}))"
    )


def dialect_insert(dialect: str, table: Table) -> Any:
    """``INSERT`` with ``ON CONFLICT`` support (both backends spell it the same way)."""
    if dialect == "postgresql":
        return pg_insert(table)
    return sqlite_insert(table)


class any_of(ColumnElement[bool]):
    """``column = ANY(ARRAY(subquery))`` (PostgreSQL).

    For a claim, PostgreSQL plans ``IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)`` as a
    join that can scan the whole table; with an array it takes the n ids first and then
    updates exactly those rows by primary key.
    """

    inherit_cache = True
    type = Boolean()
    _traverse_internals = [  # noqa: RUF012 - SQLAlchemy's declared shape
        ("column", InternalTraversal.dp_clauseelement),
        ("subquery", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: ColumnElement[Any], subquery: Select[Any]) -> None:
        self.column = column
        self.subquery = subquery


@compiles(any_of, "postgresql")
def _any_of_pg(element: any_of, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    return f"{column} = ANY(ARRAY({compiler.process(element.subquery, asfrom=False, **kw)}))"


def id_in(dialect: str, column: ColumnElement[Any], subquery: Select[Any]) -> ColumnElement[bool]:
    """``column IN (subquery)``, in the form each backend plans best."""
    if dialect == "postgresql":
        return any_of(column, subquery)
    return column.in_(subquery.scalar_subquery())
