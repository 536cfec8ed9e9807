"""Executions: the filtered list, the detail page with its DAG and live steps, cancel and
retry."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from conveyor.api.deps import api_state
from conveyor.auth.principal import USER
from conveyor.dashboard import dag, listing
from conveyor.dashboard.listing import DateFrom, DateTo, Filter
from conveyor.dashboard.session import Session
from conveyor.dashboard.web import PageRoute, PostedForm, SessionDep, redirect, render
from conveyor.domain.states import ExecutionStatus
from conveyor.engine.core import Engine
from conveyor.engine.executions import ExecutionFilters
from conveyor.engine.jobs import JobFilters

router = APIRouter(route_class=PageRoute, include_in_schema=False)
STATUSES = [s.value for s in ExecutionStatus]
#: how much of an execution is read for one detail page (large fan-outs are summarised)
MAX_STEP_JOBS = 1000
TERMINAL = frozenset({"completed", "failed", "cancelled"})
MOVING = frozenset({"queued", "delayed", "active", "awaiting_input"})


@router.get("/executions")
async def executions_list(
    request: Request,
    session: SessionDep,
    status: Filter = None,
    workflow: Filter = None,
    date_from: DateFrom = None,
    date_to: DateTo = None,
    cursor: Filter = None,
) -> HTMLResponse:
    """Executions, newest first, filtered by status, workflow and creation date."""
    state = api_state(request)
    filters = {
        "status": listing.choice(status, STATUSES),
        "workflow": listing.text(workflow),
        "from": listing.text(date_from),
        "to": listing.text(date_to),
    }
    page = await state.engine.list_executions(
        ExecutionFilters(
            status=filters["status"],
            workflow=filters["workflow"],
            created_after=listing.day_start(filters["from"]),
            created_before=listing.day_end(filters["to"]),
        ),
        owner=session.scope,
        limit=listing.PAGE_SIZE,
        cursor=listing.text(cursor),
    )
    return render(
        "executions/list.html",
        session=session,
        request=request,
        nav="executions",
        executions=page.items,
        filters=filters,
        statuses=STATUSES,
        workflows=sorted(state.app.workflows),
        **listing.page_links("/executions", filters, page.next_cursor, cursor),
    )


async def _step_jobs(engine: Engine, execution_id: str, scope: str | None) -> dict[str, Any]:
    """The jobs of an execution's steps, by id (their input is what the step received)."""
    found: dict[str, Any] = {}
    cursor = None
    while len(found) < MAX_STEP_JOBS:
        page = await engine.list_jobs(
            JobFilters(execution_id=execution_id), owner=scope, limit=100, cursor=cursor
        )
        found.update({job.id: job for job in page.items})
        cursor = page.next_cursor
        if cursor is None:
            break
    return found


async def _documents(engine: Engine, execution_id: str, scope: str | None) -> list[Any]:
    """Documents the execution's steps wrote (the first hundred; the documents page has
    the rest)."""
    page = await engine.list_documents(owner=scope, execution_id=execution_id, limit=100)
    return page.items


async def execution_view(request: Request, session: Session, execution_id: str) -> dict[str, Any]:
    """Everything the detail page and its live fragment show (404 if not the caller's)."""
    engine = api_state(request).engine
    execution = await engine.get_execution(execution_id, owner=session.scope)
    steps = await engine.execution_steps(execution_id, owner=session.scope)
    jobs = await _step_jobs(engine, execution_id, session.scope)
    costs = await engine.execution_costs(execution_id, owner=session.scope)
    cost_by_step: dict[str, list[dict[str, Any]]] = {}
    for row in costs["steps"]:
        cost_by_step.setdefault(str(row["step_id"]), []).append(row)
    graph = dag.layout([dag.StepNode(s.step_id, s.depends_on, s.status, s.progress) for s in steps])
    # the page stops following the stream once nothing can change any more: a cancelled
    # execution's running step still has to stop (and say so) after the execution ended
    settled = execution.status in TERMINAL and not any(s.status in MOVING for s in steps)
    return {
        "execution": execution,
        "settled": settled,
        "steps": steps,
        "jobs": jobs,
        "costs": costs,
        "cost_by_step": cost_by_step,
        "graph": graph,
        "documents": await _documents(engine, execution_id, session.scope),
        "can_submit": session.principal.is_admin or USER in session.principal.roles,
    }


@router.get("/executions/{execution_id}")
async def execution_detail(execution_id: str, request: Request, session: SessionDep) -> Response:
    view = await execution_view(request, session, execution_id)
    return render(
        "executions/detail.html", session=session, request=request, nav="executions", **view
    )


@router.get("/executions/{execution_id}/live")
async def execution_live(execution_id: str, request: Request, session: SessionDep) -> Response:
    """The part of the detail page that changes, re-fetched on each stream event."""
    view = await execution_view(request, session, execution_id)
    return render("executions/_live.html", session=session, **view)


@router.post("/executions/{execution_id}/cancel")
async def execution_cancel(
    execution_id: str, request: Request, session: SessionDep, form: PostedForm
) -> Response:
    """Waiting steps stop at once; running ones are asked to stop."""
    session.principal.require(USER)
    await api_state(request).engine.cancel_execution(execution_id, owner=session.scope)
    return redirect(f"/executions/{execution_id}", notice="cancelled")


@router.post("/executions/{execution_id}/retry")
async def execution_retry(
    execution_id: str, request: Request, session: SessionDep, form: PostedForm
) -> Response:
    """Re-run the steps of a failed or cancelled execution that did not complete."""
    session.principal.require(USER)
    await api_state(request).engine.retry_execution(execution_id, owner=session.scope)
    return redirect(f"/executions/{execution_id}", notice="retried")
