"""What the engine takes and returns. Plain dataclasses; the API has its own schemas."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from conveyor.domain.graph import WorkflowSpec
from conveyor.domain.priority import Priority
from conveyor.domain.retry import Backoff
from conveyor.domain.states import JobStatus
from conveyor.store.database import Tx

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class TaskDefaults:
    """What a registered task says about how its jobs run."""

    queue: str = "default"
    max_attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    timeout_s: float | None = None
    priority: Priority = Priority.MEDIUM


class TaskCatalog(Protocol):
    """The registered tasks and workflows (implemented by the SDK's app)."""

    def task_defaults(self, name: str) -> TaskDefaults | None:
        """Defaults for ``name``, or ``None`` if no such task is registered."""

    def validate_input(self, name: str, data: JsonObject) -> None:
        """Raise :class:`InvalidInputError` if ``data`` cannot be the task's input."""

    def validate_step_input(self, name: str, data: JsonObject, later: Collection[str]) -> None:
        """Like :meth:`validate_input` for a workflow step: keys the task does not take
        are ignored, and parameters in ``later`` (dependencies' outputs) are not checked."""

    def workflow_spec(self, name: str) -> WorkflowSpec | None:
        """The workflow registered as ``name``, or ``None``."""

    def secret_fields(self, name: str) -> tuple[str, ...]:
        """Input fields of task ``name`` that are secrets (sealed before storing)."""


@dataclass(frozen=True, slots=True)
class StepChange:
    """A step's job reached a new status; its execution may have to move on."""

    execution_id: str
    step_id: str
    job_id: str
    status: JobStatus


class StepCoordinator(Protocol):
    """Moves executions along when their steps change (see engine/executions.py)."""

    def advance(self, tx: Tx, changes: list[StepChange]) -> None: ...

    def started(self, tx: Tx, execution_ids: set[str]) -> None: ...


@dataclass(slots=True)
class JobSpec:
    """A request to run one task once (the engine fills the task's defaults)."""

    task: str
    input: JsonObject | None = None
    queue: str | None = None
    priority: Priority | str | int | None = None
    max_attempts: int | None = None
    backoff: Backoff | None = None
    delay_s: float | None = None
    run_at: datetime | None = None
    timeout_s: float | None = None
    idempotency_key: str | None = None
    metadata: JsonObject | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """A job as clients see it. ``status`` may be ``delayed`` (queued, not yet due)."""

    id: str
    task: str
    queue: str
    status: str
    priority: Priority
    run_at: datetime
    attempts: int
    max_attempts: int
    backoff: Backoff
    timeout_s: float | None
    input: JsonObject | None
    result: Any
    error: JsonObject | None
    progress: int
    progress_message: str | None
    worker_id: str | None
    cancel_requested: bool
    owner: str
    idempotency_key: str | None
    execution_id: str | None
    step_id: str | None
    depends_on: list[str] | None
    metadata: JsonObject | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    job: Job
    created: bool  # False when an idempotency key returned an existing job


@dataclass(slots=True)
class ClaimedJob:
    """A job leased to a worker: everything the worker needs to run it."""

    id: str
    task: str
    queue: str
    input: JsonObject | None
    attempt: int
    max_attempts: int
    lease_token: str
    timeout_s: float | None
    owner: str
    execution_id: str | None
    step_id: str | None
    metadata: JsonObject | None
    cancel_requested: bool
    dependencies: dict[str, Any] = field(default_factory=dict)


# -- outcomes a worker reports, settled in batches --------------------------------------


@dataclass(slots=True)
class Completed:
    job_id: str
    token: str
    result: Any


@dataclass(slots=True)
class Failed:
    job_id: str
    token: str
    error: JsonObject
    retryable: bool = True


@dataclass(slots=True)
class Cancelled:
    """The attempt stopped because a cancel was requested."""

    job_id: str
    token: str


@dataclass(slots=True)
class Released:
    """The worker gives the job back without running it to the end (drain)."""

    job_id: str
    token: str


@dataclass(slots=True)
class Progress:
    job_id: str
    token: str
    percent: int
    message: str | None


Outcome = Completed | Failed | Cancelled | Released | Progress


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    worker_id: str
    limit: int
    queues: list[str] | None  # None: every queue
    tasks: list[str] | None  # None: every task (the worker must know them all)
    lease_s: float


@dataclass(frozen=True, slots=True)
class SettleResult:
    claimed: list[ClaimedJob]
    lost: frozenset[str]  # outcomes refused: the lease was no longer theirs
    #: wake-up notifications this transaction sent (work it queued itself)
    queued_here: int = 0


@dataclass(frozen=True, slots=True)
class LeaseRenewal:
    renewed: frozenset[str]
    lost: frozenset[str]
    cancel_requested: frozenset[str]


@dataclass(frozen=True, slots=True)
class QueueStats:
    name: str
    paused: bool
    counts: dict[str, int]
    avg_run_ms: float | None
    success_rate: float | None


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    id: str
    hostname: str
    pid: int | None
    kind: str
    queues: list[str] | None
    capabilities: list[str] | None
    max_concurrency: int
    current_load: int
    status: str  # active | idle | busy | draining | unhealthy | stopped
    metadata: JsonObject | None
    started_at: datetime
    last_heartbeat: datetime

    @property
    def utilization(self) -> float:
        if self.max_concurrency <= 0:
            return 0.0
        return round(self.current_load / self.max_concurrency, 4)


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Any]
    next_cursor: str | None


# -- executions ----------------------------------------------------------------------------


@dataclass(slots=True)
class ExecutionSpec:
    """A request to run a workflow (by name) or an ad-hoc list of steps."""

    workflow: str | None = None
    steps: list[Any] | None = None  # list[conveyor.domain.graph.Step] for ad-hoc DAGs
    input: JsonObject | None = None
    scope_type: str | None = None
    scope_id: str | None = None
    priority: Priority | str | int | None = None
    parallelism: int | None = None
    mode: str = "auto"
    failure_policy: str | None = None
    idempotency_key: str | None = None
    metadata: JsonObject | None = None
    budget_usd: float | None = None


@dataclass(frozen=True, slots=True)
class ExecutionProgress:
    total: int
    completed: int
    failed: int
    running: int
    awaiting_input: int
    cancelled: int
    percent: float


@dataclass(frozen=True, slots=True)
class Execution:
    id: str
    workflow: str | None
    workflow_version: str | None
    status: str
    mode: str
    failure_policy: str
    parallelism: int | None
    priority: Priority
    input: JsonObject | None
    output: Any
    error: JsonObject | None
    scope_type: str | None
    scope_id: str | None
    owner: str
    idempotency_key: str | None
    metadata: JsonObject | None
    steps: list[JsonObject]
    progress: ExecutionProgress
    budget_usd: float | None
    cost_usd: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class StartResult:
    execution: Execution
    created: bool


@dataclass(frozen=True, slots=True)
class Clarification:
    id: str
    job_id: str
    execution_id: str | None
    step_id: str | None
    seq: int
    owner: str
    questions: list[JsonObject]
    answers: JsonObject | None
    status: str  # pending | answered | expired | cancelled
    on_timeout: str
    timeout_at: datetime | None
    created_at: datetime
    answered_at: datetime | None


@dataclass(frozen=True, slots=True)
class StepState:
    """One step of an execution as clients see it."""

    step_id: str
    task: str
    status: str
    depends_on: list[str]
    job_id: str
    attempts: int
    max_attempts: int
    progress: int
    progress_message: str | None
    result: Any
    error: JsonObject | None
    clarification: Clarification | None
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class AskResult:
    """What ``ctx.ask`` learns: the answers, or that the step must wait for them."""

    answers: JsonObject | None
    clarification_id: str
