"""Event types. Every state change writes one event row in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    JOB_QUEUED = "job.queued"
    JOB_STARTED = "job.started"
    JOB_PROGRESS = "job.progress"
    JOB_COMPLETED = "job.completed"
    JOB_FAILED = "job.failed"
    JOB_RETRYING = "job.retrying"
    JOB_CANCEL_REQUESTED = "job.cancel_requested"
    JOB_CANCELLED = "job.cancelled"
    JOB_RELEASED = "job.released"
    JOB_LEASE_EXPIRED = "job.lease_expired"
    JOB_AWAITING_INPUT = "job.awaiting_input"
    EXECUTION_STARTED = "execution.started"
    EXECUTION_AWAITING_INPUT = "execution.awaiting_input"
    EXECUTION_RUNNING = "execution.running"
    EXECUTION_COMPLETED = "execution.completed"
    EXECUTION_FAILED = "execution.failed"
    EXECUTION_CANCELLED = "execution.cancelled"
    EXECUTION_RETRYING = "execution.retrying"
    CLARIFICATION_REQUESTED = "clarification.requested"
    CLARIFICATION_ANSWERED = "clarification.answered"
    CLARIFICATION_EXPIRED = "clarification.expired"
    DOCUMENT_SAVED = "document.saved"
    USAGE_RECORDED = "usage.recorded"
    QUEUE_PAUSED = "queue.paused"
    QUEUE_RESUMED = "queue.resumed"
    QUEUE_CLEANED = "queue.cleaned"


#: Event types after which nothing more happens to a job or an execution.
TERMINAL_JOB_EVENTS = frozenset(
    {EventType.JOB_COMPLETED, EventType.JOB_FAILED, EventType.JOB_CANCELLED}
)
TERMINAL_EXECUTION_EVENTS = frozenset(
    {
        EventType.EXECUTION_COMPLETED,
        EventType.EXECUTION_FAILED,
        EventType.EXECUTION_CANCELLED,
    }
)


@dataclass(slots=True)
class NewEvent:
    """An event about to be written (its id is assigned by the store at commit)."""

    type: str
    owner: str
    job_id: str | None = None
    execution_id: str | None = None
    step_id: str | None = None
    queue: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Event:
    """A recorded event: ``id`` is monotonic and gap-free across the whole system."""

    id: int
    type: str
    owner: str
    job_id: str | None
    execution_id: str | None
    step_id: str | None
    queue: str | None
    data: dict[str, Any]
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "job_id": self.job_id,
            "execution_id": self.execution_id,
            "step_id": self.step_id,
            "queue": self.queue,
            "data": self.data,
            "created_at": self.created_at.isoformat(),
        }
