"""The Context handed to task code as its first parameter."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from conveyor.engine.models import ClaimedJob, Progress
from conveyor.errors import JobCancelled


class Attempt:
    """The worker's side of one running attempt (shared with its Context)."""

    def __init__(
        self,
        job: ClaimedJob,
        loop: asyncio.AbstractEventLoop,
        report: Any,
    ) -> None:
        self.job = job
        self.loop = loop
        self._report = report  # Callable[[Outcome], None], called on the loop
        self.stop_reason: str | None = None  # "cancel" | "fenced" | "shutdown"

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None or reason == "fenced":
            self.stop_reason = reason

    def report_progress(self, percent: int, message: str | None) -> None:
        outcome = Progress(self.job.id, self.job.lease_token, percent, message)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._report(outcome)
        else:  # task code running in a worker thread
            self.loop.call_soon_threadsafe(self._report, outcome)


class Context:
    """What a task knows about the job it runs, and how it talks back.

    ``progress()`` may be called from async or sync task code; it never blocks. A step of
    an execution also sees the outputs of the steps it depends on in ``dependencies``.
    """

    def __init__(self, attempt: Attempt) -> None:
        job = attempt.job
        self._attempt = attempt
        self.job_id: str = job.id
        self.attempt: int = job.attempt
        self.max_attempts: int = job.max_attempts
        self.task: str = job.task
        self.queue: str = job.queue
        self.owner: str = job.owner
        self.execution_id: str | None = job.execution_id
        self.step_id: str | None = job.step_id
        self.metadata: dict[str, Any] = dict(job.metadata or {})
        self.dependencies: dict[str, Any] = dict(job.dependencies)
        self._log: Any = None

    @property
    def log(self) -> Any:
        """A structlog logger bound to this job, its task and attempt."""
        if self._log is None:
            self._log = structlog.get_logger("conveyor.task").bind(
                job_id=self.job_id, task=self.task, attempt=self.attempt
            )
        return self._log

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled (or this attempt must stop for another reason)."""
        return self._attempt.stopping

    def raise_if_cancelled(self) -> None:
        """Stop here if the job was cancelled (raises :class:`JobCancelled`)."""
        if self.cancelled:
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def progress(self, percent: float, message: str | None = None) -> None:
        """Report progress (0-100) with an optional message; recorded as an event."""
        value = max(0, min(100, round(float(percent))))
        if message is not None:
            message = str(message)[:1000]
        self._attempt.report_progress(value, message)
