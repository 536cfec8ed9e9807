"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, Float
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, TypeEngine


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC ``datetime`` in Python.

    PostgreSQL stores ``timestamptz``. SQLite has no time zones, so the value is stored as
    Unix seconds (REAL): comparisons with the database clock (:func:`db_now`) stay plain
    numeric comparisons and nothing depends on the local time zone of any process.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Float())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None:
            raise ValueError("naive datetime: Conveyor only stores aware UTC datetimes")
        if dialect.name == "sqlite":
            return value.timestamp()
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return datetime.fromtimestamp(float(value), UTC)


def dumps(value: Any) -> str:
    """Compact JSON used for every JSON column."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def json_type() -> TypeEngine[Any]:
    """JSON on SQLite (text), JSONB on PostgreSQL; Python ``None`` is SQL NULL."""
    return JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
