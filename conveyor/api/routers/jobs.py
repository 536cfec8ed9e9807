"""/jobs: submit, read, list, cancel, retry, events."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from conveyor import faults
from conveyor.api.deps import (
    BearerCredentials,
    Caller,
    EngineDep,
    Submitter,
    api_state,
    principal,
)
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
from conveyor.api.schemas import EventPage, JobCreate, JobOut, JobPage, JobStatusName
from conveyor.api.streams import SSE_MEDIA, sse_response, stream_caller, wants_sse
from conveyor.api.streams import last_event_id as resume_from
from conveyor.domain.states import TERMINAL_JOB_STATES
from conveyor.engine.core import Engine
from conveyor.engine.jobs import JobFilters
from conveyor.engine.requests import job_spec
from conveyor.engine.views import event_json, job_json

router = APIRouter(prefix="/jobs", tags=["jobs"])
EVENTS_PAGE = 100


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses={
        200: {
            "model": JobOut,
            "description": "Repeat of an earlier request (same Idempotency-Key)",
        },
        **problem_responses(401, 403, 409, 413, 422, 429, 503),
    },
    summary="Submit a job",
)
async def submit_job(
    body: JobCreate,
    response: Response,
    caller: Submitter,
    engine: EngineDep,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    spec = job_spec(body.model_dump(exclude_none=True), idempotency_key)
    result = await engine.enqueue(spec, owner=caller.id)
    faults.hit("after_commit_before_response")
    response.headers["Location"] = f"{API_PREFIX}/jobs/{result.job.id}"
    if not result.created:
        response.status_code = 200
    return job_json(result.job)


@router.get(
    "",
    response_model=JobPage,
    responses=problem_responses(401, 422, 503),
    summary="List jobs (newest first)",
)
async def list_jobs(
    caller: Caller,
    engine: EngineDep,
    status: Annotated[JobStatusName | None, Query()] = None,
    task: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    queue: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    created_after: Timestamp = None,
    created_before: Timestamp = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> dict[str, Any]:
    page = await engine.list_jobs(
        JobFilters(
            status=status,
            task=task,
            queue=queue,
            created_after=created_after,
            created_before=created_before,
        ),
        owner=caller.scope,
        limit=limit,
        cursor=cursor,
    )
    return {"items": [job_json(j) for j in page.items], "next_cursor": page.next_cursor}


@router.get(
    "/{job_id}",
    response_model=JobOut,
    responses=problem_responses(401, 404, 503),
    summary="Get a job",
)
async def get_job(job_id: str, caller: Caller, engine: EngineDep) -> dict[str, Any]:
    return job_json(await engine.get_job(job_id, owner=caller.scope))


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    responses=problem_responses(401, 403, 404, 409, 503),
    summary="Cancel a job",
    description="Queued, delayed and waiting jobs are cancelled at once; an active job is "
    "asked to stop (its task sees ctx.cancelled) and ends as cancelled. Cancelling a "
    "completed or failed job is a 409; an already cancelled one is returned unchanged.",
)
async def cancel_job(job_id: str, caller: Submitter, engine: EngineDep) -> dict[str, Any]:
    return job_json(await engine.cancel_job(job_id, owner=caller.scope))


@router.post(
    "/{job_id}/retry",
    status_code=202,
    response_model=JobOut,
    responses=problem_responses(401, 403, 404, 409, 503),
    summary="Retry a failed or cancelled job",
)
async def retry_job(job_id: str, caller: Submitter, engine: EngineDep) -> dict[str, Any]:
    return job_json(await engine.retry_job(job_id, owner=caller.scope))


@router.get(
    "/{job_id}/events",
    response_model=EventPage,
    responses={
        200: {
            "description": "The events as a JSON page, or as a live stream with "
            "`Accept: text/event-stream` (resume with `Last-Event-ID`)",
            "content": {SSE_MEDIA: {"schema": {"type": "string"}}},
        },
        **problem_responses(401, 404, 422, 429, 503),
    },
    summary="A job's events, oldest first (JSON page or live SSE)",
)
async def job_events(
    job_id: str,
    request: Request,
    engine: EngineDep,
    credentials: BearerCredentials = None,
    after: AfterEvent = 0,
    limit: Limit = EVENTS_PAGE,
    last_event_id: LastEventId = None,
    ticket: StreamTicket = None,
) -> Any:
    key = f"job:{job_id}"
    if wants_sse(request):
        caller = await stream_caller(request, key, ticket)
        await engine.get_job(job_id, owner=caller.scope)
        return sse_response(
            api_state(request),
            key,
            caller,
            lambda since, n: engine.job_events(job_id, owner=caller.scope, after_id=since, limit=n),
            resume_from(request, last_event_id) or after,
            finished=lambda: _job_finished(engine, job_id),
        )
    principal_ = await principal(request, credentials)
    found = await engine.job_events(job_id, owner=principal_.scope, after_id=after, limit=limit + 1)
    items = [event_json(e) for e in found[:limit]]
    return {
        "items": items,
        "next_cursor": str(items[-1]["id"]) if len(found) > limit else None,
    }


async def _job_finished(engine: Engine, job_id: str) -> bool:
    return (await engine.get_job(job_id)).status in TERMINAL_JOB_STATES
