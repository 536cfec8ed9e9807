"""Queues: pause and resume, statistics, retention clean-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, delete, func, select

from conveyor.domain.events import EventType
from conveyor.domain.states import DELAYED, TERMINAL_JOB_STATES, JobStatus
from conveyor.engine.jobs import JOBS_CHANNEL, check_queue_name
from conveyor.engine.models import QueueStats
from conveyor.errors import InvalidInputError, NotFoundError
from conveyor.store.database import Tx
from conveyor.store.schema import events, jobs, queues
from conveyor.store.sql import db_now, dialect_insert, seconds_between

COUNTED = ("queued", DELAYED, "active", "awaiting_input", "completed", "failed", "cancelled")
#: run times are averaged over this recent window so the query stays cheap on big tables
RUN_TIME_WINDOW = timedelta(hours=24)
CLEAN_BATCH = 1000


def set_paused_tx(tx: Tx, name: str, paused: bool, actor: str) -> None:
    check_queue_name(name)
    stmt = dialect_insert(tx.dialect, queues).values(name=name, paused=paused, updated_at=db_now())
    tx.conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["name"], set_={"paused": paused, "updated_at": db_now()}
        )
    )
    tx.emit(
        EventType.QUEUE_PAUSED if paused else EventType.QUEUE_RESUMED,
        owner=actor,
        queue=name,
    )
    if not paused:
        tx.notify(JOBS_CHANNEL, name)


def queue_names(conn: Connection) -> list[str]:
    return list(conn.execute(select(queues.c.name).order_by(queues.c.name)).scalars())


def queue_stats(conn: Connection, name: str) -> QueueStats:
    paused = conn.execute(select(queues.c.paused).where(queues.c.name == name)).scalar()
    if paused is None:
        raise NotFoundError(f"queue {name!r} not found")
    is_delayed = and_(jobs.c.status == JobStatus.QUEUED.value, jobs.c.run_at > db_now())
    shown = case((is_delayed, DELAYED), else_=jobs.c.status)
    counts = dict.fromkeys(COUNTED, 0)
    for status, count in conn.execute(
        select(shown, func.count()).where(jobs.c.queue == name).group_by(shown)
    ):
        if status in counts:
            counts[status] = int(count)
    since = datetime.now(UTC) - RUN_TIME_WINDOW
    avg_s = conn.execute(
        select(func.avg(seconds_between(jobs.c.finished_at, jobs.c.started_at))).where(
            jobs.c.queue == name,
            jobs.c.status == JobStatus.COMPLETED.value,
            jobs.c.finished_at >= since,
        )
    ).scalar()
    done = counts["completed"] + counts["failed"]
    return QueueStats(
        name=name,
        paused=bool(paused),
        counts=counts,
        avg_run_ms=None if avg_s is None else round(float(avg_s) * 1000, 3),
        success_rate=None if done == 0 else round(counts["completed"] / done, 4),
    )


def check_clean_status(status: str) -> JobStatus:
    try:
        parsed = JobStatus(status)
    except ValueError:
        parsed = None
    if parsed is None or parsed not in TERMINAL_JOB_STATES:
        raise InvalidInputError("only completed, failed or cancelled jobs can be cleaned")
    return parsed


_clean_ids = (
    select(jobs.c.id)
    .where(
        jobs.c.queue == bindparam("queue"),
        jobs.c.status == bindparam("status"),
        jobs.c.execution_id.is_(None),
        jobs.c.finished_at < bindparam("before", type_=jobs.c.finished_at.type),
    )
    .limit(CLEAN_BATCH)
)


def clean_batch_tx(tx: Tx, name: str, status: JobStatus, before: datetime) -> int:
    """Delete up to one batch of old finished jobs (and their events); returns how many.

    Steps of executions are left alone: they belong to their execution's history.
    """
    ids = list(
        tx.conn.execute(
            _clean_ids, {"queue": name, "status": status.value, "before": before}
        ).scalars()
    )
    if not ids:
        return 0
    tx.conn.execute(delete(events).where(events.c.job_id.in_(ids)))
    tx.conn.execute(delete(jobs).where(jobs.c.id.in_(ids)))
    return len(ids)


def clean_cutoff(conn: Connection, older_than_s: float) -> datetime:
    if not 0 <= older_than_s <= 10 * 365 * 86_400:
        raise InvalidInputError("older_than_s must be between 0 and ten years")
    now: datetime = conn.execute(select(db_now())).scalar_one()
    return now - timedelta(seconds=older_than_s)


def queue_exists(conn: Connection, name: str) -> bool:
    return conn.execute(select(queues.c.name).where(queues.c.name == name)).first() is not None


def emit_cleaned(tx: Tx, name: str, status: JobStatus, deleted: int, actor: str) -> None:
    data: dict[str, Any] = {"status": status.value, "deleted": deleted}
    tx.emit(EventType.QUEUE_CLEANED, owner=actor, queue=name, data=data)
