"""The workers table: registration, heartbeats, health, deregistration."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, select, update

from conveyor.engine.models import WorkerInfo
from conveyor.errors import ConflictError, InvalidInputError, NotFoundError
from conveyor.store.database import Tx
from conveyor.store.schema import workers
from conveyor.store.sql import db_now, dialect_insert

WORKER_KINDS = ("embedded", "process", "external")
_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


@dataclass(frozen=True, slots=True)
class WorkerRegistration:
    id: str
    hostname: str
    kind: str
    max_concurrency: int
    pid: int | None = None
    queues: list[str] | None = None
    capabilities: list[str] | None = None
    metadata: dict[str, Any] | None = None
    owner: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.id) <= 64 or not set(self.id) <= _ID_CHARS:
            raise InvalidInputError("worker id must be 1-64 characters of letters, digits, - _ . :")
        if not 1 <= len(self.hostname) <= 255:
            raise InvalidInputError("hostname must be 1-255 characters")
        if self.kind not in WORKER_KINDS:
            raise InvalidInputError(f"worker kind must be one of {', '.join(WORKER_KINDS)}")
        if not 1 <= self.max_concurrency <= 10_000:
            raise InvalidInputError("max_concurrency must be between 1 and 10000")


def register_tx(tx: Tx, reg: WorkerRegistration) -> None:
    values = {
        "id": reg.id,
        "hostname": reg.hostname,
        "pid": reg.pid,
        "kind": reg.kind,
        "queues": reg.queues,
        "capabilities": reg.capabilities,
        "max_concurrency": reg.max_concurrency,
        "current_load": 0,
        "status": "active",
        "metadata": reg.metadata,
        "owner": reg.owner,
    }
    stmt = dialect_insert(tx.dialect, workers).values(
        **values, started_at=db_now(), last_heartbeat=db_now()
    )
    updated = {k: v for k, v in values.items() if k != "id"}
    # re-registering refreshes one's own worker; someone else's id is not taken over
    same_owner = workers.c.owner.is_(None) if reg.owner is None else workers.c.owner == reg.owner
    # RETURNING, not rowcount: drivers do not report rowcount for INSERT reliably
    written = tx.conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["id"],
            set_={**updated, "started_at": db_now(), "last_heartbeat": db_now()},
            where=same_owner,
        ).returning(workers.c.id)
    ).first()
    if written is None:
        raise ConflictError(f"worker id {reg.id!r} is registered by someone else")


def heartbeat_tx(tx: Tx, worker_id: str, load: int | None, owner: str | None) -> None:
    values: dict[str, Any] = {"last_heartbeat": db_now()}
    if load is not None:
        if load < 0:
            raise InvalidInputError("current_load must be >= 0")
        values["current_load"] = load
    stmt = update(workers).where(workers.c.id == worker_id)
    if owner is not None:
        stmt = stmt.where(workers.c.owner == owner)
    if tx.conn.execute(stmt.values(values)).rowcount == 0:
        raise NotFoundError(f"worker {worker_id!r} not found")


def set_status_tx(tx: Tx, worker_id: str, status: str) -> None:
    tx.conn.execute(update(workers).where(workers.c.id == worker_id).values(status=status))


def deregister_tx(tx: Tx, worker_id: str, owner: str | None) -> None:
    stmt = delete(workers).where(workers.c.id == worker_id)
    if owner is not None:
        stmt = stmt.where(workers.c.owner == owner)
    if tx.conn.execute(stmt).rowcount == 0:
        raise NotFoundError(f"worker {worker_id!r} not found")


def prune_tx(tx: Tx, older_than: timedelta) -> int:
    """Forget workers silent for a long time (they show as unhealthy until then)."""
    now: datetime = tx.conn.execute(select(db_now())).scalar_one()
    result = tx.conn.execute(delete(workers).where(workers.c.last_heartbeat < now - older_than))
    return int(result.rowcount or 0)


def _status(row: Any, now: datetime, timeout: timedelta) -> str:
    if row.status in ("draining", "stopped"):
        return str(row.status)
    if row.last_heartbeat < now - timeout:
        return "unhealthy"
    if row.current_load <= 0:
        return "idle"
    if row.current_load >= row.max_concurrency:
        return "busy"
    return "active"


def list_workers(conn: Connection, heartbeat_timeout: timedelta) -> list[WorkerInfo]:
    now: datetime = conn.execute(select(db_now())).scalar_one()
    rows = conn.execute(select(workers).order_by(workers.c.started_at, workers.c.id)).all()
    return [_info(row, now, heartbeat_timeout) for row in rows]


def get_worker(conn: Connection, worker_id: str, heartbeat_timeout: timedelta) -> WorkerInfo:
    now: datetime = conn.execute(select(db_now())).scalar_one()
    row = conn.execute(select(workers).where(workers.c.id == worker_id)).first()
    if row is None:
        raise NotFoundError(f"worker {worker_id!r} not found")
    return _info(row, now, heartbeat_timeout)


def _info(row: Any, now: datetime, timeout: timedelta) -> WorkerInfo:
    return WorkerInfo(
        id=row.id,
        hostname=row.hostname,
        pid=row.pid,
        kind=row.kind,
        queues=row.queues,
        capabilities=row.capabilities,
        max_concurrency=row.max_concurrency,
        current_load=row.current_load,
        status=_status(row, now, timeout),
        metadata=row.metadata,
        started_at=row.started_at,
        last_heartbeat=row.last_heartbeat,
    )
