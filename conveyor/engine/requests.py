"""Request documents of the HTTP contract turned into engine specs (API and CLI share it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from conveyor.domain.graph import Step
from conveyor.domain.retry import Backoff
from conveyor.engine.models import ExecutionSpec, JobSpec
from conveyor.errors import InvalidInputError

Json = dict[str, Any]


def job_spec(body: Json, idempotency_key: str | None) -> JobSpec:
    backoff = body.get("backoff")
    run_at = body.get("run_at")
    if isinstance(run_at, str):
        try:
            run_at = datetime.fromisoformat(run_at)
        except ValueError:
            raise InvalidInputError("run_at must be an ISO 8601 date-time") from None
    return JobSpec(
        task=body["task"],
        input=body.get("input"),
        queue=body.get("queue"),
        priority=body.get("priority"),
        max_attempts=body.get("max_attempts"),
        backoff=None if backoff is None else Backoff.from_json(backoff),
        delay_s=body.get("delay_s"),
        run_at=run_at,
        timeout_s=body.get("timeout_s"),
        idempotency_key=idempotency_key,
        metadata=body.get("metadata"),
    )


def execution_spec(body: Json, idempotency_key: str | None) -> ExecutionSpec:
    steps = body.get("steps")
    return ExecutionSpec(
        workflow=body.get("workflow"),
        steps=None if steps is None else [Step.from_json(s) for s in steps],
        input=body.get("input"),
        scope_type=body.get("scope_type"),
        scope_id=body.get("scope_id"),
        priority=body.get("priority"),
        parallelism=body.get("parallelism"),
        mode=body.get("mode", "auto"),
        failure_policy=body.get("failure_policy"),
        idempotency_key=idempotency_key,
        metadata=body.get("metadata"),
        budget_usd=body.get("budget_usd"),
    )
