"""The Context handed to task code as its first parameter."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import structlog
from pydantic import TypeAdapter

from conveyor.domain.questions import Question
from conveyor.engine.models import ClaimedJob, Progress
from conveyor.errors import ConfigurationError, InvalidInputError, JobCancelled

if TYPE_CHECKING:
    from conveyor.engine.core import Engine
    from conveyor.llm.client import LLMClient
    from conveyor.worker.http import SafeHttp

T = TypeVar("T")
_JSON: TypeAdapter[Any] = TypeAdapter(Any)


class AwaitingInput(BaseException):
    """Raised by ``ctx.ask`` to park the step until its questions are answered.

    A BaseException so that ``except Exception`` in task code does not swallow it.
    """


class Attempt:
    """The worker's side of one running attempt (shared with its Context)."""

    def __init__(
        self,
        job: ClaimedJob,
        loop: asyncio.AbstractEventLoop,
        report: Any,
        engine: Engine,
        services: Any = None,
    ) -> None:
        self.job = job
        self.loop = loop
        self.engine = engine
        # what the process offers task code beyond the engine (``llm_for(ctx)``)
        self.services = services
        self.saves = 0
        self._report = report  # Callable[[Outcome], None], called on the loop
        self.stop_reason: str | None = None  # "cancel" | "fenced" | "shutdown"
        self.asked = 0

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
        self._llm: Any = None

    @property
    def llm(self) -> LLMClient:
        """Model calls: ``await ctx.llm.complete("...")``; each call is priced, recorded
        as usage and checked against the execution's budget."""
        if self._llm is None:
            services = self._attempt.services
            if services is None:
                raise ConfigurationError("this worker was built without LLM providers")
            self._llm = services.llm_for(self)
        return cast("LLMClient", self._llm)

    @property
    def http(self) -> SafeHttp:
        """Outbound HTTP that refuses non-public addresses (``await ctx.http.get(url)``):
        use it for any URL that came from a user or a model."""
        services = self._attempt.services
        if services is None:
            raise ConfigurationError("this worker was built without task services")
        return cast("SafeHttp", services.http_for(self))

    async def save_document(
        self,
        type: str,
        title: str,
        content: Any,
        *,
        scope_type: str | None = None,
        scope_id: str | None = None,
    ) -> dict[str, Any]:
        """Create a document, or add a version to this scope's document of ``type``.

        ``content`` is text or JSON. Without a scope, a step's documents belong to its
        execution's scope. A retried step gets back the version its earlier attempt
        saved instead of adding another. Returns ``{"id": ..., "version": ...}``.
        """
        attempt = self._attempt
        seq = attempt.saves
        attempt.saves += 1
        job = attempt.job
        normalised = (
            content if isinstance(content, str) else _JSON.dump_python(content, mode="json")
        )
        document_id, version = await attempt.engine.save_document(
            job.id, job.lease_token, seq, type, title, normalised, scope_type, scope_id
        )
        return {"id": document_id, "version": version}

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

    async def ask(
        self,
        questions: Sequence[Question | dict[str, Any]],
        *,
        timeout_s: float | None = None,
        on_timeout: str = "fail",
    ) -> dict[str, Any]:
        """Ask a human; returns ``{question_id: answer}``.

        The first time, the questions are recorded and the step stops here, freeing its
        worker slot (the execution shows ``awaiting_input``). Once valid answers arrive
        the step runs again from the start, and this same call returns them at once (use
        :meth:`memo` for work before it that must not be redone). With ``timeout_s``,
        ``on_timeout="default"`` answers with the questions' defaults, ``"fail"`` fails
        the step.
        """
        attempt = self._attempt
        parsed = [q if isinstance(q, Question) else Question.from_json(q) for q in questions]
        seq = attempt.asked
        attempt.asked += 1
        job = attempt.job
        result = await attempt.engine.ask(
            job.id, job.lease_token, seq, parsed, timeout_s=timeout_s, on_timeout=on_timeout
        )
        if result.answers is None:
            raise AwaitingInput(result.clarification_id)
        return dict(result.answers)

    async def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """Run ``compute`` once per step and remember its (JSON) result.

        A retried or resumed step gets the recorded value back instead of running
        ``compute`` again (say, an expensive LLM call). ``compute`` may be sync or async;
        its result must be JSON-serialisable (Pydantic models are dumped to JSON).
        """
        if not key or len(key) > 200:
            raise InvalidInputError("memo key must be 1-200 characters")
        attempt = self._attempt
        job = attempt.job
        found, value = await attempt.engine.get_memo(job.id, key)
        if found:
            return value
        produced = compute()
        if inspect.isawaitable(produced):
            produced = await produced
        normalised = _JSON.dump_python(produced, mode="json")
        return await attempt.engine.put_memo(job.id, job.lease_token, key, normalised)

    def ask_sync(
        self,
        questions: Sequence[Question | dict[str, Any]],
        *,
        timeout_s: float | None = None,
        on_timeout: str = "fail",
    ) -> dict[str, Any]:
        """:meth:`ask` for synchronous task code (which runs in a worker thread)."""
        return self._run(self.ask(questions, timeout_s=timeout_s, on_timeout=on_timeout))

    def memo_sync(self, key: str, compute: Callable[[], Any]) -> Any:
        """:meth:`memo` for synchronous task code."""
        return self._run(self.memo(key, compute))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._attempt.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise RuntimeError("use the async form (await ctx.ask / ctx.memo) in async tasks")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()
