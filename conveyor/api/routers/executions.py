"""/workflows, /executions and /clarifications."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from conveyor.api.deps import BearerCredentials, Caller, EngineDep, Submitter, api_state, principal
from conveyor.api.errors import problem_responses
from conveyor.api.routers.common import (
    API_PREFIX,
    AfterEvent,
    Cursor,
    IdempotencyKey,
    LastEventId,
    Limit,
    StreamTicket,
    Timestamp,
)
from conveyor.api.schemas import (
    AnswerIn,
    ClarificationList,
    ClarificationOut,
    EventPage,
    ExecutionCreate,
    ExecutionOut,
    ExecutionPage,
    ExecutionStatusName,
    JobOut,
    RunStepIn,
    StepOut,
    WorkflowOut,
)
from conveyor.api.streams import SSE_MEDIA, sse_response, stream_caller, wants_sse
from conveyor.api.streams import last_event_id as resume_from
from conveyor.domain.states import TERMINAL_EXECUTION_STATES
from conveyor.engine.core import Engine
from conveyor.engine.executions import ExecutionFilters
from conveyor.engine.requests import execution_spec
from conveyor.engine.views import (
    clarification_json,
    event_json,
    execution_json,
    job_json,
    step_json,
    workflow_json,
)
from conveyor.errors import NotFoundError

workflows = APIRouter(prefix="/workflows", tags=["workflows"])
executions = APIRouter(prefix="/executions", tags=["executions"])
clarifications = APIRouter(prefix="/clarifications", tags=["clarifications"])

StepPath = Annotated[str, "step id"]


@workflows.get("", response_model=list[WorkflowOut], responses=problem_responses(401))
async def list_workflows(request: Request, caller: Caller) -> list[dict[str, Any]]:
    """The workflows the server's app defines."""
    app = api_state(request).app
    return [workflow_json(w) for _, w in sorted(app.workflows.items())]


@workflows.get("/{name}", response_model=WorkflowOut, responses=problem_responses(401, 404))
async def get_workflow(name: str, request: Request, caller: Caller) -> dict[str, Any]:
    spec = api_state(request).app.workflow_spec(name)
    if spec is None:
        raise NotFoundError(f"workflow {name!r} not found")
    return workflow_json(spec)


@workflows.get(
    "/{name}/steps/{step}/schema",
    response_model=dict[str, Any],
    responses=problem_responses(401, 404),
    summary="JSON Schema of a step's output",
)
async def step_schema(name: str, step: str, request: Request, caller: Caller) -> dict[str, Any]:
    app = api_state(request).app
    spec = app.workflow_spec(name)
    if spec is None:
        raise NotFoundError(f"workflow {name!r} not found")
    found = spec.graph.by_id.get(step)
    if found is None:
        raise NotFoundError(f"workflow {name!r} has no step {step!r}")
    return app.tasks[found.task].output_schema()


# -- executions ----------------------------------------------------------------------------------


@executions.post(
    "",
    status_code=202,
    response_model=ExecutionOut,
    responses={
        200: {"model": ExecutionOut, "description": "Repeat of an earlier request"},
        **problem_responses(401, 403, 404, 413, 422, 429, 503),
    },
    summary="Start an execution of a workflow, or of an ad-hoc list of steps",
)
async def start_execution(
    body: ExecutionCreate,
    response: Response,
    caller: Submitter,
    engine: EngineDep,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    spec = execution_spec(body.model_dump(exclude_none=True), idempotency_key)
    result = await engine.start_execution(spec, owner=caller.id)
    response.headers["Location"] = f"{API_PREFIX}/executions/{result.execution.id}"
    if not result.created:
        response.status_code = 200
    return execution_json(result.execution)


@executions.get("", response_model=ExecutionPage, responses=problem_responses(401, 422, 503))
async def list_executions(
    caller: Caller,
    engine: EngineDep,
    status: Annotated[ExecutionStatusName | None, Query()] = None,
    workflow: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    scope_type: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    scope_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    created_after: Timestamp = None,
    created_before: Timestamp = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Executions, newest first."""
    page = await engine.list_executions(
        ExecutionFilters(status, workflow, scope_type, scope_id, created_after, created_before),
        owner=caller.scope,
        limit=limit,
        cursor=cursor,
    )
    return {"items": [execution_json(e) for e in page.items], "next_cursor": page.next_cursor}


@executions.get(
    "/{execution_id}", response_model=ExecutionOut, responses=problem_responses(401, 404, 503)
)
async def get_execution(execution_id: str, caller: Caller, engine: EngineDep) -> dict[str, Any]:
    return execution_json(await engine.get_execution(execution_id, owner=caller.scope))


@executions.get(
    "/{execution_id}/steps",
    response_model=list[StepOut],
    responses=problem_responses(401, 404, 503),
)
async def execution_steps(
    execution_id: str, caller: Caller, engine: EngineDep
) -> list[dict[str, Any]]:
    steps = await engine.execution_steps(execution_id, owner=caller.scope)
    return [step_json(s) for s in steps]


@executions.post(
    "/{execution_id}/steps/{step}/run",
    status_code=202,
    response_model=JobOut,
    responses=problem_responses(401, 403, 404, 409, 422, 503),
    summary="Manual mode: run one stage now",
    description="Queues the step and returns its job (poll GET /jobs/{id}). 409 while the "
    "step's dependencies are not completed, or if it already ran.",
)
async def run_step(
    execution_id: str,
    step: str,
    response: Response,
    caller: Submitter,
    engine: EngineDep,
    body: RunStepIn | None = None,
) -> dict[str, Any]:
    job = await engine.run_step(
        execution_id, step, input=None if body is None else body.input, owner=caller.scope
    )
    response.headers["Location"] = f"{API_PREFIX}/jobs/{job.id}"
    return job_json(job)


@executions.get(
    "/{execution_id}/steps/{step}/clarification",
    response_model=ClarificationOut,
    responses=problem_responses(401, 404, 503),
)
async def get_clarification(
    execution_id: str, step: str, caller: Caller, engine: EngineDep
) -> dict[str, Any]:
    found = await engine.get_clarification(execution_id, step, owner=caller.scope)
    return clarification_json(found)


@executions.post(
    "/{execution_id}/steps/{step}/clarification",
    response_model=ClarificationOut,
    responses=problem_responses(401, 403, 404, 409, 410, 422, 503),
    summary="Answer a step's questions",
    description="Each answer is validated against its question's JSON Schema; invalid "
    "answers are a 422 listing every problem and the step keeps waiting.",
)
async def answer_clarification(
    execution_id: str, step: str, body: AnswerIn, caller: Submitter, engine: EngineDep
) -> dict[str, Any]:
    found = await engine.answer(
        execution_id, step, body.answers, owner=caller.scope, actor=caller.id
    )
    return clarification_json(found)


@executions.post(
    "/{execution_id}/cancel",
    response_model=ExecutionOut,
    responses=problem_responses(401, 403, 404, 409, 503),
)
async def cancel_execution(
    execution_id: str, caller: Submitter, engine: EngineDep
) -> dict[str, Any]:
    """Waiting steps are cancelled at once; active ones are asked to stop."""
    return execution_json(await engine.cancel_execution(execution_id, owner=caller.scope))


@executions.post(
    "/{execution_id}/retry",
    status_code=202,
    response_model=ExecutionOut,
    responses=problem_responses(401, 403, 404, 409, 503),
)
async def retry_execution(
    execution_id: str, caller: Submitter, engine: EngineDep
) -> dict[str, Any]:
    """Re-run the steps of a failed or cancelled execution that did not complete."""
    return execution_json(await engine.retry_execution(execution_id, owner=caller.scope))


@executions.get(
    "/{execution_id}/events",
    response_model=EventPage,
    responses={
        200: {
            "description": "The events as a JSON page, or as a live stream with "
            "`Accept: text/event-stream` (resume with `Last-Event-ID`)",
            "content": {SSE_MEDIA: {"schema": {"type": "string"}}},
        },
        **problem_responses(401, 404, 422, 429, 503),
    },
)
async def execution_events(
    execution_id: str,
    request: Request,
    engine: EngineDep,
    credentials: BearerCredentials = None,
    after: AfterEvent = 0,
    limit: Limit = 100,
    last_event_id: LastEventId = None,
    ticket: StreamTicket = None,
) -> Any:
    """The execution's events and its steps', oldest first; with
    ``Accept: text/event-stream`` a live stream that ends after the execution's last event."""
    key = f"execution:{execution_id}"
    if wants_sse(request):
        caller = await stream_caller(request, key, ticket)
        await engine.get_execution(execution_id, owner=caller.scope)
        return sse_response(
            api_state(request),
            key,
            caller,
            lambda since, n: engine.execution_events(
                execution_id, owner=caller.scope, after_id=since, limit=n
            ),
            resume_from(request, last_event_id) or after,
            finished=lambda: _execution_finished(engine, execution_id),
        )
    principal_ = await principal(request, credentials)
    found = await engine.execution_events(
        execution_id, owner=principal_.scope, after_id=after, limit=limit + 1
    )
    items = [event_json(e) for e in found[:limit]]
    return {"items": items, "next_cursor": str(items[-1]["id"]) if len(found) > limit else None}


# -- clarifications ------------------------------------------------------------------------------


@clarifications.get("", response_model=ClarificationList, responses=problem_responses(401, 422))
async def list_clarifications(
    caller: Caller,
    engine: EngineDep,
    status: Annotated[
        str | None, Query(pattern="^(pending|answered|expired|cancelled)$")
    ] = "pending",
    limit: Limit = 100,
) -> dict[str, Any]:
    """The caller's questions across executions (pending ones by default)."""
    found = await engine.list_clarifications(owner=caller.scope, status=status, limit=limit)
    return {"items": [clarification_json(c) for c in found], "next_cursor": None}


async def _execution_finished(engine: Engine, execution_id: str) -> bool:
    status = (await engine.get_execution(execution_id)).status
    return status in {s.value for s in TERMINAL_EXECUTION_STATES}
