"""/workers, /queues and /health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from conveyor.api.deps import Admin, Caller, EngineDep, WorkerAgent
from conveyor.api.errors import problem_responses
from conveyor.api.routers.common import API_PREFIX
from conveyor.api.schemas import (
    CleanIn,
    CleanOut,
    HealthOut,
    HeartbeatIn,
    QueueList,
    QueueOut,
    WorkerCreate,
    WorkerList,
    WorkerOut,
)
from conveyor.domain.ids import new_id
from conveyor.engine.views import queue_json, worker_json
from conveyor.engine.workers import WorkerRegistration
from conveyor.errors import ConveyorError

workers = APIRouter(prefix="/workers", tags=["workers"])
queues = APIRouter(prefix="/queues", tags=["queues"])
health = APIRouter(tags=["health"])


@workers.post(
    "",
    status_code=201,
    response_model=WorkerOut,
    responses=problem_responses(401, 403, 409, 422, 503),
    summary="Register an external worker",
)
async def register_worker(
    body: WorkerCreate, response: Response, caller: WorkerAgent, engine: EngineDep
) -> dict[str, Any]:
    worker_id = body.worker_id or f"ext-{new_id()[-12:]}"
    info = await engine.register_worker(
        WorkerRegistration(
            id=worker_id,
            hostname=body.hostname,
            kind="external",
            max_concurrency=body.max_concurrency,
            pid=body.pid,
            queues=body.queues,
            capabilities=body.capabilities,
            metadata=body.metadata,
            owner=caller.id,
        )
    )
    response.headers["Location"] = f"{API_PREFIX}/workers/{info.id}"
    return worker_json(info)


@workers.get("", response_model=WorkerList, responses=problem_responses(401, 403, 503))
async def list_workers(caller: WorkerAgent, engine: EngineDep) -> dict[str, Any]:
    """Built-in and external workers; one silent past its heartbeat timeout is unhealthy."""
    found = await engine.list_workers()
    return {"count": len(found), "workers": [worker_json(w) for w in found]}


@workers.get(
    "/{worker_id}", response_model=WorkerOut, responses=problem_responses(401, 403, 404, 503)
)
async def get_worker(worker_id: str, caller: WorkerAgent, engine: EngineDep) -> dict[str, Any]:
    return worker_json(await engine.get_worker(worker_id))


@workers.post(
    "/{worker_id}/heartbeat",
    response_model=WorkerOut,
    responses=problem_responses(401, 403, 404, 422, 503),
)
async def heartbeat(
    worker_id: str, caller: WorkerAgent, engine: EngineDep, body: HeartbeatIn | None = None
) -> dict[str, Any]:
    info = await engine.worker_heartbeat(
        worker_id,
        load=None if body is None else body.current_load,
        owner=caller.scope,
    )
    return worker_json(info)


@workers.delete("/{worker_id}", status_code=204, responses=problem_responses(401, 403, 404, 503))
async def deregister_worker(worker_id: str, caller: WorkerAgent, engine: EngineDep) -> Response:
    """Deregister (an external worker drains itself first)."""
    await engine.deregister_worker(worker_id, owner=caller.scope)
    return Response(status_code=204)


@queues.get("", response_model=QueueList, responses=problem_responses(401, 503))
async def list_queues(caller: Caller, engine: EngineDep) -> dict[str, Any]:
    return {"items": [queue_json(q) for q in await engine.list_queues()], "next_cursor": None}


@queues.get("/{name}", response_model=QueueOut, responses=problem_responses(401, 404, 503))
async def get_queue(name: str, caller: Caller, engine: EngineDep) -> dict[str, Any]:
    return queue_json(await engine.queue_stats(name))


@queues.post(
    "/{name}/pause", response_model=QueueOut, responses=problem_responses(401, 403, 422, 503)
)
async def pause_queue(name: str, caller: Admin, engine: EngineDep) -> dict[str, Any]:
    """Workers stop claiming this queue's jobs (running ones finish)."""
    return queue_json(await engine.pause_queue(name, actor=caller.id))


@queues.post(
    "/{name}/resume", response_model=QueueOut, responses=problem_responses(401, 403, 422, 503)
)
async def resume_queue(name: str, caller: Admin, engine: EngineDep) -> dict[str, Any]:
    return queue_json(await engine.resume_queue(name, actor=caller.id))


@queues.post(
    "/{name}/clean",
    response_model=CleanOut,
    responses=problem_responses(401, 403, 404, 422, 503),
)
async def clean_queue(name: str, body: CleanIn, caller: Admin, engine: EngineDep) -> dict[str, Any]:
    """Delete finished jobs of one status older than ``older_than_s`` (and their events)."""
    deleted = await engine.clean_queue(
        name, status=body.status, older_than_s=body.older_than_s, actor=caller.id
    )
    return {"deleted": deleted}


@health.get("/health", response_model=HealthOut, responses=problem_responses(401))
async def health_report(caller: Caller, engine: EngineDep) -> dict[str, Any]:
    """Components and worker fleet at a glance."""
    components = {"store": "ok", "queue": "ok", "workers": "ok"}
    found = []
    try:
        found = await engine.list_workers()
        await engine.list_queues()
    except ConveyorError:
        components["store"] = components["queue"] = "unavailable"
    by_status = {s: sum(1 for w in found if w.status == s) for s in ("active", "idle", "busy")}
    unhealthy = sum(1 for w in found if w.status == "unhealthy")
    capacity = sum(w.max_concurrency for w in found if w.status != "unhealthy")
    load = sum(w.current_load for w in found if w.status != "unhealthy")
    if found and unhealthy == len(found):
        components["workers"] = "unhealthy"
    elif not found:
        components["workers"] = "none"
    return {
        "healthy": components["store"] == "ok",
        "components": components,
        "workers": {
            "total": len(found),
            **by_status,
            "unhealthy": unhealthy,
            "utilization_percent": round(100 * load / capacity, 1) if capacity else 0.0,
        },
    }
