"""Jobs: the filtered list, the detail page with live progress, cancel and retry."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from conveyor.api.deps import api_state
from conveyor.auth.principal import USER
from conveyor.dashboard import listing
from conveyor.dashboard.listing import DateFrom, DateTo, Filter
from conveyor.dashboard.session import Session
from conveyor.dashboard.web import PageRoute, PostedForm, SessionDep, redirect, render
from conveyor.domain.states import VISIBLE_JOB_STATUSES
from conveyor.engine.jobs import JobFilters

router = APIRouter(route_class=PageRoute, include_in_schema=False)


def _can_submit(session: Session) -> bool:
    """Users and admins change work; a worker's account only looks."""
    return session.principal.is_admin or USER in session.principal.roles


@router.get("/jobs")
async def jobs_list(
    request: Request,
    session: SessionDep,
    status: Filter = None,
    task: Filter = None,
    queue: Filter = None,
    date_from: DateFrom = None,
    date_to: DateTo = None,
    cursor: Filter = None,
) -> Response:
    """Jobs (standalone and steps), newest first."""
    state = api_state(request)
    filters = {
        "status": listing.choice(status, VISIBLE_JOB_STATUSES),
        "task": listing.text(task),
        "queue": listing.text(queue),
        "from": listing.text(date_from),
        "to": listing.text(date_to),
    }
    page = await state.engine.list_jobs(
        JobFilters(
            status=filters["status"],
            task=filters["task"],
            queue=filters["queue"],
            created_after=listing.day_start(filters["from"]),
            created_before=listing.day_end(filters["to"]),
        ),
        owner=session.scope,
        limit=listing.PAGE_SIZE,
        cursor=listing.text(cursor),
    )
    return render(
        "jobs/list.html",
        session=session,
        request=request,
        nav="jobs",
        jobs=page.items,
        filters=filters,
        statuses=VISIBLE_JOB_STATUSES,
        tasks=sorted(state.app.tasks),
        **listing.page_links("/jobs", filters, page.next_cursor, cursor),
    )


@router.get("/jobs/{job_id}")
async def job_detail(job_id: str, request: Request, session: SessionDep) -> Response:
    job = await api_state(request).engine.get_job(job_id, owner=session.scope)
    return render(
        "jobs/detail.html",
        session=session,
        request=request,
        nav="jobs",
        job=job,
        can_submit=_can_submit(session),
    )


@router.get("/jobs/{job_id}/live")
async def job_live(job_id: str, request: Request, session: SessionDep) -> Response:
    """The changing part of the detail page, re-fetched on each stream event."""
    job = await api_state(request).engine.get_job(job_id, owner=session.scope)
    return render("jobs/_live.html", session=session, job=job, can_submit=_can_submit(session))


@router.post("/jobs/{job_id}/cancel")
async def job_cancel(
    job_id: str, request: Request, session: SessionDep, form: PostedForm
) -> Response:
    session.principal.require(USER)
    await api_state(request).engine.cancel_job(job_id, owner=session.scope)
    return redirect(f"/jobs/{job_id}", notice="cancelled")


@router.post("/jobs/{job_id}/retry")
async def job_retry(
    job_id: str, request: Request, session: SessionDep, form: PostedForm
) -> Response:
    session.principal.require(USER)
    await api_state(request).engine.retry_job(job_id, owner=session.scope)
    return redirect(f"/jobs/{job_id}", notice="retried")
