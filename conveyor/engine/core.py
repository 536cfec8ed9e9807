"""The Engine: the one door through which state changes.

It turns requests (enqueue, cancel, settle a batch of outcomes, ...) into transaction
bodies and runs them on the :class:`Database`. The API, the CLI, the dashboard and the
workers all go through it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, select

from conveyor.domain.events import Event
from conveyor.engine import jobs as jobs_mod
from conveyor.engine import leases
from conveyor.engine import queues as queues_mod
from conveyor.engine import workers as workers_mod
from conveyor.engine.jobs import CANCEL_CHANNEL, JOBS_CHANNEL, JobFilters, Limits
from conveyor.engine.models import (
    ClaimRequest,
    EnqueueResult,
    Job,
    JobSpec,
    LeaseRenewal,
    Outcome,
    Page,
    QueueStats,
    SettleResult,
    TaskCatalog,
    WorkerInfo,
)
from conveyor.engine.workers import WorkerRegistration
from conveyor.errors import NotFoundError
from conveyor.store.database import Database, Tx
from conveyor.store.schema import events

Wakeup = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class EngineSettings:
    lease_ttl_s: float = 30.0
    worker_heartbeat_timeout_s: float = 30.0
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
        self._step_hook: leases.StepHook | None = None
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

    def set_step_hook(self, hook: leases.StepHook) -> None:
        """Install the execution coordinator that advances DAGs when steps finish."""
        self._step_hook = hook

    # -- jobs ------------------------------------------------------------------------------

    async def enqueue(self, spec: JobSpec, *, owner: str) -> EnqueueResult:
        """Queue one job. A repeat with the same idempotency key returns the original."""
        (result,) = await self.enqueue_many([spec], owner=owner)
        return result

    async def enqueue_many(self, specs: Sequence[JobSpec], *, owner: str) -> list[EnqueueResult]:
        """Queue many jobs in one transaction (all or nothing)."""
        limits = self.settings.limits
        if len(specs) > limits.max_bulk:
            from conveyor.errors import InvalidInputError

            raise InvalidInputError(f"at most {limits.max_bulk} jobs per request")
        prepared = [
            jobs_mod.prepare(s, owner=owner, catalog=self.catalog, limits=limits) for s in specs
        ]
        new_queues = {p.row["queue"] for p in prepared} - self._known_queues

        def body(tx: Tx) -> list[EnqueueResult]:
            if new_queues:
                jobs_mod.ensure_queues_tx(tx, new_queues)
            return jobs_mod.enqueue_tx(tx, prepared, owner)

        results = await self.db.write(body)
        self._known_queues |= new_queues
        return results

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
            if step_changed and self._step_hook is not None and job.execution_id:
                from conveyor.domain.states import JobStatus

                self._step_hook(
                    tx,
                    [
                        leases.StepChange(
                            job.execution_id, job.step_id or "", job.id, JobStatus.CANCELLED
                        )
                    ],
                )
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

    # -- workers' side ---------------------------------------------------------------------

    async def settle(
        self, outcomes: Sequence[Outcome], claim: ClaimRequest | None = None
    ) -> SettleResult:
        """Record attempt outcomes and claim replacement jobs, in one transaction."""

        return await self.db.write(
            lambda tx: leases.settle_tx(tx, outcomes, claim, self._step_hook, self._rng)
        )

    async def claim(self, request: ClaimRequest) -> list[Any]:
        return (await self.settle((), request)).claimed

    async def renew_leases(
        self, worker_id: str, held: Sequence[tuple[str, str]], *, load: int
    ) -> LeaseRenewal:
        return await self.db.write(
            lambda tx: leases.renew_tx(tx, worker_id, held, self.settings.lease_ttl_s, load)
        )

    async def recover_expired(self, limit: int = 100) -> list[str]:
        """Requeue or fail jobs whose worker stopped renewing their lease."""

        return await self.db.write(lambda tx: leases.recover_expired_tx(tx, limit, self._step_hook))

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
