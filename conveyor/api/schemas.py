"""Request and response bodies of the HTTP contract.

Requests forbid unknown fields and take each field at its JSON type (no "3" for 3, no
number for a timestamp); responses list their fields explicitly, so nothing internal
(lease tokens, hashes, tracebacks) can leak through them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    model_validator,
)

from conveyor.domain.states import VISIBLE_JOB_STATUSES


def _iso_string(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 date-time string with a time zone")
    return value


def _integral(value: Any) -> Any:
    # JSON Schema counts 3.0 as an integer; a bool is not one
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# integers in a range that take JSON integers only (3 or 3.0, never "3" or true)
Attempts = Annotated[int, Field(strict=True, ge=1, le=100), BeforeValidator(_integral)]
Slots = Annotated[int, Field(strict=True, ge=1, le=10_000), BeforeValidator(_integral)]
Load = Annotated[int, Field(strict=True, ge=0, le=10_000), BeforeValidator(_integral)]
Pid = Annotated[int, Field(strict=True, ge=0, le=2**31), BeforeValidator(_integral)]


IsoDatetime = Annotated[AwareDatetime, BeforeValidator(_iso_string)]
SFloat = Annotated[float, Strict()]
SBool = Annotated[bool, Strict()]
Name = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=200)]
QueueName = Annotated[
    str, Strict(), StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
]
StepId = Annotated[str, Strict(), StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")]
PriorityName = Literal["critical", "high", "medium", "low"]
JobStatusName = Literal[
    "pending", "queued", "delayed", "active", "awaiting_input", "completed", "failed", "cancelled"
]
ExecutionStatusName = Literal[
    "queued", "running", "awaiting_input", "completed", "failed", "cancelled"
]
assert set(JobStatusName.__args__) == set(VISIBLE_JOB_STATUSES)  # type: ignore[attr-defined]

MAX_DELAY_S = 366 * 86_400.0
MAX_TIMEOUT_S = 7 * 86_400.0


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- auth ----------------------------------------------------------------------------------


class TokenRequest(Request):
    username: Annotated[str, Strict(), StringConstraints(min_length=1, max_length=64)]
    password: Annotated[str, Strict(), StringConstraints(min_length=1, max_length=256)]


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class UserCreate(Request):
    username: Annotated[
        str, Strict(), StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{1,63}$")
    ]
    password: Annotated[str, Strict(), StringConstraints(min_length=8, max_length=256)]
    roles: Annotated[
        list[Literal["admin", "user", "worker"]], Field(min_length=1, max_length=3)
    ] = ["user"]


class UserOut(BaseModel):
    id: str
    username: str
    roles: list[str]
    disabled: bool
    created_at: datetime


class MeOut(BaseModel):
    id: str
    username: str
    roles: list[str]


# -- jobs ----------------------------------------------------------------------------------


class BackoffIn(Request):
    type: Literal["exponential", "fixed"] = "exponential"
    delay_s: Annotated[SFloat, Field(ge=0, le=86_400)] = 1.0
    max_delay_s: Annotated[SFloat, Field(ge=0, le=604_800)] | None = None
    jitter: SBool | None = None

    @model_validator(mode="after")
    def _cap_at_least_delay(self) -> BackoffIn:
        if self.max_delay_s is not None and self.max_delay_s < self.delay_s:
            raise ValueError("max_delay_s must be >= delay_s")
        return self


class JobCreate(Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"task": "add", "input": {"a": 1, "b": 2}, "priority": "high"},
            "not": {
                "required": ["delay_s", "run_at"],
                "properties": {"delay_s": {"type": "number"}, "run_at": {"type": "string"}},
            },
        },
    )
    task: Name
    input: dict[str, Any] | None = None
    queue: QueueName | None = None
    priority: PriorityName | None = None
    max_attempts: Attempts | None = None
    backoff: BackoffIn | None = None
    delay_s: Annotated[SFloat, Field(ge=0, le=MAX_DELAY_S)] | None = None
    run_at: IsoDatetime | None = None
    timeout_s: Annotated[SFloat, Field(gt=0, le=MAX_TIMEOUT_S)] | None = None
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_start_time(self) -> JobCreate:
        if self.delay_s is not None and self.run_at is not None:
            raise ValueError("give delay_s or run_at, not both")
        return self


class ErrorOut(BaseModel):
    type: str | None = None
    message: str | None = None
    reason: str | None = None
    details: list[dict[str, Any]] | None = None


class JobOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": "01a20ace-d74b-7733-b933-fa8471f77657",
                "task": "add",
                "queue": "default",
                "status": "completed",
                "priority": "medium",
                "progress": 100,
                "progress_message": None,
                "attempts": 1,
                "max_attempts": 3,
                "input": {"a": 1, "b": 2},
                "result": 3,
                "error": None,
                "worker_id": "host-1234-ab12cd",
                "execution_id": None,
                "step_id": None,
                "owner": "01a20ab0-0000-7000-8000-000000000001",
                "metadata": None,
                "cancel_requested": False,
                "run_at": "2026-11-23T23:47:37.000+00:00",
                "timeout_s": None,
                "created_at": "2026-11-23T23:47:37.000+00:00",
                "started_at": "2026-11-23T23:47:37.010+00:00",
                "finished_at": "2026-11-23T23:47:37.020+00:00",
            }
        }
    )
    id: str
    task: str
    queue: str
    status: JobStatusName
    priority: PriorityName
    progress: int
    progress_message: str | None
    attempts: int
    max_attempts: int
    input: dict[str, Any] | None
    result: Any = None
    error: ErrorOut | None
    worker_id: str | None
    execution_id: str | None
    step_id: str | None
    owner: str
    metadata: dict[str, Any] | None
    cancel_requested: bool
    run_at: datetime
    timeout_s: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class EventOut(BaseModel):
    id: int
    type: str
    job_id: str | None
    execution_id: str | None
    step_id: str | None
    data: dict[str, Any]
    created_at: datetime


class EventPage(BaseModel):
    items: list[EventOut]
    next_cursor: str | None


# -- workflows and executions -----------------------------------------------------------------


class WorkflowStepOut(BaseModel):
    id: str
    task: str
    depends_on: list[str]


class WorkflowOut(BaseModel):
    name: str
    version: str
    description: str | None
    failure_policy: str
    parallelism: int | None
    steps: list[WorkflowStepOut]


class StepIn(Request):
    id: StepId
    task: Name
    depends_on: Annotated[
        list[StepId], Field(max_length=2000, json_schema_extra={"uniqueItems": True})
    ] = []
    input: dict[str, Any] | None = None


class ExecutionCreate(Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"workflow": "research", "input": {"question": "How do agents use tools?"}},
                {
                    "steps": [
                        {"id": "fetch", "task": "fetch_numbers"},
                        {"id": "merge", "task": "merge_chunks", "depends_on": ["fetch"]},
                    ],
                    "parallelism": 2,
                },
            ],
            # exactly one of workflow and steps (a null one counts as absent)
            "anyOf": [
                {"required": ["workflow"], "properties": {"workflow": {"type": "string"}}},
                {"required": ["steps"], "properties": {"steps": {"type": "array"}}},
            ],
            "not": {
                "required": ["workflow", "steps"],
                "properties": {"workflow": {"type": "string"}, "steps": {"type": "array"}},
            },
        },
    )
    workflow: Name | None = None
    steps: Annotated[list[StepIn], Field(min_length=1, max_length=2000)] | None = None
    input: dict[str, Any] | None = None
    scope_type: Annotated[str, Strict(), StringConstraints(min_length=1, max_length=100)] | None = (
        None
    )
    scope_id: Annotated[str, Strict(), StringConstraints(min_length=1, max_length=200)] | None = (
        None
    )
    priority: PriorityName | None = None
    parallelism: Slots | None = None
    mode: Literal["auto", "manual"] = "auto"
    failure_policy: Literal["fail_fast", "continue"] | None = None
    metadata: dict[str, Any] | None = None
    budget_usd: Annotated[SFloat, Field(gt=0, le=1_000_000)] | None = None

    @model_validator(mode="after")
    def _workflow_or_steps(self) -> ExecutionCreate:
        if (self.workflow is None) == (self.steps is None):
            raise ValueError("give either workflow or steps")
        return self


class ProgressOut(BaseModel):
    total: int
    completed: int
    failed: int
    running: int
    awaiting_input: int
    cancelled: int
    percent: float


class ExecutionOut(BaseModel):
    id: str
    workflow: str | None
    workflow_version: str | None
    status: ExecutionStatusName
    mode: Literal["auto", "manual"]
    failure_policy: str
    priority: PriorityName
    input: dict[str, Any] | None
    output: Any = None
    error: ErrorOut | None
    scope_type: str | None
    scope_id: str | None
    parallelism: int | None
    progress: ProgressOut
    budget_usd: float | None
    cost_usd: float | None
    owner: str
    metadata: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ExecutionPage(BaseModel):
    items: list[ExecutionOut]
    next_cursor: str | None


class QuestionOut(BaseModel):
    id: str
    text: str
    schema_: dict[str, Any] = Field(alias="schema")
    default: Any = None

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class ClarificationOut(BaseModel):
    id: str
    execution_id: str | None
    step_id: str | None
    job_id: str
    questions: list[QuestionOut]
    status: Literal["pending", "answered", "expired", "cancelled"]
    answers: dict[str, Any] | None
    timeout_at: datetime | None
    created_at: datetime
    answered_at: datetime | None


class ClarificationList(BaseModel):
    items: list[ClarificationOut]
    next_cursor: str | None = None


class AnswerIn(Request):
    answers: dict[str, Any]


class StepOut(BaseModel):
    step_id: str
    task: str
    status: JobStatusName
    depends_on: list[str]
    job_id: str
    attempts: int
    max_attempts: int
    progress: int
    progress_message: str | None
    result: Any = None
    error: ErrorOut | None
    clarification: ClarificationOut | None
    started_at: datetime | None
    finished_at: datetime | None


class RunStepIn(Request):
    input: dict[str, Any] | None = None


# -- workers, queues, health ----------------------------------------------------------------


class WorkerCreate(Request):
    worker_id: (
        Annotated[str, Strict(), StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] | None
    ) = None
    hostname: Annotated[str, Strict(), StringConstraints(min_length=1, max_length=255)]
    pid: Pid | None = None
    queues: Annotated[list[QueueName], Field(max_length=100)] | None = None
    capabilities: Annotated[list[Name], Field(max_length=1000)] | None = None
    max_concurrency: Slots
    metadata: dict[str, Any] | None = None


class HeartbeatIn(Request):
    current_load: Load | None = None


class WorkerOut(BaseModel):
    worker_id: str
    hostname: str
    pid: int | None
    kind: str
    queues: list[str] | None
    capabilities: list[str] | None
    status: Literal["active", "idle", "busy", "unhealthy", "draining", "stopped"]
    current_load: int
    max_concurrency: int
    utilization: float
    metadata: dict[str, Any] | None
    last_heartbeat: datetime
    started_at: datetime


class WorkerList(BaseModel):
    count: int
    workers: list[WorkerOut]


class QueueCounts(BaseModel):
    queued: int
    delayed: int
    active: int
    awaiting_input: int
    completed: int
    failed: int
    cancelled: int


class QueueOut(BaseModel):
    name: str
    paused: bool
    counts: QueueCounts
    avg_run_ms: float | None
    success_rate: float | None


class QueueList(BaseModel):
    items: list[QueueOut]
    next_cursor: str | None = None


class CleanIn(Request):
    status: Literal["completed", "failed", "cancelled"]
    older_than_s: Annotated[SFloat, Field(ge=0, le=10 * 365 * 86_400)]


class CleanOut(BaseModel):
    deleted: int


class WorkerHealth(BaseModel):
    total: int
    active: int
    idle: int
    busy: int
    unhealthy: int
    utilization_percent: float


class HealthOut(BaseModel):
    healthy: bool
    components: dict[str, str]
    workers: WorkerHealth


# -- documents and telemetry ----------------------------------------------------------------


class DocumentOut(BaseModel):
    id: str
    type: str
    title: str
    scope_type: str
    scope_id: str
    version: int
    content: Any = None
    content_type: Literal["json", "text"]
    owner: str
    execution_id: str | None
    created_at: datetime
    updated_at: datetime


class DocumentSummary(BaseModel):
    id: str
    type: str
    title: str
    scope_type: str
    scope_id: str
    version: int
    owner: str
    execution_id: str | None
    created_at: datetime
    updated_at: datetime


class DocumentPage(BaseModel):
    items: list[DocumentSummary]
    next_cursor: str | None


class VersionOut(BaseModel):
    document_id: str
    version: int
    title: str
    content: Any = None
    content_type: Literal["json", "text"]
    created_by: str
    job_id: str | None
    execution_id: str | None
    step_id: str | None
    created_at: datetime


class VersionSummary(BaseModel):
    version: int
    title: str
    content_type: Literal["json", "text"]
    created_by: str
    job_id: str | None
    step_id: str | None
    created_at: datetime


class DocumentUpdate(Request):
    content: Any
    title: Annotated[str, Strict(), StringConstraints(min_length=1, max_length=500)] | None = None


class UsageTotals(BaseModel):
    calls: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: float | None
    avg_latency_ms: float | None
    executions: int


class WorkflowUsage(UsageTotals):
    workflow: str | None


class ModelUsage(UsageTotals):
    provider: str
    model: str


class DayUsage(BaseModel):
    day: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None


class TelemetrySummary(UsageTotals):
    from_: str | None = Field(alias="from")
    to: str | None
    avg_cost_per_call_usd: float | None
    avg_cost_per_execution_usd: float | None
    by_workflow: list[WorkflowUsage]
    by_model: list[ModelUsage]
    by_day: list[DayUsage]

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class StepUsage(UsageTotals):
    step_id: str | None
    provider: str
    model: str


class ExecutionCosts(UsageTotals):
    execution_id: str
    steps: list[StepUsage]


class WorkflowStats(BaseModel):
    workflow: str
    runs: int
    by_status: dict[str, int]
    success_rate: float | None
    duration_p50_s: float | None
    duration_p95_s: float | None
    cost_usd: float | None
    avg_cost_per_run_usd: float | None
    calls: int
