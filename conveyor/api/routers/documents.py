"""/documents and /telemetry."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response

from conveyor.api.deps import Caller, EngineDep, Submitter
from conveyor.api.errors import problem_responses
from conveyor.api.routers.common import Cursor, Limit, Timestamp
from conveyor.api.schemas import (
    DocumentOut,
    DocumentPage,
    DocumentUpdate,
    ExecutionCosts,
    TelemetrySummary,
    VersionOut,
    VersionSummary,
    WorkflowStats,
)
from conveyor.engine.views import document_json, document_row_json, version_json

documents = APIRouter(prefix="/documents", tags=["documents"])
telemetry = APIRouter(prefix="/telemetry", tags=["telemetry"])


def _etag(version: int) -> str:
    return f'"{version}"'


@documents.get("", response_model=DocumentPage, responses=problem_responses(401, 422))
async def list_documents(
    caller: Caller,
    engine: EngineDep,
    scope_type: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    scope_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    type: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    execution_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Documents (newest first), by scope and type, or those an execution wrote."""
    page = await engine.list_documents(
        owner=caller.scope,
        scope_type=scope_type,
        scope_id=scope_id,
        type_=type,
        execution_id=execution_id,
        limit=limit,
        cursor=cursor,
    )
    return {"items": [document_row_json(r) for r in page.items], "next_cursor": page.next_cursor}


@documents.get(
    "/{document_id}",
    response_model=DocumentOut,
    responses=problem_responses(401, 404),
    summary="The current version of a document (its version is the ETag)",
)
async def get_document(
    document_id: str, response: Response, caller: Caller, engine: EngineDep
) -> dict[str, Any]:
    doc = await engine.get_document(document_id, owner=caller.scope)
    response.headers["ETag"] = _etag(doc.version)
    return document_json(doc)


@documents.get(
    "/{document_id}/versions",
    response_model=list[VersionSummary],
    responses=problem_responses(401, 404),
)
async def document_versions(
    document_id: str, caller: Caller, engine: EngineDep
) -> list[dict[str, Any]]:
    """Every version, oldest first, with who or which step made it."""
    versions = await engine.document_versions(document_id, owner=caller.scope)
    hidden = ("content", "document_id", "execution_id")
    return [{k: v for k, v in version_json(x).items() if k not in hidden} for x in versions]


@documents.get(
    "/{document_id}/versions/{version}",
    response_model=VersionOut,
    responses=problem_responses(401, 404, 422),
)
async def document_version(
    document_id: str,
    version: Annotated[int, Path(ge=1, le=2**31)],
    caller: Caller,
    engine: EngineDep,
) -> dict[str, Any]:
    return version_json(await engine.document_version(document_id, version, owner=caller.scope))


@documents.put(
    "/{document_id}",
    response_model=DocumentOut,
    responses=problem_responses(401, 403, 404, 412, 422),
    summary="Save a new version, if the document is still at the version in If-Match",
    description='Send `If-Match: "<version>"` (the ETag of GET). A stale version is a 412 '
    "and nothing is overwritten; fetch the document again and re-apply the change.",
)
async def put_document(
    document_id: str,
    body: DocumentUpdate,
    response: Response,
    caller: Submitter,
    engine: EngineDep,
    if_match: Annotated[
        str,
        Header(
            alias="If-Match",
            pattern=r'^(W/)?"?[0-9]{1,9}"?$',
            description='The version being changed, as in the ETag: "3"',
        ),
    ],
) -> dict[str, Any]:
    expected = int(if_match.removeprefix("W/").strip('"'))
    doc = await engine.put_document(
        document_id,
        expected_version=expected,
        content=body.content,
        title=body.title,
        owner=caller.scope,
        actor=caller.id,
    )
    response.headers["ETag"] = _etag(doc.version)
    return document_json(doc)


@telemetry.get("/summary", response_model=TelemetrySummary, responses=problem_responses(401, 422))
async def summary(
    caller: Caller,
    engine: EngineDep,
    start: Annotated[Timestamp, Query(alias="from")] = None,
    end: Annotated[Timestamp, Query(alias="to")] = None,
) -> dict[str, Any]:
    """LLM usage in a time window: totals, averages, by workflow, model and day."""
    return await engine.telemetry_summary(owner=caller.scope, start=start, end=end)


@telemetry.get(
    "/executions/{execution_id}/costs",
    response_model=ExecutionCosts,
    responses=problem_responses(401, 404),
)
async def execution_costs(execution_id: str, caller: Caller, engine: EngineDep) -> Any:
    """Total and per-step usage of one execution."""
    return await engine.execution_costs(execution_id, owner=caller.scope)


@telemetry.get(
    "/workflows/{name}/stats", response_model=WorkflowStats, responses=problem_responses(401)
)
async def workflow_stats(name: str, caller: Caller, engine: EngineDep) -> dict[str, Any]:
    """Runs, success rate, duration percentiles and cost of a workflow."""
    return await engine.workflow_stats(name, owner=caller.scope)
