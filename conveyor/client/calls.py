"""The requests of the HTTP contract, described once for the sync and async clients."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx

from conveyor.errors import (
    AnswerValidationError,
    AuthenticationError,
    ConflictError,
    ConveyorError,
    GoneError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionFailedError,
    QuotaExceededError,
    ServiceUnavailableError,
)

PREFIX = "/api/v1"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
Json = dict[str, Any]


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def token(username: str, password: str) -> Call:
    return Call("POST", f"{PREFIX}/auth/token", json={"username": username, "password": password})


def submit(task: str, input: Json | None, options: Json, idempotency_key: str | None) -> Call:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    body = {"task": task, **({"input": input} if input is not None else {}), **options}
    return Call("POST", f"{PREFIX}/jobs", json=body, headers=headers)


def get_job(job_id: str) -> Call:
    return Call("GET", f"{PREFIX}/jobs/{job_id}")


def list_jobs(filters: Json, limit: int, cursor: str | None) -> Call:
    return Call("GET", f"{PREFIX}/jobs", params=_params(**filters, limit=limit, cursor=cursor))


def cancel_job(job_id: str) -> Call:
    return Call("POST", f"{PREFIX}/jobs/{job_id}/cancel")


def retry_job(job_id: str) -> Call:
    return Call("POST", f"{PREFIX}/jobs/{job_id}/retry")


def job_events(job_id: str, after: int, limit: int = 100) -> Call:
    return Call("GET", f"{PREFIX}/jobs/{job_id}/events", params={"after": after, "limit": limit})


def start_execution(body: Json, idempotency_key: str | None) -> Call:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return Call("POST", f"{PREFIX}/executions", json=body, headers=headers)


def get_execution(execution_id: str) -> Call:
    return Call("GET", f"{PREFIX}/executions/{execution_id}")


def list_executions(filters: Json, limit: int, cursor: str | None) -> Call:
    return Call(
        "GET", f"{PREFIX}/executions", params=_params(**filters, limit=limit, cursor=cursor)
    )


def execution_steps(execution_id: str) -> Call:
    return Call("GET", f"{PREFIX}/executions/{execution_id}/steps")


def cancel_execution(execution_id: str) -> Call:
    return Call("POST", f"{PREFIX}/executions/{execution_id}/cancel")


def retry_execution(execution_id: str) -> Call:
    return Call("POST", f"{PREFIX}/executions/{execution_id}/retry")


def run_step(execution_id: str, step_id: str, data: Json | None) -> Call:
    body = {} if data is None else {"input": data}
    return Call("POST", f"{PREFIX}/executions/{execution_id}/steps/{step_id}/run", json=body)


def execution_events(execution_id: str, after: int, limit: int = 100) -> Call:
    return Call(
        "GET",
        f"{PREFIX}/executions/{execution_id}/events",
        params={"after": after, "limit": limit},
    )


def get_clarification(execution_id: str, step_id: str) -> Call:
    return Call("GET", f"{PREFIX}/executions/{execution_id}/steps/{step_id}/clarification")


def answer(execution_id: str, step_id: str, answers: Json) -> Call:
    return Call(
        "POST",
        f"{PREFIX}/executions/{execution_id}/steps/{step_id}/clarification",
        json={"answers": answers},
    )


def list_clarifications(status: str | None) -> Call:
    return Call("GET", f"{PREFIX}/clarifications", params=_params(status=status))


def list_workflows() -> Call:
    return Call("GET", f"{PREFIX}/workflows")


def get_workflow(name: str) -> Call:
    return Call("GET", f"{PREFIX}/workflows/{name}")


def list_queues() -> Call:
    return Call("GET", f"{PREFIX}/queues")


def pause_queue(name: str) -> Call:
    return Call("POST", f"{PREFIX}/queues/{name}/pause")


def resume_queue(name: str) -> Call:
    return Call("POST", f"{PREFIX}/queues/{name}/resume")


def clean_queue(name: str, status: str, older_than_s: float) -> Call:
    return Call(
        "POST",
        f"{PREFIX}/queues/{name}/clean",
        json={"status": status, "older_than_s": older_than_s},
    )


def list_workers() -> Call:
    return Call("GET", f"{PREFIX}/workers")


def usage_summary(start: str | None, end: str | None) -> Call:
    return Call("GET", f"{PREFIX}/telemetry/summary", params=_params(**{"from": start, "to": end}))


def get_document(document_id: str) -> Call:
    return Call("GET", f"{PREFIX}/documents/{document_id}")


def get_document_version(document_id: str, version: int) -> Call:
    return Call("GET", f"{PREFIX}/documents/{document_id}/versions/{version}")


def list_documents(filters: Json, limit: int, cursor: str | None) -> Call:
    return Call("GET", f"{PREFIX}/documents", params=_params(**filters, limit=limit, cursor=cursor))


_BY_STATUS: dict[int, type[ConveyorError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    412: PreconditionFailedError,
    410: GoneError,
    413: InvalidInputError,
    422: InvalidInputError,
    429: QuotaExceededError,
    503: ServiceUnavailableError,
}


def result(response: httpx.Response) -> Any:
    """The body of a successful response, or the matching ConveyorError."""
    if response.status_code < 400:
        return None if response.status_code == 204 or not response.content else response.json()
    try:
        body = response.json()
    except ValueError:
        body = {}
    detail = body.get("detail") if isinstance(body, dict) else None
    message = detail or f"HTTP {response.status_code} from {response.request.url.path}"
    errors = body.get("errors") if isinstance(body, dict) else None
    kind = _BY_STATUS.get(response.status_code, ConveyorError)
    if (
        response.status_code == 422
        and isinstance(body, dict)
        and body.get("code") == "invalid_answers"
    ):
        kind = AnswerValidationError
    if kind is QuotaExceededError:
        retry = response.headers.get("Retry-After")
        raise QuotaExceededError(message, retry_after_s=float(retry) if retry else None)
    raise kind(message, details=errors if isinstance(errors, list) else None)


def unreachable(base_url: str, exc: Exception) -> ServiceUnavailableError:
    return ServiceUnavailableError(f"cannot reach the Conveyor server at {base_url}: {exc}")
