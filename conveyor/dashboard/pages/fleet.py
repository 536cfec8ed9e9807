"""Workers (a live table) and queues (counts, throughput; pause, resume and clean-up for
admins)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from conveyor.api.deps import api_state
from conveyor.auth.principal import ADMIN, WORKER
from conveyor.dashboard.session import Session
from conveyor.dashboard.throughput import ThroughputMeter
from conveyor.dashboard.web import PageRoute, PostedForm, SessionDep, redirect, render
from conveyor.errors import InvalidInputError

router = APIRouter(route_class=PageRoute, include_in_schema=False)
CLEANABLE = ["completed", "failed", "cancelled"]
MAX_AGE_S = 10 * 365 * 86_400


# -- workers ---------------------------------------------------------------------------------


async def _workers(request: Request, session: Session) -> dict[str, Any]:
    # the same rule as GET /api/v1/workers: operators (admin or worker role) only
    session.principal.require(WORKER)
    found = await api_state(request).engine.list_workers()
    live = [w for w in found if w.status != "unhealthy"]
    capacity = sum(w.max_concurrency for w in live)
    load = sum(w.current_load for w in live)
    return {
        "workers": found,
        "capacity": capacity,
        "load": load,
        "utilization": load / capacity if capacity else None,
        "now": datetime.now(UTC),
    }


@router.get("/workers")
async def workers_page(request: Request, session: SessionDep) -> Response:
    view = await _workers(request, session)
    return render("workers.html", session=session, request=request, nav="workers", **view)


@router.get("/workers/table")
async def workers_table(request: Request, session: SessionDep) -> Response:
    """The table alone: the page re-fetches it every two seconds."""
    view = await _workers(request, session)
    return render("_workers_table.html", session=session, **view)


# -- queues ----------------------------------------------------------------------------------


def _meter(request: Request) -> ThroughputMeter:
    meter: ThroughputMeter | None = getattr(request.app.state, "dashboard_throughput", None)
    if meter is None:
        meter = request.app.state.dashboard_throughput = ThroughputMeter()
    return meter


async def _queues(request: Request) -> dict[str, Any]:
    found = await api_state(request).engine.list_queues()
    meter = _meter(request)
    now = time.monotonic()
    rates = {
        q.name: meter.observe(
            q.name, sum(q.counts.get(s, 0) for s in ("completed", "failed", "cancelled")), now
        )
        for q in found
    }
    return {"queues": found, "rates": rates, "cleanable": CLEANABLE}


@router.get("/queues")
async def queues_page(
    request: Request,
    session: SessionDep,
    deleted: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    view = await _queues(request)
    return render(
        "queues.html", session=session, request=request, nav="queues", deleted=deleted, **view
    )


@router.get("/queues/table")
async def queues_table(request: Request, session: SessionDep) -> Response:
    """The table alone: the page re-fetches it every few seconds."""
    view = await _queues(request)
    return render("_queues_table.html", session=session, **view)


@router.post("/queues/{name}/pause")
async def queue_pause(
    name: str, request: Request, session: SessionDep, form: PostedForm
) -> Response:
    """Workers stop claiming this queue's jobs (running ones finish). Admins only."""
    session.principal.require(ADMIN)
    await api_state(request).engine.pause_queue(name, actor=session.principal.id)
    return redirect("/queues", notice="paused")


@router.post("/queues/{name}/resume")
async def queue_resume(
    name: str, request: Request, session: SessionDep, form: PostedForm
) -> Response:
    session.principal.require(ADMIN)
    await api_state(request).engine.resume_queue(name, actor=session.principal.id)
    return redirect("/queues", notice="resumed")


@router.post("/queues/{name}/clean")
async def queue_clean(
    name: str, request: Request, session: SessionDep, form: PostedForm
) -> Response:
    """Delete finished jobs of one status older than a number of seconds. Admins only."""
    session.principal.require(ADMIN)
    status = form.get("status", "")
    if status not in CLEANABLE:
        raise InvalidInputError("choose completed, failed or cancelled jobs to clean")
    try:
        older_than_s = float(form.get("older_than_s", ""))
    except ValueError:
        raise InvalidInputError("older than: a number of seconds") from None
    if not 0 <= older_than_s <= MAX_AGE_S:
        raise InvalidInputError("older than: between 0 seconds and ten years")
    deleted = await api_state(request).engine.clean_queue(
        name, status=status, older_than_s=older_than_s, actor=session.principal.id
    )
    return redirect("/queues", notice="cleaned", deleted=str(deleted))
