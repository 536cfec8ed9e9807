"""What the CLI can do, against the local database or a remote server.

Commands are written once against :class:`Ops`; both sides return the JSON documents
of the HTTP contract, so output looks the same either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Protocol

from conveyor.client.aio import AsyncClient
from conveyor.domain.events import TERMINAL_EXECUTION_EVENTS, TERMINAL_JOB_EVENTS
from conveyor.engine.core import Engine
from conveyor.engine.executions import ExecutionFilters
from conveyor.engine.jobs import JobFilters
from conveyor.engine.requests import execution_spec, job_spec
from conveyor.engine.views import (
    clarification_json,
    document_json,
    document_row_json,
    event_json,
    execution_json,
    job_json,
    queue_json,
    step_json,
    version_json,
    worker_json,
    workflow_json,
)
from conveyor.errors import InvalidInputError, NotFoundError

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
    async def list_workflows(self) -> list[Json]: ...
    async def get_workflow(self, name: str) -> Json: ...
    async def start_execution(self, body: Json, idempotency_key: str | None) -> Json: ...
    async def get_execution(self, execution_id: str) -> Json: ...
    async def list_executions(self, filters: Json, limit: int, cursor: str | None) -> Json: ...
    async def cancel_execution(self, execution_id: str) -> Json: ...
    async def retry_execution(self, execution_id: str) -> Json: ...
    async def execution_steps(self, execution_id: str) -> list[Json]: ...
    async def run_step(self, execution_id: str, step_id: str, data: Json | None) -> Json: ...
    async def execution_events(self, execution_id: str, after: int) -> list[Json]: ...
    async def answer(self, execution_id: str, step_id: str, answers: Json) -> Json: ...
    async def list_clarifications(self, status: str | None) -> list[Json]: ...
    def follow(self, kind: str, ident: str, after: int) -> AsyncIterator[Json]: ...
    async def usage_summary(self, start: str | None, end: str | None) -> Json: ...
    async def list_documents(self, filters: Json, limit: int, cursor: str | None) -> Json: ...
    async def get_document(self, document_id: str, version: int | None) -> Json: ...


POLL_S = 0.2


class LocalOps:
    """Straight to the database through the engine, as ``owner``."""

    def __init__(self, engine: Engine, owner: str, *, admin: bool = True) -> None:
        self.engine = engine
        self.owner = owner
        # the local CLI has the database itself: it sees everything, like an admin
        self._scope = None if admin else owner

    async def submit(self, body: Json, idempotency_key: str | None) -> Json:
        result = await self.engine.enqueue(job_spec(body, idempotency_key), owner=self.owner)
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

    def _catalog(self) -> Any:
        if self.engine.catalog is None:
            raise InvalidInputError("workflows are defined by your app: pass --app module:app")
        return self.engine.catalog

    async def list_workflows(self) -> list[Json]:
        catalog = self._catalog()
        return [workflow_json(w) for _, w in sorted(catalog.workflows.items())]

    async def get_workflow(self, name: str) -> Json:
        spec = self._catalog().workflow_spec(name)
        if spec is None:
            raise NotFoundError(f"workflow {name!r} not found")
        return workflow_json(spec)

    async def start_execution(self, body: Json, idempotency_key: str | None) -> Json:
        spec = execution_spec(body, idempotency_key)
        result = await self.engine.start_execution(spec, owner=self.owner)
        return execution_json(result.execution)

    async def get_execution(self, execution_id: str) -> Json:
        return execution_json(await self.engine.get_execution(execution_id, owner=self._scope))

    async def list_executions(self, filters: Json, limit: int, cursor: str | None) -> Json:
        page = await self.engine.list_executions(
            ExecutionFilters(**filters), owner=self._scope, limit=limit, cursor=cursor
        )
        return {
            "items": [execution_json(e) for e in page.items],
            "next_cursor": page.next_cursor,
        }

    async def cancel_execution(self, execution_id: str) -> Json:
        return execution_json(await self.engine.cancel_execution(execution_id, owner=self._scope))

    async def retry_execution(self, execution_id: str) -> Json:
        return execution_json(await self.engine.retry_execution(execution_id, owner=self._scope))

    async def execution_steps(self, execution_id: str) -> list[Json]:
        steps = await self.engine.execution_steps(execution_id, owner=self._scope)
        return [step_json(s) for s in steps]

    async def run_step(self, execution_id: str, step_id: str, data: Json | None) -> Json:
        job = await self.engine.run_step(execution_id, step_id, input=data, owner=self._scope)
        return job_json(job)

    async def execution_events(self, execution_id: str, after: int) -> list[Json]:
        events = await self.engine.execution_events(execution_id, owner=self._scope, after_id=after)
        return [event_json(e) for e in events]

    async def answer(self, execution_id: str, step_id: str, answers: Json) -> Json:
        clarification = await self.engine.answer(
            execution_id, step_id, answers, owner=self._scope, actor=self.owner
        )
        return clarification_json(clarification)

    async def list_clarifications(self, status: str | None) -> list[Json]:
        found = await self.engine.list_clarifications(owner=self._scope, status=status)
        return [clarification_json(c) for c in found]

    async def usage_summary(self, start: str | None, end: str | None) -> Json:
        return await self.engine.telemetry_summary(
            owner=self._scope, start=_timestamp(start), end=_timestamp(end)
        )

    async def list_documents(self, filters: Json, limit: int, cursor: str | None) -> Json:
        page = await self.engine.list_documents(
            owner=self._scope,
            scope_type=filters.get("scope_type"),
            scope_id=filters.get("scope_id"),
            type_=filters.get("type"),
            execution_id=filters.get("execution_id"),
            limit=limit,
            cursor=cursor,
        )
        return {
            "items": [document_row_json(r) for r in page.items],
            "next_cursor": page.next_cursor,
        }

    async def get_document(self, document_id: str, version: int | None) -> Json:
        if version is None:
            return document_json(await self.engine.get_document(document_id, owner=self._scope))
        found = await self.engine.document_version(document_id, version, owner=self._scope)
        return version_json(found)

    async def follow(self, kind: str, ident: str, after: int) -> AsyncIterator[Json]:
        """Events after ``after`` until the terminal one, read from the table (by id, so
        nothing is missed whichever process wrote them)."""
        read = self.execution_events if kind == "execution" else self.job_events
        terminal = TERMINAL_EXECUTION_EVENTS if kind == "execution" else TERMINAL_JOB_EVENTS
        while True:
            for event in await read(ident, after):
                after = event["id"]
                yield event
                own = event.get(f"{kind}_id") == ident
                if own and event["type"] in terminal and (kind == "job" or not event["job_id"]):
                    return
            await asyncio.sleep(POLL_S)


class RemoteOps:
    """Through a Conveyor server's HTTP API, with a bearer token."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def submit(self, body: Json, idempotency_key: str | None) -> Json:
        options = {k: v for k, v in body.items() if k not in ("task", "input")}
        result: Json = await self.client.submit(
            body["task"], body.get("input"), idempotency_key=idempotency_key, **options
        )
        return result

    async def get_job(self, job_id: str) -> Json:
        result: Json = await self.client.get(job_id)
        return result

    async def list_jobs(self, filters: Json, limit: int, cursor: str | None) -> Json:
        result: Json = await self.client.list(limit=limit, cursor=cursor, **filters)
        return result

    async def cancel_job(self, job_id: str) -> Json:
        result: Json = await self.client.cancel(job_id)
        return result

    async def retry_job(self, job_id: str) -> Json:
        result: Json = await self.client.retry(job_id)
        return result

    async def job_events(self, job_id: str, after: int) -> list[Json]:
        page = await self.client.job_events(job_id, after=after)
        items: list[Json] = page["items"]
        return items

    async def list_queues(self) -> list[Json]:
        items: list[Json] = (await self.client.queues())["items"]
        return items

    async def pause_queue(self, name: str) -> Json:
        result: Json = await self.client.pause_queue(name)
        return result

    async def resume_queue(self, name: str) -> Json:
        result: Json = await self.client.resume_queue(name)
        return result

    async def clean_queue(self, name: str, status: str, older_than_s: float) -> int:
        return int((await self.client.clean_queue(name, status, older_than_s))["deleted"])

    async def list_workers(self) -> list[Json]:
        workers: list[Json] = (await self.client.workers())["workers"]
        return workers

    async def list_workflows(self) -> list[Json]:
        result: list[Json] = await self.client.workflows()
        return result

    async def get_workflow(self, name: str) -> Json:
        result: Json = await self.client.workflow(name)
        return result

    async def start_execution(self, body: Json, idempotency_key: str | None) -> Json:
        options = {k: v for k, v in body.items() if k not in ("workflow", "input", "steps")}
        result: Json = await self.client.start(
            body.get("workflow"),
            body.get("input"),
            steps=body.get("steps"),
            idempotency_key=idempotency_key,
            **options,
        )
        return result

    async def get_execution(self, execution_id: str) -> Json:
        result: Json = await self.client.execution(execution_id)
        return result

    async def list_executions(self, filters: Json, limit: int, cursor: str | None) -> Json:
        result: Json = await self.client.executions(limit=limit, cursor=cursor, **filters)
        return result

    async def cancel_execution(self, execution_id: str) -> Json:
        result: Json = await self.client.cancel_execution(execution_id)
        return result

    async def retry_execution(self, execution_id: str) -> Json:
        result: Json = await self.client.retry_execution(execution_id)
        return result

    async def execution_steps(self, execution_id: str) -> list[Json]:
        result: list[Json] = await self.client.steps(execution_id)
        return result

    async def run_step(self, execution_id: str, step_id: str, data: Json | None) -> Json:
        result: Json = await self.client.run_step(execution_id, step_id, data)
        return result

    async def execution_events(self, execution_id: str, after: int) -> list[Json]:
        page = await self.client.execution_events(execution_id, after=after)
        items: list[Json] = page["items"]
        return items

    async def answer(self, execution_id: str, step_id: str, answers: Json) -> Json:
        result: Json = await self.client.answer(execution_id, step_id, answers)
        return result

    async def list_clarifications(self, status: str | None) -> list[Json]:
        items: list[Json] = (await self.client.clarifications(status))["items"]
        return items

    def follow(self, kind: str, ident: str, after: int) -> AsyncIterator[Json]:
        return self.client.follow(kind, ident, after=after)

    async def usage_summary(self, start: str | None, end: str | None) -> Json:
        result: Json = await self.client.usage(start=start, end=end)
        return result

    async def list_documents(self, filters: Json, limit: int, cursor: str | None) -> Json:
        active = {k: v for k, v in filters.items() if v is not None}
        result: Json = await self.client.documents(limit=limit, cursor=cursor, **active)
        return result

    async def get_document(self, document_id: str, version: int | None) -> Json:
        if version is None:
            result: Json = await self.client.document(document_id)
        else:
            result = await self.client.document_version(document_id, version)
        return result


def _timestamp(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(f"{value!r} is not an ISO 8601 date or date-time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
