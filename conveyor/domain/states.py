"""Job, step and execution states, and the one table of allowed transitions.

The engine never writes a status without checking it here, and its SQL updates carry the
allowed source states in their ``WHERE`` clause, so a concurrent change can never slip a
forbidden transition through.
"""

from __future__ import annotations

from enum import StrEnum

from conveyor.errors import InvalidTransitionError


class JobStatus(StrEnum):
    """Stored status of a job (a step is a job that belongs to an execution)."""

    PENDING = "pending"  # a step waiting on its dependencies (or, in manual mode, a client)
    QUEUED = "queued"  # claimable once run_at has passed ("delayed" before that)
    ACTIVE = "active"  # leased by a worker
    AWAITING_INPUT = "awaiting_input"  # asked a clarification; holds no worker slot
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_JOB_STATES


#: What clients see: ``delayed`` is a queued job whose run_at is still in the future.
DELAYED = "delayed"
VISIBLE_JOB_STATUSES = (
    "pending",
    "queued",
    DELAYED,
    "active",
    "awaiting_input",
    "completed",
    "failed",
    "cancelled",
)

TERMINAL_JOB_STATES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

_J = JobStatus
JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    _J.PENDING: frozenset({_J.QUEUED, _J.CANCELLED}),
    _J.QUEUED: frozenset({_J.ACTIVE, _J.CANCELLED, _J.PENDING}),
    # active -> queued: retry after backoff, released on drain, or lease expired
    _J.ACTIVE: frozenset({_J.COMPLETED, _J.FAILED, _J.QUEUED, _J.AWAITING_INPUT, _J.CANCELLED}),
    _J.AWAITING_INPUT: frozenset({_J.QUEUED, _J.CANCELLED, _J.FAILED}),
    _J.COMPLETED: frozenset(),
    # retry of a job (queued) or of an execution's step (pending until its deps are done)
    _J.FAILED: frozenset({_J.QUEUED, _J.PENDING}),
    _J.CANCELLED: frozenset({_J.QUEUED, _J.PENDING}),
}


class ExecutionStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    AWAITING_INPUT = "awaiting_input"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_EXECUTION_STATES


TERMINAL_EXECUTION_STATES = frozenset(
    {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED}
)

_E = ExecutionStatus
EXECUTION_TRANSITIONS: dict[ExecutionStatus, frozenset[ExecutionStatus]] = {
    _E.QUEUED: frozenset({_E.RUNNING, _E.AWAITING_INPUT, _E.COMPLETED, _E.FAILED, _E.CANCELLED}),
    _E.RUNNING: frozenset({_E.AWAITING_INPUT, _E.COMPLETED, _E.FAILED, _E.CANCELLED, _E.QUEUED}),
    _E.AWAITING_INPUT: frozenset({_E.RUNNING, _E.QUEUED, _E.FAILED, _E.CANCELLED, _E.COMPLETED}),
    _E.COMPLETED: frozenset(),
    _E.FAILED: frozenset({_E.RUNNING, _E.QUEUED}),
    _E.CANCELLED: frozenset({_E.RUNNING, _E.QUEUED}),
}


def job_sources(target: JobStatus) -> frozenset[JobStatus]:
    """All job states from which ``target`` may be reached."""
    return _JOB_SOURCES[target]


def execution_sources(target: ExecutionStatus) -> frozenset[ExecutionStatus]:
    """All execution states from which ``target`` may be reached."""
    return _EXECUTION_SOURCES[target]


def check_job_transition(current: JobStatus, target: JobStatus, *, what: str = "job") -> None:
    """Raise :class:`InvalidTransitionError` unless ``current -> target`` is allowed."""
    if target not in JOB_TRANSITIONS[current]:
        raise InvalidTransitionError(f"{what} is {current.value}; it cannot become {target.value}")


def check_execution_transition(current: ExecutionStatus, target: ExecutionStatus) -> None:
    if target not in EXECUTION_TRANSITIONS[current]:
        raise InvalidTransitionError(
            f"execution is {current.value}; it cannot become {target.value}"
        )


_JOB_SOURCES = {
    target: frozenset(src for src, dsts in JOB_TRANSITIONS.items() if target in dsts)
    for target in JobStatus
}
_EXECUTION_SOURCES = {
    target: frozenset(src for src, dsts in EXECUTION_TRANSITIONS.items() if target in dsts)
    for target in ExecutionStatus
}
