"""Clarifications (a human in the loop) and in-step memos.

``ctx.ask`` records questions and parks the step in ``awaiting_input``: it holds no lease
and no worker slot. Valid answers re-queue it; when it runs again, the same ``ctx.ask``
(the n-th of that step) finds its answers and returns them at once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, update

from conveyor.domain.events import EventType
from conveyor.domain.ids import new_id
from conveyor.domain.questions import Question, default_answers, validate_answers
from conveyor.domain.states import JobStatus
from conveyor.engine.jobs import JOBS_CHANNEL, check_id
from conveyor.engine.models import (
    AskResult,
    Clarification,
    StepChange,
    StepCoordinator,
    StepState,
)
from conveyor.engine.rows import clarification_from_row
from conveyor.errors import ConflictError, GoneError, LeaseLostError, NotFoundError
from conveyor.store.database import Tx
from conveyor.store.schema import clarifications, executions, jobs, step_memos
from conveyor.store.sql import db_now, db_now_plus, dialect_insert

_J = JobStatus
ON_TIMEOUT = ("fail", "default")


def _leased_job(tx: Tx, job_id: str, token: str) -> Any:
    row = tx.conn.execute(
        select(jobs)
        .where(jobs.c.id == job_id, jobs.c.lease_token == token, jobs.c.status == _J.ACTIVE.value)
        .with_for_update()
    ).first()
    if row is None:
        raise LeaseLostError(f"job {job_id} is no longer leased by this attempt")
    return row


def ask_tx(
    tx: Tx,
    job_id: str,
    token: str,
    seq: int,
    questions: list[Question],
    timeout_s: float | None,
    on_timeout: str,
    steps: StepCoordinator | None,
) -> AskResult:
    """Return earlier answers to this question set, or park the step until answered."""
    job = _leased_job(tx, job_id, token)
    found = tx.conn.execute(
        select(clarifications).where(clarifications.c.job_id == job_id, clarifications.c.seq == seq)
    ).first()
    if found is not None and found.status == "answered":
        return AskResult(found.answers, found.id)
    if found is None:
        clarification_id = new_id()
        tx.conn.execute(
            dialect_insert(tx.dialect, clarifications).values(
                id=clarification_id,
                job_id=job_id,
                execution_id=job.execution_id,
                step_id=job.step_id,
                seq=seq,
                owner=job.owner,
                questions=[q.to_json() for q in questions],
                status="pending",
                on_timeout=on_timeout,
                timeout_at=None if timeout_s is None else db_now_plus(timeout_s),
                created_at=db_now(),
            )
        )
    else:
        clarification_id = found.id
        if found.status != "pending":  # expired or cancelled under us: nothing to wait for
            raise LeaseLostError(f"the clarification of job {job_id} is {found.status}")
    # waiting for a human is not a failed attempt: give the attempt back
    tx.conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.lease_token == token)
        .values(
            status=_J.AWAITING_INPUT.value,
            attempts=jobs.c.attempts - 1,
            lease_token=None,
            lease_expires_at=None,
        )
    )
    where = {
        "owner": job.owner,
        "job_id": job_id,
        "execution_id": job.execution_id,
        "step_id": job.step_id,
        "queue": job.queue,
    }
    tx.emit(
        EventType.CLARIFICATION_REQUESTED,
        data={
            "clarification_id": clarification_id,
            "questions": [q.to_json() for q in questions],
        },
        **where,
    )
    tx.emit(EventType.JOB_AWAITING_INPUT, data={"clarification_id": clarification_id}, **where)
    if job.execution_id is not None and steps is not None:
        steps.advance(tx, [StepChange(job.execution_id, job.step_id, job_id, _J.AWAITING_INPUT)])
    return AskResult(None, clarification_id)


def _pending_for_step(tx: Tx, execution_id: str, step_id: str, owner: str | None) -> Any:
    stmt = (
        select(clarifications)
        .where(
            clarifications.c.execution_id == check_id(execution_id, "execution"),
            clarifications.c.step_id == step_id,
        )
        .order_by(clarifications.c.seq.desc())
        .limit(1)
        .with_for_update()
    )
    if owner is not None:
        stmt = stmt.where(clarifications.c.owner == owner)
    row = tx.conn.execute(stmt).first()
    if row is None:
        raise NotFoundError(f"step {step_id!r} of execution {execution_id} asked nothing")
    return row


def answer_tx(
    tx: Tx,
    execution_id: str,
    step_id: str,
    answers: dict[str, Any],
    owner: str | None,
    actor: str,
    steps: StepCoordinator | None,
) -> Clarification:
    """Record valid answers and re-queue the step (422 and still waiting if invalid)."""
    row = _pending_for_step(tx, execution_id, step_id, owner)
    if row.status == "answered":
        raise ConflictError("this clarification was already answered")
    if row.status == "expired":
        raise GoneError("this clarification expired before it was answered")
    if row.status != "pending":
        raise ConflictError(f"this clarification is {row.status}")
    if row.timeout_at is not None and _past_deadline(tx, row.id):
        # the sweep has not expired it yet, but the deadline (database clock) is the
        # cut-off: a late answer must not win over "no answer by the deadline"
        raise GoneError("this clarification expired before it was answered")
    questions = [Question.from_json(q) for q in row.questions]
    complete = validate_answers(questions, answers)
    _resolve_tx(tx, row, complete, actor, steps)
    fresh = tx.conn.execute(select(clarifications).where(clarifications.c.id == row.id)).one()
    return clarification_from_row(fresh)


def _past_deadline(tx: Tx, clarification_id: str) -> bool:
    """Whether the deadline passed, by the same test as the expiry sweep's."""
    return bool(
        tx.conn.execute(
            select(clarifications.c.timeout_at < db_now()).where(
                clarifications.c.id == clarification_id
            )
        ).scalar()
    )


def _resolve_tx(
    tx: Tx, row: Any, answers: dict[str, Any], actor: str, steps: StepCoordinator | None
) -> None:
    tx.conn.execute(
        update(clarifications)
        .where(clarifications.c.id == row.id, clarifications.c.status == "pending")
        .values(status="answered", answers=answers, answered_by=actor, answered_at=db_now())
    )
    job = tx.conn.execute(
        update(jobs)
        .where(jobs.c.id == row.job_id, jobs.c.status == _J.AWAITING_INPUT.value)
        .values(status=_J.QUEUED.value, run_at=db_now())
        .returning(jobs.c.queue, jobs.c.attempts)
    ).first()
    where = {
        "owner": row.owner,
        "job_id": row.job_id,
        "execution_id": row.execution_id,
        "step_id": row.step_id,
    }
    tx.emit(
        EventType.CLARIFICATION_ANSWERED,
        data={"clarification_id": row.id, "answered_by": actor},
        **where,
    )
    if job is None:
        return  # the step was cancelled meanwhile: the answers are kept, nothing resumes
    tx.emit(
        EventType.JOB_QUEUED,
        queue=job.queue,
        data={"attempt": job.attempts + 1, "reason": "answered"},
        **where,
    )
    tx.notify(JOBS_CHANNEL, job.queue)
    if row.execution_id is not None and steps is not None:
        steps.advance(tx, [StepChange(row.execution_id, row.step_id, row.job_id, _J.QUEUED)])


_expired_clarifications = (
    select(clarifications)
    .where(clarifications.c.status == "pending", clarifications.c.timeout_at < db_now())
    .order_by(clarifications.c.timeout_at)
    .limit(100)
    .with_for_update(skip_locked=True)
)


def expire_tx(tx: Tx, steps: StepCoordinator | None) -> int:
    """Apply ``on_timeout`` to clarifications past their deadline.

    ``default``: the questions' defaults are recorded as the answers and the step
    resumes. ``fail``: the step fails. No answer by the deadline is never an answer.
    """
    rows = tx.conn.execute(_expired_clarifications).all()
    for row in rows:
        questions = [Question.from_json(q) for q in row.questions]
        defaults = default_answers(questions) if row.on_timeout == "default" else None
        if defaults is not None:
            _resolve_tx(tx, row, defaults, "timeout-default", steps)
            continue
        tx.conn.execute(
            update(clarifications)
            .where(clarifications.c.id == row.id, clarifications.c.status == "pending")
            .values(status="expired")
        )
        failed = tx.conn.execute(
            update(jobs)
            .where(jobs.c.id == row.job_id, jobs.c.status == _J.AWAITING_INPUT.value)
            .values(
                status=_J.FAILED.value,
                finished_at=db_now(),
                error={
                    "type": "ClarificationTimeout",
                    "message": "no answer before the deadline",
                    "reason": "clarification expired",
                },
            )
            .returning(jobs.c.queue)
        ).first()
        where = {
            "owner": row.owner,
            "job_id": row.job_id,
            "execution_id": row.execution_id,
            "step_id": row.step_id,
        }
        tx.emit(EventType.CLARIFICATION_EXPIRED, data={"clarification_id": row.id}, **where)
        if failed is not None:
            tx.emit(
                EventType.JOB_FAILED,
                queue=failed.queue,
                data={"error": {"type": "ClarificationTimeout", "reason": "clarification expired"}},
                **where,
            )
            if row.execution_id is not None and steps is not None:
                steps.advance(
                    tx, [StepChange(row.execution_id, row.step_id, row.job_id, _J.FAILED)]
                )
    return len(rows)


def get_for_step(
    conn: Connection, execution_id: str, step_id: str, owner: str | None
) -> Clarification:
    stmt = (
        select(clarifications)
        .where(
            clarifications.c.execution_id == check_id(execution_id, "execution"),
            clarifications.c.step_id == step_id,
        )
        .order_by(clarifications.c.seq.desc())
        .limit(1)
    )
    if owner is not None:
        stmt = stmt.where(clarifications.c.owner == owner)
    row = conn.execute(stmt).first()
    if row is None:
        # 404 whether the execution is someone else's, missing, or asked nothing
        raise NotFoundError(f"step {step_id!r} of execution {execution_id} asked nothing")
    return clarification_from_row(row)


def list_clarifications(
    conn: Connection, owner: str | None, status: str | None, limit: int
) -> list[Clarification]:
    stmt = select(clarifications)
    if owner is not None:
        stmt = stmt.where(clarifications.c.owner == owner)
    if status is not None:
        stmt = stmt.where(clarifications.c.status == status)
    rows = conn.execute(stmt.order_by(clarifications.c.created_at.desc()).limit(limit)).all()
    return [clarification_from_row(r) for r in rows]


def list_steps(conn: Connection, execution_id: str, owner: str | None) -> list[StepState]:
    stmt = select(executions.c.id, executions.c.steps).where(
        executions.c.id == check_id(execution_id, "execution")
    )
    if owner is not None:
        stmt = stmt.where(executions.c.owner == owner)
    ex = conn.execute(stmt).first()
    if ex is None:
        raise NotFoundError(f"execution {execution_id!r} not found")
    rows = {r.step_id: r for r in conn.execute(select(jobs).where(jobs.c.execution_id == ex.id))}
    latest: dict[str, Clarification] = {}
    for row in conn.execute(
        select(clarifications)
        .where(clarifications.c.execution_id == ex.id)
        .order_by(clarifications.c.seq)
    ):
        latest[row.step_id] = clarification_from_row(row)
    states = []
    for step in ex.steps:
        job = rows[step["id"]]
        states.append(
            StepState(
                step_id=step["id"],
                task=step["task"],
                status=job.status,
                depends_on=list(step.get("depends_on") or []),
                job_id=job.id,
                attempts=job.attempts,
                max_attempts=job.max_attempts,
                progress=job.progress,
                progress_message=job.progress_message,
                result=job.result,
                error=job.error,
                clarification=latest.get(step["id"]),
                started_at=job.started_at,
                finished_at=job.finished_at,
            )
        )
    return states


# -- memos -------------------------------------------------------------------------------------


def get_memo(conn: Connection, job_id: str, key: str) -> tuple[bool, Any]:
    row = conn.execute(
        select(step_memos.c.value).where(step_memos.c.job_id == job_id, step_memos.c.key == key)
    ).first()
    return (False, None) if row is None else (True, row.value)


def put_memo_tx(tx: Tx, job_id: str, token: str, key: str, value: Any) -> Any:
    """Record a memo, only while the attempt still holds the lease; returns the value
    recorded (the first one, should two attempts race)."""
    _leased_job(tx, job_id, token)
    tx.conn.execute(
        dialect_insert(tx.dialect, step_memos)
        .values(job_id=job_id, key=key, value=value, created_at=db_now())
        .on_conflict_do_nothing(index_elements=["job_id", "key"])
    )
    return get_memo(tx.conn, job_id, key)[1]
