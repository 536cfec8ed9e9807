"""Engine models as the JSON documents of the HTTP contract (used by API and CLI)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from conveyor.domain.events import Event
from conveyor.engine.models import Job, QueueStats, WorkerInfo


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


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
        "input": job.input,
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
