"""Engine models as the JSON documents of the HTTP contract (used by API and CLI)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from conveyor.domain.events import Event
from conveyor.domain.graph import WorkflowSpec
from conveyor.engine.documents import Document, DocumentVersion
from conveyor.engine.models import (
    Clarification,
    Execution,
    ExecutionProgress,
    Job,
    QueueStats,
    StepState,
    WorkerInfo,
)
from conveyor.engine.sealing import masked


def _iso(value: datetime | None) -> str | None:
    # the same spelling as the JSON pages (pydantic writes UTC as "Z")
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def public_error(error: dict[str, Any] | None) -> dict[str, Any] | None:
    """An error as shown to clients: type, message, reason; tracebacks stay in the DB."""
    if error is None:
        return None
    shown: dict[str, Any] = {
        k: error[k] for k in ("type", "message", "reason", "details") if k in error
    }
    return shown


def job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "task": job.task,
        "queue": job.queue,
        "status": job.status,
        "priority": job.priority.label,
        "progress": job.progress,
        "progress_message": job.progress_message,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "input": masked(job.input),
        "result": job.result,
        "error": public_error(job.error),
        "worker_id": job.worker_id,
        "execution_id": job.execution_id,
        "step_id": job.step_id,
        "owner": job.owner,
        "metadata": job.metadata,
        "cancel_requested": job.cancel_requested,
        "run_at": _iso(job.run_at),
        "timeout_s": job.timeout_s,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "job_id": event.job_id,
        "execution_id": event.execution_id,
        "step_id": event.step_id,
        "data": event.data,
        "created_at": _iso(event.created_at),
    }


def queue_json(stats: QueueStats) -> dict[str, Any]:
    return {
        "name": stats.name,
        "paused": stats.paused,
        "counts": stats.counts,
        "avg_run_ms": stats.avg_run_ms,
        "success_rate": stats.success_rate,
    }


def worker_json(info: WorkerInfo) -> dict[str, Any]:
    return {
        "worker_id": info.id,
        "hostname": info.hostname,
        "pid": info.pid,
        "kind": info.kind,
        "queues": info.queues,
        "capabilities": info.capabilities,
        "status": info.status,
        "current_load": info.current_load,
        "max_concurrency": info.max_concurrency,
        "utilization": info.utilization,
        "metadata": info.metadata,
        "last_heartbeat": _iso(info.last_heartbeat),
        "started_at": _iso(info.started_at),
    }


def progress_json(progress: ExecutionProgress) -> dict[str, Any]:
    return {
        "total": progress.total,
        "completed": progress.completed,
        "failed": progress.failed,
        "running": progress.running,
        "awaiting_input": progress.awaiting_input,
        "cancelled": progress.cancelled,
        "percent": progress.percent,
    }


def execution_json(ex: Execution) -> dict[str, Any]:
    return {
        "id": ex.id,
        "workflow": ex.workflow,
        "workflow_version": ex.workflow_version,
        "status": ex.status,
        "mode": ex.mode,
        "failure_policy": ex.failure_policy,
        "priority": ex.priority.label,
        "input": masked(ex.input),
        "output": ex.output,
        "error": public_error(ex.error),
        "scope_type": ex.scope_type,
        "scope_id": ex.scope_id,
        "parallelism": ex.parallelism,
        "progress": progress_json(ex.progress),
        "budget_usd": ex.budget_usd,
        "cost_usd": ex.cost_usd,
        "owner": ex.owner,
        "metadata": ex.metadata,
        "created_at": _iso(ex.created_at),
        "started_at": _iso(ex.started_at),
        "finished_at": _iso(ex.finished_at),
    }


def clarification_json(c: Clarification) -> dict[str, Any]:
    return {
        "id": c.id,
        "execution_id": c.execution_id,
        "step_id": c.step_id,
        "job_id": c.job_id,
        "questions": c.questions,
        "status": c.status,
        "answers": c.answers,
        "timeout_at": _iso(c.timeout_at),
        "created_at": _iso(c.created_at),
        "answered_at": _iso(c.answered_at),
    }


def step_json(step: StepState) -> dict[str, Any]:
    return {
        "step_id": step.step_id,
        "task": step.task,
        "status": step.status,
        "depends_on": step.depends_on,
        "job_id": step.job_id,
        "attempts": step.attempts,
        "max_attempts": step.max_attempts,
        "progress": step.progress,
        "progress_message": step.progress_message,
        "result": step.result,
        "error": public_error(step.error),
        "clarification": None
        if step.clarification is None
        else clarification_json(step.clarification),
        "started_at": _iso(step.started_at),
        "finished_at": _iso(step.finished_at),
    }


def workflow_json(spec: WorkflowSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "version": spec.version,
        "description": spec.description,
        "failure_policy": spec.failure_policy,
        "parallelism": spec.parallelism,
        "steps": [
            {"id": s.id, "task": s.task, "depends_on": list(s.depends_on)} for s in spec.graph.steps
        ],
    }


def document_json(doc: Document) -> dict[str, Any]:
    return {
        "id": doc.id,
        "type": doc.type,
        "title": doc.title,
        "scope_type": doc.scope_type,
        "scope_id": doc.scope_id,
        "version": doc.version,
        "content": doc.content,
        "content_type": doc.content_type,
        "owner": doc.owner,
        "execution_id": doc.execution_id,
        "created_at": _iso(doc.created_at),
        "updated_at": _iso(doc.updated_at),
    }


def version_json(v: DocumentVersion) -> dict[str, Any]:
    return {
        "document_id": v.document_id,
        "version": v.version,
        "title": v.title,
        "content": v.content,
        "content_type": v.content_type,
        "created_by": v.created_by,
        "job_id": v.job_id,
        "execution_id": v.execution_id,
        "step_id": v.step_id,
        "created_at": _iso(v.created_at),
    }


def document_row_json(row: Any) -> dict[str, Any]:
    """A row of the documents table, as listings show it."""
    return {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in row._mapping.items()}
