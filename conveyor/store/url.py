"""Database URLs: which backend, and the driver spelling each consumer needs."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from conveyor.errors import ConfigurationError


def backend_of(url: str) -> str:
    """``"sqlite"`` or ``"postgresql"``; anything else is a configuration error."""
    try:
        name = make_url(url).get_backend_name()
    except ArgumentError as exc:
        raise ConfigurationError(f"not a database URL: {url!r}") from exc
    if name == "sqlite":
        return "sqlite"
    if name in ("postgresql", "postgres"):
        return "postgresql"
    raise ConfigurationError(
        f"unsupported database {name!r}: use sqlite:///path.db or postgresql://..."
    )


def sync_url(url: str) -> str:
    """The URL for synchronous SQLAlchemy (migrations): pysqlite or psycopg."""
    parsed = make_url(url)
    if backend_of(url) == "sqlite":
        return parsed.set(drivername="sqlite+pysqlite").render_as_string(hide_password=False)
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid url>"
