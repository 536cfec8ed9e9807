"""Secrets the server generates once and keeps in the database, shared by every replica
and worker on it (used when no key is configured)."""

from __future__ import annotations

import secrets

from sqlalchemy import select

from conveyor.store.database import Database, Tx
from conveyor.store.schema import server_secrets
from conveyor.store.sql import db_now, dialect_insert


async def shared_secret(db: Database, name: str, length: int = 48) -> str:
    """A random secret generated once and stored in the database, so every replica on the
    same database shares it (used when no JWT secret is configured)."""

    def body(tx: Tx) -> str:
        value = secrets.token_urlsafe(length)
        tx.conn.execute(
            dialect_insert(tx.dialect, server_secrets)
            .values(name=name, value=value, created_at=db_now())
            .on_conflict_do_nothing(index_elements=["name"])
        )
        stored = tx.conn.execute(
            select(server_secrets.c.value).where(server_secrets.c.name == name)
        ).scalar_one()
        return str(stored)

    return await db.write(body)
