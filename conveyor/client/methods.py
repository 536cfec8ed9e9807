"""The client's methods, written once; each client decides how a call is sent."""

from __future__ import annotations

import builtins
from typing import Any, Generic, TypeVar

from conveyor.client import calls
from conveyor.client.calls import Call, Json

R = TypeVar("R")


class Methods(Generic[R]):
    """``R`` is what a request returns: the JSON value (sync) or an awaitable of it."""

    def _send(self, call: Call) -> R:
        raise NotImplementedError

    def submit(
        self,
        task: str,
        input: Json | None = None,
        *,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> R:
        """Queue a job; ``options``: queue, priority, max_attempts, backoff, delay_s, run_at,
        timeout_s, metadata."""
        return self._send(calls.submit(task, input, options, idempotency_key))

    def get(self, job_id: str) -> R:
        return self._send(calls.get_job(job_id))

    def list(self, *, limit: int = 20, cursor: str | None = None, **filters: Any) -> R:
        """Jobs, newest first; filters: status, task, queue, created_after, created_before."""
        return self._send(calls.list_jobs(filters, limit, cursor))

    def cancel(self, job_id: str) -> R:
        return self._send(calls.cancel_job(job_id))

    def retry(self, job_id: str) -> R:
        return self._send(calls.retry_job(job_id))

    def job_events(self, job_id: str, *, after: int = 0, limit: int = 100) -> R:
        return self._send(calls.job_events(job_id, after, limit))

    def start(
        self,
        workflow: str | None = None,
        input: Json | None = None,
        *,
        steps: builtins.list[Json] | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> R:
        """Start an execution of ``workflow`` (or of ad-hoc ``steps``); options: mode,
        parallelism, priority, scope_type, scope_id, failure_policy, metadata."""
        body: Json = {**options}
        if workflow is not None:
            body["workflow"] = workflow
        if steps is not None:
            body["steps"] = steps
        if input is not None:
            body["input"] = input
        return self._send(calls.start_execution(body, idempotency_key))

    def execution(self, execution_id: str) -> R:
        return self._send(calls.get_execution(execution_id))

    def executions(self, *, limit: int = 20, cursor: str | None = None, **filters: Any) -> R:
        return self._send(calls.list_executions(filters, limit, cursor))

    def steps(self, execution_id: str) -> R:
        return self._send(calls.execution_steps(execution_id))

    def run_step(self, execution_id: str, step_id: str, input: Json | None = None) -> R:
        return self._send(calls.run_step(execution_id, step_id, input))

    def cancel_execution(self, execution_id: str) -> R:
        return self._send(calls.cancel_execution(execution_id))

    def retry_execution(self, execution_id: str) -> R:
        return self._send(calls.retry_execution(execution_id))

    def execution_events(self, execution_id: str, *, after: int = 0, limit: int = 100) -> R:
        return self._send(calls.execution_events(execution_id, after, limit))

    def clarification(self, execution_id: str, step_id: str) -> R:
        return self._send(calls.get_clarification(execution_id, step_id))

    def answer(self, execution_id: str, step_id: str, answers: Json) -> R:
        return self._send(calls.answer(execution_id, step_id, answers))

    def clarifications(self, status: str | None = "pending") -> R:
        return self._send(calls.list_clarifications(status))

    def workflows(self) -> R:
        return self._send(calls.list_workflows())

    def workflow(self, name: str) -> R:
        return self._send(calls.get_workflow(name))

    def queues(self) -> R:
        return self._send(calls.list_queues())

    def pause_queue(self, name: str) -> R:
        return self._send(calls.pause_queue(name))

    def resume_queue(self, name: str) -> R:
        return self._send(calls.resume_queue(name))

    def clean_queue(self, name: str, status: str, older_than_s: float) -> R:
        return self._send(calls.clean_queue(name, status, older_than_s))

    def workers(self) -> R:
        return self._send(calls.list_workers())

    def usage(self, *, start: str | None = None, end: str | None = None) -> R:
        """LLM usage and cost in [start, end): totals and by workflow, model and day."""
        return self._send(calls.usage_summary(start, end))

    def document(self, document_id: str) -> R:
        return self._send(calls.get_document(document_id))

    def document_version(self, document_id: str, version: int) -> R:
        """One version of a document, with who or which step made it."""
        return self._send(calls.get_document_version(document_id, version))

    def documents(self, *, limit: int = 20, cursor: str | None = None, **filters: Any) -> R:
        """Documents, newest first; filters: scope_type, scope_id, type."""
        return self._send(calls.list_documents(filters, limit, cursor))
