"""What the CLI can do, against the local database or (later) a remote server.

Commands are written once against :class:`Ops`; both sides return the JSON documents
of the HTTP contract, so output looks the same either way.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from conveyor.domain.retry import Backoff
from conveyor.engine.core import Engine
from conveyor.engine.jobs import JobFilters
from conveyor.engine.models import JobSpec
from conveyor.engine.views import event_json, job_json, queue_json, worker_json

Json = dict[str, Any]


class Ops(Protocol):
    async def submit(self, body: Json, idempotency_key: str | None) -> Json: ...
    async def get_job(self, job_id: str) -> Json: ...
    async def list_jobs(self, filters: Json, limit: int, cursor: str | None) -> Json: ...
    async def cancel_job(self, job_id: str) -> Json: ...
    async def retry_job(self, job_id: str) -> Json: ...
    async def job_events(self, job_id: str, after: int) -> list[Json]: ...
    async def list_queues(self) -> list[Json]: ...
    async def pause_queue(self, name: str) -> Json: ...
    async def resume_queue(self, name: str) -> Json: ...
    async def clean_queue(self, name: str, status: str, older_than_s: float) -> int: ...
    async def list_workers(self) -> list[Json]: ...


def spec_from_body(body: Json, idempotency_key: str | None) -> JobSpec:
    backoff = body.get("backoff")
    run_at = body.get("run_at")
    return JobSpec(
        task=body["task"],
        input=body.get("input"),
        queue=body.get("queue"),
        priority=body.get("priority"),
        max_attempts=body.get("max_attempts"),
        backoff=None if backoff is None else Backoff.from_json(backoff),
        delay_s=body.get("delay_s"),
        run_at=datetime.fromisoformat(run_at) if isinstance(run_at, str) else run_at,
        timeout_s=body.get("timeout_s"),
        idempotency_key=idempotency_key,
        metadata=body.get("metadata"),
    )


class LocalOps:
    """Straight to the database through the engine, as ``owner``."""

    def __init__(self, engine: Engine, owner: str, *, admin: bool = True) -> None:
        self.engine = engine
        self.owner = owner
        # the local CLI has the database itself: it sees everything, like an admin
        self._scope = None if admin else owner

    async def submit(self, body: Json, idempotency_key: str | None) -> Json:
        result = await self.engine.enqueue(spec_from_body(body, idempotency_key), owner=self.owner)
        return job_json(result.job)

    async def get_job(self, job_id: str) -> Json:
        return job_json(await self.engine.get_job(job_id, owner=self._scope))

    async def list_jobs(self, filters: Json, limit: int, cursor: str | None) -> Json:
        page = await self.engine.list_jobs(
            JobFilters(**filters), owner=self._scope, limit=limit, cursor=cursor
        )
        return {"items": [job_json(j) for j in page.items], "next_cursor": page.next_cursor}

    async def cancel_job(self, job_id: str) -> Json:
        return job_json(await self.engine.cancel_job(job_id, owner=self._scope))

    async def retry_job(self, job_id: str) -> Json:
        return job_json(await self.engine.retry_job(job_id, owner=self._scope))

    async def job_events(self, job_id: str, after: int) -> list[Json]:
        events = await self.engine.job_events(job_id, owner=self._scope, after_id=after)
        return [event_json(e) for e in events]

    async def list_queues(self) -> list[Json]:
        return [queue_json(q) for q in await self.engine.list_queues()]

    async def pause_queue(self, name: str) -> Json:
        return queue_json(await self.engine.pause_queue(name, actor=self.owner))

    async def resume_queue(self, name: str) -> Json:
        return queue_json(await self.engine.resume_queue(name, actor=self.owner))

    async def clean_queue(self, name: str, status: str, older_than_s: float) -> int:
        return await self.engine.clean_queue(
            name, status=status, older_than_s=older_than_s, actor=self.owner
        )

    async def list_workers(self) -> list[Json]:
        return [worker_json(w) for w in await self.engine.list_workers()]
