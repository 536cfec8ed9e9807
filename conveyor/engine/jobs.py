"""Jobs: enqueue (single, bulk, idempotent), read, list, cancel, retry.

Every function named ``*_tx`` is a transaction body: it runs inside
:meth:`Database.write` and must not await or touch anything but ``tx``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    and_,
    bindparam,
    select,
    update,
)

from conveyor.domain.events import EventType
from conveyor.domain.ids import is_valid_id, new_id
from conveyor.domain.priority import Priority
from conveyor.domain.retry import Backoff
from conveyor.domain.states import DELAYED, VISIBLE_JOB_STATUSES, JobStatus, job_sources
from conveyor.engine.models import EnqueueResult, Job, JobSpec, TaskCatalog, TaskDefaults
from conveyor.engine.paging import check_limit, decode_cursor, encode_cursor
from conveyor.engine.rows import job_from_row
from conveyor.engine.sealing import Sealer
from conveyor.errors import (
    ConfigurationError,
    ConflictError,
    IdempotencyMismatchError,
    InvalidInputError,
    NotFoundError,
    UnknownTaskError,
)
from conveyor.store.database import Tx
from conveyor.store.schema import jobs, queues
from conveyor.store.sql import db_now, db_now_plus, dialect_insert
from conveyor.store.types import dumps

JOBS_CHANNEL = "conveyor_jobs"
CANCEL_CHANNEL = "conveyor_cancel"

_QUEUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}\Z")
_KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{8,200}\Z")
MAX_ATTEMPTS_LIMIT = 100
MAX_DELAY_S = 366 * 86_400
MAX_TIMEOUT_S = 7 * 86_400


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps that keep one caller from exhausting the system."""

    max_payload_bytes: int = 1_048_576
    max_metadata_bytes: int = 16_384
    max_bulk: int = 10_000
    #: jobs one owner may have waiting (queued or pending) at once; None: no cap
    max_waiting_per_owner: int | None = None


@dataclass(slots=True)
class _Prepared:
    row: dict[str, Any]
    delay_s: float | None  # None when run_at is absolute


def seal_secrets(
    data: dict[str, Any], fields: Iterable[str], sealer: Sealer | None
) -> dict[str, Any]:
    """``data`` with its secret fields sealed (refused if there is no key to seal with)."""
    secret = [f for f in fields if isinstance(data.get(f), str)]
    if not secret:
        return data
    if sealer is None:
        raise ConfigurationError("secret inputs need a key: set CONVEYOR_SECRET_KEY")
    return sealer.seal_fields(data, secret)


def check_queue_name(name: str) -> str:
    if not _QUEUE_RE.match(name):
        raise InvalidInputError(
            f"invalid queue name {name!r}: 1-100 characters of letters, digits, _ . : -"
        )
    return name


def _json_size(value: Any) -> int:
    return len(dumps(value).encode())


def request_hash(spec: JobSpec) -> str:
    """Fingerprint of a request, to tell a true repeat from a reused idempotency key."""
    body = {
        "task": spec.task,
        "input": spec.input,
        "queue": spec.queue,
        "priority": None if spec.priority is None else Priority.parse(spec.priority).value,
        "max_attempts": spec.max_attempts,
        "backoff": None if spec.backoff is None else spec.backoff.to_json(),
        "delay_s": spec.delay_s,
        "run_at": None if spec.run_at is None else spec.run_at.timestamp(),
        "timeout_s": spec.timeout_s,
        "metadata": spec.metadata,
    }
    raw = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


def prepare(
    spec: JobSpec,
    *,
    owner: str,
    catalog: TaskCatalog | None,
    limits: Limits,
    sealer: Sealer | None = None,
) -> _Prepared:
    """Validate a spec, fill in the task's defaults and seal its secrets (no I/O)."""
    if not spec.task or len(spec.task) > 200:
        raise InvalidInputError("task must be 1-200 characters")
    defaults = TaskDefaults()
    if catalog is not None:
        found = catalog.task_defaults(spec.task)
        if found is None:
            raise UnknownTaskError(f"unknown task {spec.task!r}")
        defaults = found
    data = spec.input if spec.input is not None else {}
    if not isinstance(data, dict):
        raise InvalidInputError("input must be a JSON object")
    if _json_size(data) > limits.max_payload_bytes:
        raise InvalidInputError(f"input is larger than {limits.max_payload_bytes} bytes")
    if catalog is not None:
        catalog.validate_input(spec.task, data)
    if spec.metadata is not None and _json_size(spec.metadata) > limits.max_metadata_bytes:
        raise InvalidInputError(f"metadata is larger than {limits.max_metadata_bytes} bytes")
    queue = check_queue_name(spec.queue or defaults.queue)
    priority = Priority.parse(spec.priority) if spec.priority is not None else defaults.priority
    max_attempts = spec.max_attempts if spec.max_attempts is not None else defaults.max_attempts
    if not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
        raise InvalidInputError(f"max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}")
    timeout_s = spec.timeout_s if spec.timeout_s is not None else defaults.timeout_s
    if timeout_s is not None and not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise InvalidInputError(f"timeout_s must be > 0 and <= {MAX_TIMEOUT_S}")
    if spec.idempotency_key is not None and not _KEY_RE.match(spec.idempotency_key):
        raise InvalidInputError(
            "idempotency key must be 8-200 characters of letters, digits, _ . : -"
        )
    delay_s: float | None = 0.0
    run_at: datetime | None = None
    if spec.run_at is not None and spec.delay_s is not None:
        raise InvalidInputError("give delay_s or run_at, not both")
    if spec.run_at is not None:
        if spec.run_at.tzinfo is None:
            raise InvalidInputError("run_at needs a time zone (ISO 8601 with offset or Z)")
        run_at, delay_s = spec.run_at.astimezone(UTC), None
    elif spec.delay_s is not None:
        if not 0 <= spec.delay_s <= MAX_DELAY_S:
            raise InvalidInputError(f"delay_s must be between 0 and {MAX_DELAY_S}")
        delay_s = float(spec.delay_s)
    backoff = spec.backoff or defaults.backoff
    data = seal_secrets(data, catalog.secret_fields(spec.task) if catalog else (), sealer)
    row: dict[str, Any] = {
        "id": new_id(),
        "task": spec.task,
        "queue": queue,
        "status": JobStatus.QUEUED.value,
        "priority": int(priority),
        "max_attempts": max_attempts,
        "backoff": backoff.to_json(),
        "timeout_s": timeout_s,
        "input": data,
        "owner": owner,
        "idempotency_key": spec.idempotency_key,
        "request_hash": request_hash(spec) if spec.idempotency_key else None,
        "metadata": spec.metadata,
    }
    if run_at is not None:
        row["run_at"] = run_at
    return _Prepared(row, delay_s)


_INSERT_COLUMNS = (
    "id",
    "task",
    "queue",
    "status",
    "priority",
    "max_attempts",
    "backoff",
    "timeout_s",
    "input",
    "owner",
    "idempotency_key",
    "request_hash",
    "metadata",
)


_insert_cache: dict[tuple[str, bool, bool], Any] = {}


def _insert_statement(dialect: str, *, relative: bool, keyed: bool) -> Any:
    key = (dialect, relative, keyed)
    if key not in _insert_cache:
        _insert_cache[key] = _build_insert(dialect, relative=relative, keyed=keyed)
    return _insert_cache[key]


def _build_insert(dialect: str, *, relative: bool, keyed: bool) -> Any:
    values: dict[str, Any] = {c: bindparam(c, type_=jobs.c[c].type) for c in _INSERT_COLUMNS}
    values["created_at"] = db_now()
    values["run_at"] = (
        db_now_plus(bindparam("delay_s"))
        if relative
        else bindparam("run_at", type_=jobs.c.run_at.type)
    )
    stmt = dialect_insert(dialect, jobs).values(values)
    if keyed:
        stmt = stmt.on_conflict_do_nothing(
            index_elements=["owner", "idempotency_key"],
            index_where=jobs.c.idempotency_key.isnot(None),
        )
    return stmt.returning(*jobs.c, sort_by_parameter_order=True)


def ensure_queues_tx(tx: Tx, names: set[str]) -> None:
    stmt = dialect_insert(tx.dialect, queues).values(
        name=bindparam("name"), paused=False, updated_at=db_now()
    )
    tx.conn.execute(
        stmt.on_conflict_do_nothing(index_elements=["name"]), [{"name": n} for n in sorted(names)]
    )


def emit_queued(tx: Tx, job: Job, **data: Any) -> None:
    payload: dict[str, Any] = {"priority": job.priority.label, "attempt": job.attempts + 1}
    if job.status == DELAYED:
        payload["run_at"] = job.run_at.isoformat()
    payload.update(data)
    tx.emit(
        EventType.JOB_QUEUED,
        owner=job.owner,
        job_id=job.id,
        execution_id=job.execution_id,
        step_id=job.step_id,
        queue=job.queue,
        data=payload,
    )


def enqueue_tx(tx: Tx, prepared: Sequence[_Prepared], owner: str) -> list[EnqueueResult]:
    """Insert jobs (or find their idempotent originals) and write their events."""
    results: list[EnqueueResult | None] = [None] * len(prepared)
    fresh: list[tuple[int, _Prepared]] = []
    for index, item in enumerate(prepared):
        key = item.row["idempotency_key"]
        if key is not None:
            existing = _find_by_key(tx.conn, owner, key)
            if existing is not None:
                results[index] = _repeat(existing, item)
                continue
        fresh.append((index, item))

    for relative in (True, False):
        for keyed in (False, True):
            group = [
                (i, p)
                for i, p in fresh
                if (p.delay_s is not None) == relative
                and (p.row["idempotency_key"] is not None) == keyed
            ]
            if not group:
                continue
            params = [{**p.row, "delay_s": p.delay_s} if relative else p.row for _, p in group]
            stmt = _insert_statement(tx.dialect, relative=relative, keyed=keyed)
            if keyed:
                # one at a time: a conflict (a concurrent twin committed first) returns
                # no row, and we answer with the twin instead
                for (index, item), param in zip(group, params, strict=True):
                    row = tx.conn.execute(stmt, param).first()
                    now = datetime.now(UTC)
                    if row is None:
                        existing = _find_by_key(tx.conn, owner, item.row["idempotency_key"])
                        assert existing is not None
                        results[index] = _repeat(existing, item)
                    else:
                        results[index] = EnqueueResult(job_from_row(row, now), True)
            else:
                rows = tx.conn.execute(stmt, params).all()
                now = datetime.now(UTC)
                for (index, _), row in zip(group, rows, strict=True):
                    results[index] = EnqueueResult(job_from_row(row, now), True)

    created = [r.job for r in results if r is not None and r.created]
    if created:
        for job in created:
            emit_queued(tx, job)
        for queue in {job.queue for job in created}:
            tx.notify(JOBS_CHANNEL, queue)
    return [r for r in results if r is not None]


def _find_by_key(conn: Connection, owner: str, key: str) -> Any:
    return conn.execute(
        select(jobs).where(jobs.c.owner == owner, jobs.c.idempotency_key == key)
    ).first()


def _repeat(existing: Any, item: _Prepared) -> EnqueueResult:
    if existing.request_hash != item.row["request_hash"]:
        raise IdempotencyMismatchError(
            "this idempotency key was already used for a different request"
        )
    return EnqueueResult(job_from_row(existing), False)


# -- reading -----------------------------------------------------------------------------


def owned(stmt: Select[Any], owner: str | None) -> Select[Any]:
    """Restrict to ``owner``'s rows (``None``: an admin sees everything)."""
    return stmt if owner is None else stmt.where(jobs.c.owner == owner)


def check_id(value: str, what: str = "job") -> str:
    if not is_valid_id(value):
        raise NotFoundError(f"{what} {value!r} not found")
    return value


def get_job(conn: Connection, job_id: str, owner: str | None) -> Job:
    row = conn.execute(owned(select(jobs).where(jobs.c.id == check_id(job_id)), owner)).first()
    if row is None:
        raise NotFoundError(f"job {job_id!r} not found")
    return job_from_row(row)


@dataclass(frozen=True, slots=True)
class JobFilters:
    status: str | None = None
    task: str | None = None
    queue: str | None = None
    execution_id: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


def list_jobs(
    conn: Connection, filters: JobFilters, owner: str | None, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    check_limit(limit)
    stmt = owned(select(jobs), owner)
    if filters.status is not None:
        stmt = stmt.where(status_condition(filters.status))
    if filters.task is not None:
        stmt = stmt.where(jobs.c.task == filters.task)
    if filters.queue is not None:
        stmt = stmt.where(jobs.c.queue == filters.queue)
    if filters.execution_id is not None:
        stmt = stmt.where(jobs.c.execution_id == filters.execution_id)
    for bound in (filters.created_after, filters.created_before):
        if bound is not None and bound.tzinfo is None:
            raise InvalidInputError("timestamps need a time zone (ISO 8601 with offset or Z)")
    if filters.created_after is not None:
        stmt = stmt.where(jobs.c.created_at >= filters.created_after)
    if filters.created_before is not None:
        stmt = stmt.where(jobs.c.created_at < filters.created_before)
    if cursor is not None:
        stmt = stmt.where(jobs.c.id < decode_cursor(cursor))
    rows = conn.execute(stmt.order_by(jobs.c.id.desc()).limit(limit + 1)).all()
    now = datetime.now(UTC)
    items = [job_from_row(r, now) for r in rows[:limit]]
    next_cursor = encode_cursor(items[-1].id) if len(rows) > limit else None
    return items, next_cursor


def status_condition(status: str) -> Any:
    """SQL condition for a visible status (``delayed``/``queued`` split on the DB clock)."""
    if status not in VISIBLE_JOB_STATUSES:
        raise InvalidInputError(
            f"unknown status {status!r}; use one of {', '.join(VISIBLE_JOB_STATUSES)}"
        )
    if status == DELAYED:
        return and_(jobs.c.status == JobStatus.QUEUED, jobs.c.run_at > db_now())
    if status == JobStatus.QUEUED:
        return and_(jobs.c.status == JobStatus.QUEUED, jobs.c.run_at <= db_now())
    return jobs.c.status == status


# -- cancel and retry --------------------------------------------------------------------


def locked_job(tx: Tx, job_id: str, owner: str | None) -> Any:
    stmt = owned(select(jobs).where(jobs.c.id == check_id(job_id)), owner).with_for_update()
    row = tx.conn.execute(stmt).first()
    if row is None:
        raise NotFoundError(f"job {job_id!r} not found")
    return row


_finish_cancel = (
    update(jobs)
    .where(
        jobs.c.id == bindparam("b_id"),
        jobs.c.status.in_(
            [s.value for s in job_sources(JobStatus.CANCELLED) if s != JobStatus.ACTIVE]
        ),
    )
    .values(
        status=JobStatus.CANCELLED.value,
        finished_at=db_now(),
        lease_token=None,
        lease_expires_at=None,
    )
)


def cancel_job_tx(tx: Tx, job_id: str, owner: str | None) -> tuple[Job, bool]:
    """Cancel a job. Returns the job and whether a step of an execution changed state.

    Queued, delayed, pending and waiting jobs stop at once; an active job is asked to stop
    (its worker sees ``ctx.cancelled`` and the attempt ends as cancelled).
    """
    row = locked_job(tx, job_id, owner)
    status = JobStatus(row.status)
    if status == JobStatus.CANCELLED:
        return job_from_row(row), False
    if status in (JobStatus.COMPLETED, JobStatus.FAILED):
        raise ConflictError(f"job {job_id} is already {status.value}")
    if status == JobStatus.ACTIVE:
        if not row.cancel_requested:
            tx.conn.execute(
                update(jobs)
                .where(jobs.c.id == row.id, jobs.c.status == JobStatus.ACTIVE)
                .values(cancel_requested=True)
            )
            tx.emit(
                EventType.JOB_CANCEL_REQUESTED,
                owner=row.owner,
                job_id=row.id,
                execution_id=row.execution_id,
                step_id=row.step_id,
                queue=row.queue,
            )
            tx.notify(CANCEL_CHANNEL, row.id)
        return job_from_row(tx.conn.execute(select(jobs).where(jobs.c.id == row.id)).one()), False
    tx.conn.execute(_finish_cancel, {"b_id": row.id})
    tx.emit(
        EventType.JOB_CANCELLED,
        owner=row.owner,
        job_id=row.id,
        execution_id=row.execution_id,
        step_id=row.step_id,
        queue=row.queue,
        data={"reason": "cancelled by request"},
    )
    fresh = tx.conn.execute(select(jobs).where(jobs.c.id == row.id)).one()
    return job_from_row(fresh), row.execution_id is not None


def retry_job_tx(tx: Tx, job_id: str, owner: str | None) -> Job:
    """Run a failed or cancelled job again from a clean slate (attempts start over)."""
    row = locked_job(tx, job_id, owner)
    if row.execution_id is not None:
        raise ConflictError(
            f"job {job_id} is step {row.step_id!r} of execution {row.execution_id}; "
            "retry the execution instead"
        )
    status = JobStatus(row.status)
    if status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise ConflictError(
            f"only failed or cancelled jobs can be retried; this one is {status.value}"
        )
    tx.conn.execute(
        update(jobs)
        .where(jobs.c.id == row.id, jobs.c.status.in_([JobStatus.FAILED, JobStatus.CANCELLED]))
        .values(
            status=JobStatus.QUEUED.value,
            attempts=0,
            run_at=db_now(),
            result=None,
            error=None,
            progress=0,
            progress_message=None,
            cancel_requested=False,
            lease_token=None,
            lease_expires_at=None,
            worker_id=None,
            started_at=None,
            finished_at=None,
        )
    )
    job = job_from_row(tx.conn.execute(select(jobs).where(jobs.c.id == row.id)).one())
    emit_queued(tx, job, retry=True)
    tx.notify(JOBS_CHANNEL, job.queue)
    return job


def backoff_of(row: Any) -> Backoff:
    return Backoff.from_json(row.backoff)


def waiting_count(conn: Connection, owner: str) -> int:
    """How many of ``owner``'s jobs are queued or waiting on dependencies."""
    from sqlalchemy import func

    count = conn.execute(
        select(func.count()).where(
            jobs.c.owner == owner,
            jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.PENDING.value]),
        )
    ).scalar_one()
    return int(count)
