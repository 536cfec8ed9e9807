"""The Engine: the one door through which state changes.

It turns requests (enqueue, cancel, settle a batch of outcomes, ...) into transaction
bodies and runs them on the :class:`Database`. The API, the CLI, the dashboard and the
workers all go through it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select

from conveyor.domain.events import Event
from conveyor.domain.questions import Question, check_questions
from conveyor.domain.states import JobStatus
from conveyor.engine import clarifications as clar_mod
from conveyor.engine import documents as docs_mod
from conveyor.engine import executions as exec_mod
from conveyor.engine import jobs as jobs_mod
from conveyor.engine import leases
from conveyor.engine import queues as queues_mod
from conveyor.engine import usage as usage_mod
from conveyor.engine import workers as workers_mod
from conveyor.engine.executions import ExecutionCoordinator, ExecutionFilters
from conveyor.engine.jobs import CANCEL_CHANNEL, JOBS_CHANNEL, JobFilters, Limits
from conveyor.engine.models import (
    AskResult,
    ClaimRequest,
    Clarification,
    EnqueueResult,
    Execution,
    ExecutionSpec,
    Job,
    JobSpec,
    LeaseRenewal,
    Outcome,
    Page,
    QueueStats,
    SettleResult,
    StartResult,
    StepChange,
    StepCoordinator,
    StepState,
    TaskCatalog,
    WorkerInfo,
)
from conveyor.engine.sealing import Sealer
from conveyor.engine.usage import UsageRecord
from conveyor.engine.workers import WorkerRegistration
from conveyor.errors import InvalidInputError, NotFoundError, QuotaExceededError
from conveyor.store.database import Database, Tx
from conveyor.store.schema import events, executions

Wakeup = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class EngineSettings:
    lease_ttl_s: float = 30.0
    worker_heartbeat_timeout_s: float = 30.0
    max_steps: int = 2000
    limits: Limits = field(default_factory=Limits)


class Engine:
    """Queue semantics over one :class:`Database`."""

    def __init__(
        self,
        db: Database,
        *,
        catalog: TaskCatalog | None = None,
        settings: EngineSettings | None = None,
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.settings = settings or EngineSettings()
        self._known_queues: set[str] = set()
        self._waiting: dict[str, tuple[float, int]] = {}
        # concurrent submits would all miss the cache and count the same committed jobs
        self._waiting_lock = asyncio.Lock()
        self.steps: StepCoordinator = ExecutionCoordinator()
        #: seals secret task inputs before they are stored (set by the Runtime)
        self.sealer: Sealer | None = None
        self._rng = random.Random()

    # -- wiring ----------------------------------------------------------------------------

    def add_wakeup(self, callback: Wakeup) -> None:
        """Call ``callback(queue)`` after this process commits newly runnable jobs."""
        self.db.add_notification_listener(JOBS_CHANNEL, callback)

    def remove_wakeup(self, callback: Wakeup) -> None:
        self.db.remove_notification_listener(JOBS_CHANNEL, callback)

    def add_cancel_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(job_id)`` after this process requests a cancel of an active job."""
        self.db.add_notification_listener(CANCEL_CHANNEL, callback)

    def remove_cancel_listener(self, callback: Callable[[str], None]) -> None:
        self.db.remove_notification_listener(CANCEL_CHANNEL, callback)

    # -- jobs ------------------------------------------------------------------------------

    async def enqueue(self, spec: JobSpec, *, owner: str) -> EnqueueResult:
        """Queue one job. A repeat with the same idempotency key returns the original."""
        (result,) = await self.enqueue_many([spec], owner=owner)
        return result

    async def enqueue_many(self, specs: Sequence[JobSpec], *, owner: str) -> list[EnqueueResult]:
        """Queue many jobs in one transaction (all or nothing)."""
        limits = self.settings.limits
        if len(specs) > limits.max_bulk:
            raise InvalidInputError(f"at most {limits.max_bulk} jobs per request")
        prepared = [
            jobs_mod.prepare(
                s, owner=owner, catalog=self.catalog, limits=limits, sealer=self.sealer
            )
            for s in specs
        ]
        await self._check_waiting_quota(owner, len(prepared))
        new_queues = {p.row["queue"] for p in prepared} - self._known_queues

        def body(tx: Tx) -> list[EnqueueResult]:
            if new_queues:
                jobs_mod.ensure_queues_tx(tx, new_queues)
            return jobs_mod.enqueue_tx(tx, prepared, owner)

        results = await self.db.write(body)
        self._known_queues |= new_queues
        return results

    async def _check_waiting_quota(self, owner: str, adding: int) -> None:
        """Refuse work beyond the owner's cap of waiting jobs (429). The count is cached
        for a few seconds: the cap is a guard against floods, not an exact ledger."""
        cap = self.settings.limits.max_waiting_per_owner
        if cap is None:
            return
        async with self._waiting_lock:
            now = time.monotonic()
            cached = self._waiting.get(owner)
            if cached is None or cached[0] < now:
                count = await self.db.read(lambda c: jobs_mod.waiting_count(c, owner))
                cached = (now + 2.0, count)
            if cached[1] + adding > cap:
                self._waiting[owner] = cached
                raise QuotaExceededError(
                    f"you already have {cached[1]} jobs waiting (the cap is {cap}); "
                    "try again when some have run",
                    retry_after_s=5,
                )
            self._waiting[owner] = (cached[0], cached[1] + adding)

    async def get_job(self, job_id: str, *, owner: str | None = None) -> Job:
        return await self.db.read(lambda c: jobs_mod.get_job(c, job_id, owner))

    async def list_jobs(
        self,
        filters: JobFilters | None = None,
        *,
        owner: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page:
        items, next_cursor = await self.db.read(
            lambda c: jobs_mod.list_jobs(c, filters or JobFilters(), owner, limit, cursor)
        )
        return Page(items, next_cursor)

    async def cancel_job(self, job_id: str, *, owner: str | None = None) -> Job:
        def body(tx: Tx) -> Job:
            job, step_changed = jobs_mod.cancel_job_tx(tx, job_id, owner)
            if step_changed and job.execution_id and job.step_id:
                change = StepChange(job.execution_id, job.step_id, job.id, JobStatus.CANCELLED)
                self.steps.advance(tx, [change])
            return job

        return await self.db.write(body)

    async def retry_job(self, job_id: str, *, owner: str | None = None) -> Job:
        return await self.db.write(lambda tx: jobs_mod.retry_job_tx(tx, job_id, owner))

    async def job_events(
        self, job_id: str, *, owner: str | None = None, after_id: int = 0, limit: int = 100
    ) -> list[Event]:
        def body(conn: Connection) -> list[Event]:
            jobs_mod.get_job(conn, job_id, owner)  # 404 for someone else's job
            rows = conn.execute(
                select(events)
                .where(events.c.job_id == job_id, events.c.id > after_id)
                .order_by(events.c.id)
                .limit(limit)
            ).all()
            return [Event(**row._mapping) for row in rows]

        return await self.db.read(body)

    async def queue_events(
        self, queue: str, *, owner: str | None = None, after_id: int = 0, limit: int = 100
    ) -> list[Event]:
        """A queue's events after ``after_id`` (only the owner's, unless ``owner`` is None)."""

        def body(conn: Connection) -> list[Event]:
            stmt = select(events).where(events.c.queue == queue, events.c.id > after_id)
            if owner is not None:
                stmt = stmt.where(events.c.owner == owner)
            rows = conn.execute(stmt.order_by(events.c.id).limit(limit)).all()
            return [Event(**row._mapping) for row in rows]

        return await self.db.read(body)

    # -- workers' side ---------------------------------------------------------------------

    async def settle(
        self, outcomes: Sequence[Outcome], claim: ClaimRequest | None = None
    ) -> SettleResult:
        """Record attempt outcomes and claim replacement jobs, in one transaction."""

        def body(tx: Tx) -> SettleResult:
            result = leases.settle_tx(tx, outcomes, claim, self.steps, self._rng)
            own = sum(1 for channel, _ in tx.notifications if channel == JOBS_CHANNEL)
            return SettleResult(result.claimed, result.lost, own)

        return await self.db.write(body)

    async def claim(self, request: ClaimRequest) -> list[Any]:
        return (await self.settle((), request)).claimed

    async def renew_leases(
        self,
        worker_id: str,
        held: Sequence[tuple[str, str]],
        *,
        load: int,
        lease_s: float | None = None,
    ) -> LeaseRenewal:
        """Extend the leases a worker holds (by ``lease_s``, default the engine's TTL)."""
        ttl = self.settings.lease_ttl_s if lease_s is None else lease_s
        return await self.db.write(lambda tx: leases.renew_tx(tx, worker_id, held, ttl, load))

    async def recover_expired(self, limit: int = 100) -> list[str]:
        """Requeue or fail jobs whose worker stopped renewing their lease."""

        return await self.db.write(lambda tx: leases.recover_expired_tx(tx, limit, self.steps))

    # -- queues ----------------------------------------------------------------------------

    async def pause_queue(self, name: str, *, actor: str) -> QueueStats:
        await self.db.write(lambda tx: queues_mod.set_paused_tx(tx, name, True, actor))
        return await self.queue_stats(name)

    async def resume_queue(self, name: str, *, actor: str) -> QueueStats:
        await self.db.write(lambda tx: queues_mod.set_paused_tx(tx, name, False, actor))
        return await self.queue_stats(name)

    async def queue_stats(self, name: str) -> QueueStats:
        return await self.db.read(lambda c: queues_mod.queue_stats(c, name))

    async def list_queues(self) -> list[QueueStats]:
        def body(conn: Connection) -> list[QueueStats]:
            return [queues_mod.queue_stats(conn, n) for n in queues_mod.queue_names(conn)]

        return await self.db.read(body)

    async def clean_queue(self, name: str, *, status: str, older_than_s: float, actor: str) -> int:
        """Delete finished jobs of ``status`` older than ``older_than_s`` (in batches)."""
        parsed = queues_mod.check_clean_status(status)

        def check(conn: Connection) -> Any:
            if not queues_mod.queue_exists(conn, name):
                raise NotFoundError(f"queue {name!r} not found")
            return queues_mod.clean_cutoff(conn, older_than_s)

        before = await self.db.read(check)
        total = 0
        while True:
            deleted = await self.db.write(
                lambda tx: queues_mod.clean_batch_tx(tx, name, parsed, before)
            )
            total += deleted
            if deleted < queues_mod.CLEAN_BATCH:
                break
        await self.db.write(lambda tx: queues_mod.emit_cleaned(tx, name, parsed, total, actor))
        return total

    # -- workers table ---------------------------------------------------------------------

    @property
    def _heartbeat_timeout(self) -> timedelta:
        return timedelta(seconds=self.settings.worker_heartbeat_timeout_s)

    async def register_worker(self, registration: WorkerRegistration) -> WorkerInfo:
        await self.db.write(lambda tx: workers_mod.register_tx(tx, registration))
        return await self.get_worker(registration.id)

    async def worker_heartbeat(
        self, worker_id: str, *, load: int | None = None, owner: str | None = None
    ) -> WorkerInfo:
        await self.db.write(lambda tx: workers_mod.heartbeat_tx(tx, worker_id, load, owner))
        return await self.get_worker(worker_id)

    async def set_worker_status(self, worker_id: str, status: str) -> None:
        await self.db.write(lambda tx: workers_mod.set_status_tx(tx, worker_id, status))

    async def deregister_worker(self, worker_id: str, *, owner: str | None = None) -> None:
        await self.db.write(lambda tx: workers_mod.deregister_tx(tx, worker_id, owner))

    async def list_workers(self) -> list[WorkerInfo]:
        return await self.db.read(lambda c: workers_mod.list_workers(c, self._heartbeat_timeout))

    async def get_worker(self, worker_id: str) -> WorkerInfo:
        return await self.db.read(
            lambda c: workers_mod.get_worker(c, worker_id, self._heartbeat_timeout)
        )

    async def prune_workers(self, older_than: timedelta) -> int:
        return await self.db.write(lambda tx: workers_mod.prune_tx(tx, older_than))

    # -- executions --------------------------------------------------------------------------

    async def start_execution(self, spec: ExecutionSpec, *, owner: str) -> StartResult:
        """Start a workflow (or an ad-hoc DAG). A repeated idempotency key returns the
        original execution."""
        prepared = exec_mod.prepare_execution(
            spec,
            owner=owner,
            catalog=self.catalog,
            limits=self.settings.limits,
            max_steps=self.settings.max_steps,
            sealer=self.sealer,
        )
        if spec.mode == "auto":  # its steps are jobs waiting from the start
            await self._check_waiting_quota(owner, len(prepared.step_defaults))
        new_queues = {d.queue for d in prepared.step_defaults.values()} - self._known_queues

        def body(tx: Tx) -> tuple[str, bool]:
            if new_queues:
                jobs_mod.ensure_queues_tx(tx, new_queues)
            return exec_mod.start_tx(tx, prepared)

        execution_id, created = await self.db.write(body)
        self._known_queues |= new_queues
        return StartResult(await self.get_execution(execution_id), created)

    async def get_execution(self, execution_id: str, *, owner: str | None = None) -> Execution:
        return await self.db.read(lambda c: exec_mod.get_execution(c, execution_id, owner))

    async def list_executions(
        self,
        filters: ExecutionFilters | None = None,
        *,
        owner: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page:
        items, next_cursor = await self.db.read(
            lambda c: exec_mod.list_executions(
                c, filters or ExecutionFilters(), owner, limit, cursor
            )
        )
        return Page(items, next_cursor)

    async def execution_steps(
        self, execution_id: str, *, owner: str | None = None
    ) -> list[StepState]:
        return await self.db.read(lambda c: clar_mod.list_steps(c, execution_id, owner))

    async def cancel_execution(self, execution_id: str, *, owner: str | None = None) -> Execution:
        """Cancel: waiting steps stop at once, active ones are asked to stop."""
        await self.db.write(lambda tx: exec_mod.cancel_tx(tx, execution_id, owner))
        return await self.get_execution(execution_id, owner=owner)

    async def retry_execution(self, execution_id: str, *, owner: str | None = None) -> Execution:
        """Re-run the steps of a failed or cancelled execution that did not complete."""
        await self.db.write(lambda tx: exec_mod.retry_tx(tx, execution_id, owner))
        return await self.get_execution(execution_id, owner=owner)

    async def run_step(
        self,
        execution_id: str,
        step_id: str,
        *,
        input: dict[str, Any] | None = None,
        owner: str | None = None,
    ) -> Job:
        """Manual mode: queue one step now (refused while its dependencies are not done)."""
        job_id = await self.db.write(
            lambda tx: exec_mod.run_step_tx(tx, execution_id, step_id, input, owner)
        )
        return await self.get_job(job_id)

    async def execution_events(
        self,
        execution_id: str,
        *,
        owner: str | None = None,
        after_id: int = 0,
        limit: int = 100,
    ) -> list[Event]:
        """The execution's events and those of its steps, in order."""

        def body(conn: Connection) -> list[Event]:
            exec_mod.get_execution(conn, execution_id, owner)
            rows = conn.execute(
                select(events)
                .where(events.c.execution_id == execution_id, events.c.id > after_id)
                .order_by(events.c.id)
                .limit(limit)
            ).all()
            return [Event(**row._mapping) for row in rows]

        return await self.db.read(body)

    # -- clarifications and memos ------------------------------------------------------------

    async def ask(
        self,
        job_id: str,
        token: str,
        seq: int,
        questions: list[Question],
        *,
        timeout_s: float | None = None,
        on_timeout: str = "fail",
    ) -> AskResult:
        check_questions(questions)
        if on_timeout not in clar_mod.ON_TIMEOUT:
            raise InvalidInputError("on_timeout must be fail or default")
        if timeout_s is not None and not 0 < timeout_s <= 366 * 86_400:
            raise InvalidInputError("timeout_s must be positive and at most a year")
        return await self.db.write(
            lambda tx: clar_mod.ask_tx(
                tx, job_id, token, seq, questions, timeout_s, on_timeout, self.steps
            )
        )

    async def answer(
        self,
        execution_id: str,
        step_id: str,
        answers: dict[str, Any],
        *,
        owner: str | None = None,
        actor: str,
    ) -> Clarification:
        """Answer a step's pending clarification; invalid answers change nothing."""
        return await self.db.write(
            lambda tx: clar_mod.answer_tx(
                tx, execution_id, step_id, answers, owner, actor, self.steps
            )
        )

    async def get_clarification(
        self, execution_id: str, step_id: str, *, owner: str | None = None
    ) -> Clarification:
        return await self.db.read(lambda c: clar_mod.get_for_step(c, execution_id, step_id, owner))

    async def list_clarifications(
        self, *, owner: str | None = None, status: str | None = "pending", limit: int = 100
    ) -> list[Clarification]:
        if status is not None and status not in ("pending", "answered", "expired", "cancelled"):
            raise InvalidInputError("status must be pending, answered, expired or cancelled")
        return await self.db.read(lambda c: clar_mod.list_clarifications(c, owner, status, limit))

    async def expire_clarifications(self) -> int:
        return await self.db.write(lambda tx: clar_mod.expire_tx(tx, self.steps))

    async def get_memo(self, job_id: str, key: str) -> tuple[bool, Any]:
        return await self.db.read(lambda c: clar_mod.get_memo(c, job_id, key))

    async def put_memo(self, job_id: str, token: str, key: str, value: Any) -> Any:
        return await self.db.write(lambda tx: clar_mod.put_memo_tx(tx, job_id, token, key, value))

    # -- documents ---------------------------------------------------------------------------

    async def save_document(
        self,
        job_id: str,
        token: str,
        seq: int,
        type_: str,
        title: str,
        content: Any,
        scope_type: str | None,
        scope_id: str | None,
    ) -> tuple[str, int]:
        """A step's n-th save: create the document or add a version (once per save)."""
        return await self.db.write(
            lambda tx: docs_mod.save_from_step_tx(
                tx, job_id, token, seq, type_, title, content, scope_type, scope_id
            )
        )

    async def get_document(self, document_id: str, *, owner: str | None = None) -> Any:
        return await self.db.read(lambda c: docs_mod.get_document(c, document_id, owner))

    async def document_versions(self, document_id: str, *, owner: str | None = None) -> Any:
        return await self.db.read(lambda c: docs_mod.list_versions(c, document_id, owner))

    async def document_version(
        self, document_id: str, version: int, *, owner: str | None = None
    ) -> Any:
        return await self.db.read(lambda c: docs_mod.get_version(c, document_id, version, owner))

    async def list_documents(
        self,
        *,
        owner: str | None = None,
        scope_type: str | None = None,
        scope_id: str | None = None,
        type_: str | None = None,
        execution_id: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page:
        """Documents, newest first; ``execution_id`` keeps those that execution wrote."""
        rows, next_cursor = await self.db.read(
            lambda c: docs_mod.list_documents(
                c,
                owner,
                scope_type=scope_type,
                scope_id=scope_id,
                type_=type_,
                limit=limit,
                cursor=cursor,
                execution_id=execution_id,
            )
        )
        return Page(rows, next_cursor)

    async def put_document(
        self,
        document_id: str,
        *,
        expected_version: int,
        content: Any,
        title: str | None = None,
        owner: str | None = None,
        actor: str,
    ) -> Any:
        """Add a version if the document is still at ``expected_version`` (else 412)."""
        await self.db.write(
            lambda tx: docs_mod.put_tx(
                tx, document_id, expected_version, title, content, owner, actor
            )
        )
        return await self.get_document(document_id, owner=owner)

    # -- usage and telemetry -----------------------------------------------------------------

    async def record_usage(self, record: UsageRecord) -> str:
        return await self.db.write(lambda tx: usage_mod.record_tx(tx, record))

    async def execution_spend(self, execution_id: str) -> float:
        return await self.db.read(lambda c: usage_mod.spend(c, execution_id))

    async def execution_budget(self, execution_id: str) -> float | None:
        value = await self.db.read(
            lambda c: c.execute(
                select(executions.c.budget_usd).where(executions.c.id == execution_id)
            ).scalar()
        )
        return None if value is None else float(value)

    async def telemetry_summary(
        self,
        *,
        owner: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> dict[str, Any]:
        return await self.db.read(lambda c: usage_mod.summary(c, owner, start, end))

    async def execution_costs(self, execution_id: str, *, owner: str | None = None) -> Any:
        return await self.db.read(lambda c: usage_mod.execution_costs(c, execution_id, owner))

    async def workflow_stats(self, name: str, *, owner: str | None = None) -> dict[str, Any]:
        return await self.db.read(lambda c: usage_mod.workflow_stats(c, name, owner))
