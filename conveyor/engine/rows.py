"""Turning table rows into engine models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row

from conveyor.domain.priority import Priority
from conveyor.domain.retry import Backoff
from conveyor.domain.states import DELAYED, JobStatus
from conveyor.engine.models import Clarification, Job


def visible_status(status: str, run_at: datetime, now: datetime | None = None) -> str:
    """``delayed`` for a queued job that is not due yet, the stored status otherwise."""
    if status == JobStatus.QUEUED and run_at > (now or datetime.now(UTC)):
        return DELAYED
    return status


def job_from_row(row: Row[Any] | Any, now: datetime | None = None) -> Job:
    m = row._mapping
    return Job(
        id=m["id"],
        task=m["task"],
        queue=m["queue"],
        status=visible_status(m["status"], m["run_at"], now),
        priority=Priority(m["priority"]),
        run_at=m["run_at"],
        attempts=m["attempts"],
        max_attempts=m["max_attempts"],
        backoff=Backoff.from_json(m["backoff"]),
        timeout_s=m["timeout_s"],
        input=m["input"],
        result=m["result"],
        error=m["error"],
        progress=m["progress"],
        progress_message=m["progress_message"],
        worker_id=m["worker_id"],
        cancel_requested=bool(m["cancel_requested"]),
        owner=m["owner"],
        idempotency_key=m["idempotency_key"],
        execution_id=m["execution_id"],
        step_id=m["step_id"],
        depends_on=m["depends_on"],
        metadata=m["metadata"],
        created_at=m["created_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
    )


def clarification_from_row(row: Any) -> Clarification:
    m = row._mapping
    return Clarification(
        id=m["id"],
        job_id=m["job_id"],
        execution_id=m["execution_id"],
        step_id=m["step_id"],
        seq=m["seq"],
        owner=m["owner"],
        questions=m["questions"],
        answers=m["answers"],
        status=m["status"],
        on_timeout=m["on_timeout"],
        timeout_at=m["timeout_at"],
        created_at=m["created_at"],
        answered_at=m["answered_at"],
    )
