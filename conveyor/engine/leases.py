"""Leases: claim, settle outcomes, renew, and recover expired leases.

A claim stamps a fresh lease token and an expiry from the database clock. Every later
write for that attempt (progress, result, failure, release, renewal) is conditional on the
token: when the row no longer carries it, the write changes nothing and the outcome is
reported back as lost. Settling a batch of outcomes and claiming replacements happen in
one transaction, so a busy worker spends well under one commit per job.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, bindparam, select, tuple_, update

from conveyor import faults
from conveyor.domain.events import EventType
from conveyor.domain.ids import new_token
from conveyor.domain.retry import Backoff
from conveyor.domain.states import JobStatus
from conveyor.engine.jobs import JOBS_CHANNEL
from conveyor.engine.models import (
    Cancelled,
    ClaimedJob,
    ClaimRequest,
    Completed,
    Failed,
    LeaseRenewal,
    Outcome,
    Progress,
    Released,
    SettleResult,
    StepChange,
    StepCoordinator,
)
from conveyor.store.database import Tx
from conveyor.store.schema import jobs, queues, workers
from conveyor.store.sql import db_now, db_now_plus, id_in

_ACTIVE = JobStatus.ACTIVE.value


# -- claim ---------------------------------------------------------------------------------

_CLAIM_RETURNING = (
    jobs.c.id,
    jobs.c.task,
    jobs.c.queue,
    jobs.c.input,
    jobs.c.attempts,
    jobs.c.max_attempts,
    jobs.c.timeout_s,
    jobs.c.owner,
    jobs.c.execution_id,
    jobs.c.step_id,
    jobs.c.depends_on,
    jobs.c.metadata,
    jobs.c.cancel_requested,
    jobs.c.priority,
)
_claim_cache: dict[tuple[str, bool, bool], Any] = {}


def _claim_statement(dialect: str, by_queue: bool, by_task: bool) -> Any:
    key = (dialect, by_queue, by_task)
    if key not in _claim_cache:
        paused = select(queues.c.name).where(queues.c.paused.is_(True))
        due: Select[Any] = select(jobs.c.id).where(
            jobs.c.status == JobStatus.QUEUED.value,
            jobs.c.run_at <= db_now(),
            jobs.c.queue.not_in(paused),
        )
        if by_queue:
            due = due.where(jobs.c.queue.in_(bindparam("queues", expanding=True)))
        if by_task:
            due = due.where(jobs.c.task.in_(bindparam("tasks", expanding=True)))
        due = (
            due.order_by(jobs.c.priority, jobs.c.run_at, jobs.c.id)
            .limit(bindparam("n"))
            .with_for_update(skip_locked=True)
        )
        _claim_cache[key] = (
            update(jobs)
            .where(id_in(dialect, jobs.c.id, due))
            .values(
                status=_ACTIVE,
                lease_token=bindparam("token"),
                lease_expires_at=db_now_plus(bindparam("lease_s")),
                attempts=jobs.c.attempts + 1,
                worker_id=bindparam("worker_id"),
                started_at=db_now(),
                progress=0,
                progress_message=None,
            )
            .returning(*_CLAIM_RETURNING)
        )
    return _claim_cache[key]


def claim_tx(
    tx: Tx, request: ClaimRequest, steps: StepCoordinator | None = None
) -> list[ClaimedJob]:
    """Lease up to ``request.limit`` due jobs, most urgent first, in one statement."""
    if request.limit <= 0:
        return []
    token = new_token()
    params: dict[str, Any] = {
        "token": token,
        "lease_s": float(request.lease_s),
        "worker_id": request.worker_id,
        "n": request.limit,
    }
    if request.queues is not None:
        params["queues"] = request.queues
    if request.tasks is not None:
        params["tasks"] = request.tasks
    stmt = _claim_statement(tx.dialect, request.queues is not None, request.tasks is not None)
    rows = list(tx.conn.execute(stmt, params).all())
    if not rows:
        return []
    faults.hit("after_claim")
    # the UPDATE returns rows in no particular order: hand out the most urgent first
    # (ids are UUIDv7, so id order is submission order within a priority)
    rows.sort(key=lambda r: (r[13], r[0]))
    dependencies = _dependency_outputs(tx, rows)
    claimed = []
    emit = tx.emit
    started = EventType.JOB_STARTED.value
    worker_id = request.worker_id
    for row in rows:
        (
            job_id,
            task,
            queue,
            data,
            attempts,
            max_attempts,
            timeout_s,
            owner,
            execution_id,
            step_id,
            _deps,
            metadata,
            cancel_requested,
            _prio,
        ) = row
        claimed.append(
            ClaimedJob(
                job_id,
                task,
                queue,
                data,
                attempts,
                max_attempts,
                token,
                timeout_s,
                owner,
                execution_id,
                step_id,
                metadata,
                bool(cancel_requested),
                dependencies.get(job_id, {}) if dependencies else {},
            )
        )
        emit(
            started,
            owner=owner,
            job_id=job_id,
            execution_id=execution_id,
            step_id=step_id,
            queue=queue,
            data={"attempt": attempts, "worker_id": worker_id},
        )
    if steps is not None:
        started_executions = {c.execution_id for c in claimed if c.execution_id}
        if started_executions:
            steps.started(tx, started_executions)
    return claimed


def _dependency_outputs(tx: Tx, rows: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """For claimed steps: the results of the steps they depend on, by step id."""
    wanted: dict[str, set[str]] = {}
    for row in rows:
        if row.execution_id is not None and row.depends_on:
            wanted.setdefault(row.execution_id, set()).update(row.depends_on)
    if not wanted:
        return {}
    results: dict[tuple[str, str], Any] = {}
    for execution_id, step_ids in wanted.items():
        found = tx.conn.execute(
            select(jobs.c.step_id, jobs.c.result).where(
                jobs.c.execution_id == execution_id, jobs.c.step_id.in_(sorted(step_ids))
            )
        ).all()
        for step_id, result in found:
            results[(execution_id, step_id)] = result
    return {
        row.id: {dep: results.get((row.execution_id, dep)) for dep in row.depends_on}
        for row in rows
        if row.execution_id is not None and row.depends_on
    }


# -- settle --------------------------------------------------------------------------------

_lease_rows = (
    select(
        jobs.c.id,
        jobs.c.lease_token,
        jobs.c.status,
        jobs.c.cancel_requested,
        jobs.c.attempts,
        jobs.c.max_attempts,
        jobs.c.owner,
        jobs.c.queue,
        jobs.c.execution_id,
        jobs.c.step_id,
    )
    .where(jobs.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(jobs.c.id)
    .with_for_update()
)

_leased = (jobs.c.id == bindparam("b_id")) & (jobs.c.lease_token == bindparam("b_token"))
_release_lease = {"lease_token": None, "lease_expires_at": None}
# a job going back to the queue is nobody's; a finished one remembers who ran it
_requeue = {**_release_lease, "worker_id": None}

_set_progress = (
    update(jobs)
    .where(_leased, jobs.c.status == _ACTIVE)
    .values(progress=bindparam("b_progress"), progress_message=bindparam("b_message"))
)
_set_completed = (
    update(jobs)
    .where(_leased, jobs.c.status == _ACTIVE)
    .values(
        status=JobStatus.COMPLETED.value,
        result=bindparam("b_result", type_=jobs.c.result.type),
        progress=100,
        finished_at=db_now(),
        **_release_lease,
    )
)
_set_failed = (
    update(jobs)
    .where(_leased, jobs.c.status == _ACTIVE)
    .values(
        status=JobStatus.FAILED.value,
        error=bindparam("b_error", type_=jobs.c.error.type),
        finished_at=db_now(),
        **_release_lease,
    )
)
_set_retrying = (
    update(jobs)
    .where(_leased, jobs.c.status == _ACTIVE)
    .values(
        status=JobStatus.QUEUED.value,
        error=bindparam("b_error", type_=jobs.c.error.type),
        run_at=db_now_plus(bindparam("b_delay")),
        **_requeue,
    )
)
_set_cancelled = (
    update(jobs)
    .where(_leased, jobs.c.status == _ACTIVE)
    .values(status=JobStatus.CANCELLED.value, finished_at=db_now(), **_release_lease)
)
_set_released = (
    update(jobs)
    .where(_leased, jobs.c.status == _ACTIVE)
    .values(
        status=JobStatus.QUEUED.value,
        attempts=jobs.c.attempts - 1,
        run_at=db_now(),
        **_requeue,
    )
)


def settle_tx(
    tx: Tx,
    outcomes: Sequence[Outcome],
    claim: ClaimRequest | None,
    steps: StepCoordinator | None,
    rng: random.Random | None = None,
) -> SettleResult:
    """Record a batch of attempt outcomes, then claim replacements, in one transaction."""
    lost: set[str] = set()
    if outcomes:
        lost = _apply_outcomes(tx, outcomes, steps, rng)
        if any(isinstance(o, Completed) for o in outcomes):
            faults.hit("in_complete_txn")
    claimed = claim_tx(tx, claim, steps) if claim is not None else []
    return SettleResult(claimed, frozenset(lost))


def _apply_outcomes(
    tx: Tx,
    outcomes: Sequence[Outcome],
    steps: StepCoordinator | None,
    rng: random.Random | None,
) -> set[str]:
    ids = sorted({o.job_id for o in outcomes})
    rows = {r.id: r for r in tx.conn.execute(_lease_rows, {"ids": ids})}
    lost: set[str] = set()
    progress: list[dict[str, Any]] = []
    completed: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    retrying: list[dict[str, Any]] = []
    cancelled: list[dict[str, Any]] = []
    released: list[dict[str, Any]] = []
    changes: list[StepChange] = []
    settled: set[str] = set()
    requeued: set[str] = set()

    for outcome in outcomes:
        row = rows.get(outcome.job_id)
        if (
            row is None
            or row.lease_token != outcome.token
            or row.status != _ACTIVE
            or outcome.job_id in settled
        ):
            lost.add(outcome.job_id)
            continue
        key = {"b_id": row.id, "b_token": outcome.token}
        where = {
            "owner": row.owner,
            "job_id": row.id,
            "execution_id": row.execution_id,
            "step_id": row.step_id,
            "queue": row.queue,
        }
        if isinstance(outcome, Progress):
            progress.append({**key, "b_progress": outcome.percent, "b_message": outcome.message})
            data: dict[str, Any] = {"progress": outcome.percent}
            if outcome.message is not None:
                data["message"] = outcome.message
            tx.emit(EventType.JOB_PROGRESS, data=data, **where)
            continue
        settled.add(row.id)
        final: JobStatus | None = None
        if isinstance(outcome, Released):
            released.append(key)
            requeued.add(row.queue)
            tx.emit(EventType.JOB_RELEASED, data={"attempt": row.attempts}, **where)
        elif row.cancel_requested or isinstance(outcome, Cancelled):
            # a cancel wins over whatever the attempt produced: no result after a cancel
            cancelled.append(key)
            final = JobStatus.CANCELLED
            tx.emit(
                EventType.JOB_CANCELLED,
                data={"attempt": row.attempts, "reason": "cancelled by request"},
                **where,
            )
        elif isinstance(outcome, Completed):
            completed.append({**key, "b_result": outcome.result})
            final = JobStatus.COMPLETED
            tx.emit(EventType.JOB_COMPLETED, data={"attempt": row.attempts}, **where)
        elif isinstance(outcome, Failed):
            error = dict(outcome.error)
            if outcome.retryable and row.attempts < row.max_attempts:
                backoff = tx.conn.execute(
                    select(jobs.c.backoff).where(jobs.c.id == row.id)
                ).scalar()
                delay = Backoff.from_json(backoff).delay_for(row.attempts, rng)
                retrying.append({**key, "b_error": error, "b_delay": delay})
                requeued.add(row.queue)
                tx.emit(
                    EventType.JOB_RETRYING,
                    data={
                        "attempt": row.attempts,
                        "max_attempts": row.max_attempts,
                        "delay_s": round(delay, 3),
                        "error": _public_error(error),
                    },
                    **where,
                )
            else:
                error.setdefault(
                    "reason", "retries exhausted" if outcome.retryable else "not retryable"
                )
                failed.append({**key, "b_error": error})
                final = JobStatus.FAILED
                tx.emit(
                    EventType.JOB_FAILED,
                    data={"attempt": row.attempts, "error": _public_error(error)},
                    **where,
                )
        if final is not None and row.execution_id is not None:
            changes.append(StepChange(row.execution_id, row.step_id, row.id, final))

    for stmt, params in (
        (_set_progress, progress),
        (_set_completed, completed),
        (_set_failed, failed),
        (_set_retrying, retrying),
        (_set_cancelled, cancelled),
        (_set_released, released),
    ):
        if params:
            tx.conn.execute(stmt, params)
    for queue in requeued:
        tx.notify(JOBS_CHANNEL, queue)
    if changes and steps is not None:
        steps.advance(tx, changes)
    return lost


def _public_error(error: dict[str, Any]) -> dict[str, Any]:
    """What an event carries about an error: never the traceback."""
    return {k: v for k, v in error.items() if k in ("type", "message", "reason")}


# -- renew ---------------------------------------------------------------------------------

_renew = (
    update(jobs)
    .where(
        jobs.c.status == _ACTIVE,
        tuple_(jobs.c.id, jobs.c.lease_token).in_(bindparam("pairs", expanding=True)),
    )
    .values(lease_expires_at=db_now_plus(bindparam("lease_s")))
    .returning(jobs.c.id, jobs.c.cancel_requested)
)
_beat = (
    update(workers)
    .where(workers.c.id == bindparam("worker_id"))
    .values(last_heartbeat=db_now(), current_load=bindparam("load"))
)


def renew_tx(
    tx: Tx,
    worker_id: str,
    held: Sequence[tuple[str, str]],
    lease_s: float,
    load: int,
) -> LeaseRenewal:
    """Extend the leases a worker still holds and record its heartbeat.

    A lease the worker no longer holds (expired and taken over, or cancelled and finished)
    comes back in ``lost``: the worker must stop that attempt's side effects.
    """
    renewed: set[str] = set()
    cancel: set[str] = set()
    if held:
        rows = tx.conn.execute(_renew, {"pairs": list(held), "lease_s": float(lease_s)}).all()
        for job_id, cancel_requested in rows:
            renewed.add(job_id)
            if cancel_requested:
                cancel.add(job_id)
    tx.conn.execute(_beat, {"worker_id": worker_id, "load": load})
    lost = {job_id for job_id, _ in held} - renewed
    return LeaseRenewal(frozenset(renewed), frozenset(lost), frozenset(cancel))


# -- recover -------------------------------------------------------------------------------

_expired = (
    select(
        jobs.c.id,
        jobs.c.attempts,
        jobs.c.max_attempts,
        jobs.c.lost_count,
        jobs.c.cancel_requested,
        jobs.c.owner,
        jobs.c.queue,
        jobs.c.execution_id,
        jobs.c.step_id,
        jobs.c.worker_id,
        jobs.c.lease_token,
    )
    .where(jobs.c.status == _ACTIVE, jobs.c.lease_expires_at < db_now())
    .order_by(jobs.c.lease_expires_at)
    .limit(bindparam("n"))
    .with_for_update(skip_locked=True)
)
_expire_to = (
    update(jobs)
    .where(_leased, jobs.c.status == _ACTIVE, jobs.c.lease_expires_at < db_now())
    .values(
        status=bindparam("b_status"),
        error=bindparam("b_error", type_=jobs.c.error.type),
        lost_count=jobs.c.lost_count + 1,
        run_at=db_now(),
        finished_at=bindparam("b_finished", type_=jobs.c.finished_at.type),
        **_requeue,
    )
)


def recover_expired_tx(tx: Tx, limit: int, steps: StepCoordinator | None) -> list[str]:
    """Requeue (or fail, when out of attempts) jobs whose lease ran out.

    Idempotent and safe to run from every worker at once: rows are taken with
    ``SKIP LOCKED`` and each update is conditional on the lease it found expired.
    """
    rows = tx.conn.execute(_expired, {"n": limit}).all()
    if not rows:
        return []
    params: list[dict[str, Any]] = []
    changes: list[StepChange] = []
    requeued: set[str] = set()
    finished_at = tx.conn.execute(select(db_now())).scalar_one()
    for row in rows:
        lost = row.lost_count + 1
        where = {
            "owner": row.owner,
            "job_id": row.id,
            "execution_id": row.execution_id,
            "step_id": row.step_id,
            "queue": row.queue,
        }
        error = {
            "type": "WorkerLost",
            "message": f"the worker running attempt {row.attempts} stopped renewing its "
            f"lease (worker lost {lost} time{'s' if lost > 1 else ''})",
            "worker_id": row.worker_id,
        }
        tx.emit(
            EventType.JOB_LEASE_EXPIRED,
            data={"attempt": row.attempts, "worker_id": row.worker_id, "lost_count": lost},
            **where,
        )
        key = {"b_id": row.id, "b_token": row.lease_token}
        if row.cancel_requested:
            status = JobStatus.CANCELLED
            tx.emit(EventType.JOB_CANCELLED, data={"reason": "cancelled by request"}, **where)
        elif row.attempts >= row.max_attempts:
            status = JobStatus.FAILED
            error["reason"] = f"worker lost {lost} time{'s' if lost > 1 else ''}"
            tx.emit(
                EventType.JOB_FAILED,
                data={"attempt": row.attempts, "error": _public_error(error)},
                **where,
            )
        else:
            status = JobStatus.QUEUED
            requeued.add(row.queue)
            tx.emit(
                EventType.JOB_QUEUED,
                data={"attempt": row.attempts + 1, "reason": "lease expired"},
                **where,
            )
        params.append(
            {
                **key,
                "b_status": status.value,
                "b_error": error,
                "b_finished": None if status == JobStatus.QUEUED else finished_at,
            }
        )
        if status != JobStatus.QUEUED and row.execution_id is not None:
            changes.append(StepChange(row.execution_id, row.step_id, row.id, status))
    tx.conn.execute(_expire_to, params)
    faults.hit("mid_recovery_sweep")
    for queue in requeued:
        tx.notify(JOBS_CHANNEL, queue)
    if changes and steps is not None:
        steps.advance(tx, changes)
    return [row.id for row in rows]
