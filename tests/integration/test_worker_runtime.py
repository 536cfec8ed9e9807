"""The real Worker, in-process, on SQLite and PostgreSQL.

Every test builds its own :class:`Conveyor` app whose tasks report what they saw into a
:class:`Probe`, runs a :class:`Worker` against the ``db_url`` database, and checks the
outcome in the database (job rows, events, the workers table). Knobs are small
(heartbeats every 0.1-0.2s, polls at most every 0.2s, short grace and drain periods) so
each test takes about a second; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from conveyor.app import Conveyor
from conveyor.domain.ids import new_token
from conveyor.domain.retry import Backoff
from conveyor.engine.core import Engine, EngineSettings
from conveyor.engine.models import ClaimRequest, Job, JobSpec, Outcome, SettleResult
from conveyor.errors import InvalidInputError, JobCancelled, NonRetryableError
from conveyor.runtime import Runtime
from conveyor.settings import Settings
from conveyor.store.database import Database
from conveyor.store.factory import open_database
from conveyor.store.schema import events, jobs
from conveyor.worker.context import Context
from conveyor.worker.runtime import Worker, WorkerSettings
from tests.conftest import wait_until

OWNER = "tester"


# -- helpers ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Probe:
    """What task code saw, shared between the test and the tasks (thread-safe)."""

    gate: threading.Event = dataclasses.field(default_factory=threading.Event)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    marks: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    values: dict[str, Any] = dataclasses.field(default_factory=dict)
    ran: list[Any] = dataclasses.field(default_factory=list)
    running: int = 0
    max_running: int = 0

    def mark(self, name: str, value: Any = True) -> None:
        with self.lock:
            self.marks[name] += 1
            self.values[name] = value

    def has(self, name: str) -> bool:
        with self.lock:
            return self.marks[name] > 0

    def enter(self) -> None:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)

    def leave(self) -> None:
        with self.lock:
            self.running -= 1

    async def wait_gate(self, limit_s: float = 8.0) -> None:
        """Async task code: wait (yielding) until the test opens the gate."""
        deadline = time.monotonic() + limit_s
        while not self.gate.is_set():
            if time.monotonic() > deadline:
                raise AssertionError("the test never opened the gate")
            await asyncio.sleep(0.01)


def worker_settings(**overrides: Any) -> WorkerSettings:
    base = WorkerSettings(
        concurrency=4,
        lease_ttl_s=5.0,
        heartbeat_interval_s=0.1,
        poll_max_s=0.2,
        sweep_interval_s=5.0,
        drain_timeout_s=5.0,
        cancel_grace_s=5.0,
    )
    return dataclasses.replace(base, **overrides)


@contextlib.asynccontextmanager
async def running_worker(
    db: Database,
    open_db: Callable[[], Database],
    app: Conveyor,
    probe: Probe | None = None,
    *,
    engine_class: type[Engine] = Engine,
    **overrides: Any,
) -> AsyncIterator[Worker]:
    """A started Worker over ``db`` with an engine whose catalog is ``app``.

    Engine and worker agree on the lease TTL (the heartbeat renews with the engine's).
    Always stopped (hard) on the way out, then the probe's gate is opened so no task
    thread is left waiting.
    """
    settings = worker_settings(**overrides)
    engine = engine_class(
        db,
        catalog=app,
        settings=EngineSettings(lease_ttl_s=settings.lease_ttl_s, worker_heartbeat_timeout_s=30),
    )
    worker = Worker(engine, app.tasks, settings, open_db=open_db)
    await worker.start()
    try:
        yield worker
    finally:
        try:
            await asyncio.wait_for(worker.stop(graceful=False), 15)
        finally:
            if probe is not None:
                probe.gate.set()


async def enqueue(engine: Engine, task: str, data: dict[str, Any] | None = None, **kw: Any) -> Job:
    return (await engine.enqueue(JobSpec(task, data or {}, **kw), owner=OWNER)).job


async def wait_job(engine: Engine, job_id: str, *statuses: str, timeout: float = 10.0) -> Job:
    async def reached() -> Job | None:
        job = await engine.get_job(job_id)
        return job if job.status in statuses else None

    found: Job = await wait_until(reached, timeout)
    return found


async def event_types(engine: Engine, job_id: str) -> list[str]:
    return [e.type for e in await engine.job_events(job_id, limit=1000)]


async def status_counts(engine: Engine) -> dict[str, int]:
    rows = await engine.db.read(
        lambda c: c.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status)).all()
    )
    return {str(status): int(n) for status, n in rows}


async def event_counts(engine: Engine) -> dict[str, int]:
    rows = await engine.db.read(
        lambda c: c.execute(select(events.c.type, func.count()).group_by(events.c.type)).all()
    )
    return {str(kind): int(n) for kind, n in rows}


async def lease_token_of(engine: Engine, job_id: str) -> str | None:
    token: str | None = await engine.db.read(
        lambda c: c.execute(select(jobs.c.lease_token).where(jobs.c.id == job_id)).scalar()
    )
    return token


async def lease_expiry(database: Database, job_id: str) -> datetime | None:
    expiry: datetime | None = await database.read(
        lambda c: c.execute(select(jobs.c.lease_expires_at).where(jobs.c.id == job_id)).scalar()
    )
    return expiry


async def wait_stopped(worker: Worker, timeout: float = 10.0) -> None:
    await asyncio.wait_for(worker.wait_stopped(), timeout)


# -- 1. results, threads, progress ----------------------------------------------------------


async def test_async_and_sync_tasks_complete_with_results_and_progress(
    db: Database, open_db: Callable[[], Database]
) -> None:
    probe = Probe()
    app = Conveyor("results")

    @app.task
    async def add(ctx: Context, a: int, b: int) -> int:
        probe.mark("add_thread", threading.get_ident())
        ctx.progress(25, "quarter")
        ctx.progress(60.4, "more")  # rounded to 60
        await probe.wait_gate()
        return a + b

    @app.task
    def shout(ctx: Context, text: str) -> dict[str, str]:
        probe.mark("shout_thread", threading.get_ident())
        ctx.progress(10, "starting")
        ctx.progress(80)
        if not probe.gate.wait(8):
            raise AssertionError("the test never opened the gate")
        return {"upper": text.upper(), "thread": threading.current_thread().name}

    loop_thread = threading.get_ident()
    async with running_worker(db, open_db, app, probe) as worker:
        engine = worker.engine
        async_job = await enqueue(engine, "add", {"a": 2, "b": 40})
        sync_job = await enqueue(engine, "shout", {"text": "hello"})

        # progress is recorded while the jobs are still running
        async def progressed() -> bool:
            a = await engine.get_job(async_job.id)
            s = await engine.get_job(sync_job.id)
            return (a.status, a.progress, a.progress_message) == ("active", 60, "more") and (
                s.status,
                s.progress,
                s.progress_message,
            ) == ("active", 80, None)

        await wait_until(progressed)
        probe.gate.set()
        done_async = await wait_job(engine, async_job.id, "completed")
        done_sync = await wait_job(engine, sync_job.id, "completed")

    assert done_async.result == 42 and done_async.attempts == 1 and done_async.error is None
    assert done_sync.result["upper"] == "HELLO"
    assert done_sync.result["thread"].startswith("conveyor-task")
    # async code runs on the event loop; sync code in a worker thread, never on the loop
    assert probe.values["add_thread"] == loop_thread
    assert probe.values["shout_thread"] != loop_thread
    # completion sets progress to 100 and keeps the last message
    assert (done_async.progress, done_async.progress_message) == (100, "more")
    assert (done_sync.progress, done_sync.progress_message) == (100, None)
    for job, expected in (
        (async_job, [{"progress": 25, "message": "quarter"}, {"progress": 60, "message": "more"}]),
        (sync_job, [{"progress": 10, "message": "starting"}, {"progress": 80}]),
    ):
        recorded = await engine.job_events(job.id)
        assert [e.type for e in recorded] == [
            "job.queued",
            "job.started",
            "job.progress",
            "job.progress",
            "job.completed",
        ]
        assert [e.data for e in recorded if e.type == "job.progress"] == expected


# -- 2. failures -----------------------------------------------------------------------------


async def test_failing_task_is_retried_with_backoff_then_fails(
    db: Database, open_db: Callable[[], Database]
) -> None:
    probe = Probe()
    app = Conveyor("retries")

    @app.task(retries=2, backoff=Backoff.fixed(0.3))
    async def flaky(ctx: Context) -> None:
        with probe.lock:
            probe.ran.append(ctx.attempt)
        raise ValueError(f"boom {ctx.attempt}")

    async with running_worker(db, open_db, app, probe) as worker:
        engine = worker.engine
        job = await enqueue(engine, "flaky")
        final = await wait_job(engine, job.id, "failed")

    assert probe.ran == [1, 2, 3]
    assert final.attempts == 3 and final.max_attempts == 3 and final.result is None
    assert final.error is not None
    assert (final.error["type"], final.error["message"], final.error["reason"]) == (
        "ValueError",
        "boom 3",
        "retries exhausted",
    )
    assert "Traceback" in final.error["traceback"]
    recorded = await engine.job_events(job.id)
    assert [e.type for e in recorded] == [
        "job.queued",
        "job.started",
        "job.retrying",
        "job.started",
        "job.retrying",
        "job.started",
        "job.failed",
    ]
    retrying = [e for e in recorded if e.type == "job.retrying"]
    assert [e.data["delay_s"] for e in retrying] == [0.3, 0.3]
    # the next attempt did not start before the backoff (database clock, ms precision)
    starts = [e for e in recorded if e.type == "job.started"]
    for retry, start in zip(retrying, starts[1:], strict=True):
        assert (start.created_at - retry.created_at).total_seconds() >= 0.25


async def test_non_retryable_error_fails_at_once(
    db: Database, open_db: Callable[[], Database]
) -> None:
    probe = Probe()
    app = Conveyor("nonretryable")

    @app.task(retries=5)
    def refuse(ctx: Context) -> None:
        with probe.lock:
            probe.ran.append(ctx.attempt)
        raise NonRetryableError("the order does not exist")

    async with running_worker(db, open_db, app, probe) as worker:
        engine = worker.engine
        job = await enqueue(engine, "refuse")
        final = await wait_job(engine, job.id, "failed")
        await asyncio.sleep(0.3)  # a retry, if one were scheduled, would be claimed by now

    assert probe.ran == [1]
    assert (final.attempts, final.max_attempts) == (1, 6)
    assert final.error is not None
    assert final.error["type"] == "NonRetryableError"
    assert final.error["message"] == "the order does not exist"
    assert final.error["reason"] == "not retryable"
    assert "job.retrying" not in await event_types(engine, job.id)
    assert (await engine.get_job(job.id)).status == "failed"


async def test_task_timeout_is_a_failure_of_type_timeout(
    db: Database, open_db: Callable[[], Database]
) -> None:
    probe = Probe()
    app = Conveyor("timeouts")

    @app.task(timeout=0.2, retries=1, backoff=Backoff.fixed(0.05))
    async def slow_async(ctx: Context) -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            probe.mark("async_interrupted")
            raise
        return "too late"

    @app.task(timeout=0.2, retries=0)
    def slow_sync(ctx: Context) -> str:
        probe.gate.wait(5)
        probe.mark("sync_returned")
        return "too late"

    async with running_worker(db, open_db, app, probe) as worker:
        engine = worker.engine
        a = await enqueue(engine, "slow_async")
        s = await enqueue(engine, "slow_sync")
        failed_async = await wait_job(engine, a.id, "failed")
        failed_sync = await wait_job(engine, s.id, "failed")
        probe.gate.set()
        await wait_until(lambda: probe.has("sync_returned"))
        await asyncio.sleep(0.2)  # the abandoned thread's return value must not be recorded

    for failed, attempts in ((failed_async, 2), (failed_sync, 1)):
        assert failed.attempts == attempts and failed.result is None
        assert failed.error is not None
        assert failed.error["type"] == "Timeout"
        assert "0.2s timeout" in failed.error["message"]
        assert failed.error["reason"] == "retries exhausted"
    assert probe.marks["async_interrupted"] == 2  # the coroutine was stopped, both times
    assert (await engine.get_job(s.id)).status == "failed"
    types = await event_types(engine, a.id)
    assert types.count("job.retrying") == 1 and types[-1] == "job.failed"


async def test_a_timeout_error_raised_by_task_code_is_an_ordinary_failure(
    db: Database, open_db: Callable[[], Database]
) -> None:
    """Only the attempt's own timeout is a "Timeout"; a task without one that raises
    TimeoutError (an upstream call timing out) fails like any other exception."""
    app = Conveyor("inner-timeout")

    @app.task(retries=0)
    async def call_upstream(ctx: Context) -> None:
        raise TimeoutError("upstream took too long")

    async with running_worker(db, open_db, app) as worker:
        job = await enqueue(worker.engine, "call_upstream")
        final = await wait_job(worker.engine, job.id, "failed")

    assert final.timeout_s is None
    assert final.error is not None
    assert (final.error["type"], final.error["message"]) == (
        "TimeoutError",
        "upstream took too long",
    )


async def test_input_violating_the_signature_fails_without_retry(
    db: Database, open_db: Callable[[], Database]
) -> None:
    probe = Probe()
    app = Conveyor("inputs")

    @app.task(retries=3)
    async def add(a: int, b: int) -> int:
        probe.mark("ran")
        return a + b

    # an engine that knows the app validates at enqueue ...
    with pytest.raises(InvalidInputError):
        await Engine(db, catalog=app).enqueue(JobSpec("add", {"a": "x"}), owner=OWNER)
    # ... one without a catalog stores whatever it gets: the worker must reject it
    unvalidated = Engine(db, catalog=None)
    async with running_worker(db, open_db, app, probe) as worker:
        bad = await enqueue(unvalidated, "add", {"a": "not a number"}, max_attempts=4)
        good = await enqueue(unvalidated, "add", {"a": 1, "b": 2})
        final = await wait_job(worker.engine, bad.id, "failed")
        assert (await wait_job(worker.engine, good.id, "completed")).result == 3

    assert probe.marks["ran"] == 1  # only the good job reached the function
    assert (final.attempts, final.max_attempts) == (1, 4)
    assert final.error is not None
    assert final.error["type"] == "InvalidInputError"
    assert final.error["reason"] == "not retryable"
    assert sorted(d["loc"] for d in final.error["details"]) == [["a"], ["b"]]
    assert "job.retrying" not in await event_types(worker.engine, bad.id)


# -- 3. cancel -------------------------------------------------------------------------------


async def test_cancel_of_a_queued_job_means_it_never_runs(
    db: Database, open_db: Callable[[], Database]
) -> None:
    probe = Probe()
    app = Conveyor("cancel-queued")

    @app.task
    async def hold(ctx: Context) -> str:
        probe.mark("hold_started")
        await probe.wait_gate()
        return "held"

    @app.task
    async def record(ctx: Context, name: str) -> str:
        with probe.lock:
            probe.ran.append(name)
        return name

    async with running_worker(db, open_db, app, probe, concurrency=1) as worker:
        engine = worker.engine
        blocker = await enqueue(engine, "hold")
        await wait_until(lambda: probe.has("hold_started"))
        victim = await enqueue(engine, "record", {"name": "victim"})
        assert (await engine.get_job(victim.id)).status == "queued"  # the one slot is busy
        cancelled = await engine.cancel_job(victim.id, owner=OWNER)
        assert cancelled.status == "cancelled"
        probe.gate.set()
        # enqueued after the victim: once it ran, the victim would have been claimed first
        later = await enqueue(engine, "record", {"name": "later"})
        await wait_job(engine, blocker.id, "completed")
        await wait_job(engine, later.id, "completed")

    final = await engine.get_job(victim.id)
    assert (final.status, final.attempts, final.started_at, final.result) == (
        "cancelled",
        0,
        None,
        None,
    )
    assert probe.ran == ["later"]
    assert await event_types(engine, victim.id) == ["job.queued", "job.cancelled"]


async def test_cancel_of_an_active_async_job_is_cooperative(
    db: Database, open_db: Callable[[], Database]
) -> None:
    probe = Probe()
    app = Conveyor("cancel-coop")

    @app.task
    async def polite(ctx: Context) -> str:
        probe.mark("started")
        deadline = time.monotonic() + 8
        try:
            while not ctx.cancelled:
                assert time.monotonic() < deadline, "never saw the cancel"
                await asyncio.sleep(0.01)
            probe.mark("saw_cancel")
            # winding down takes a moment (longer than a heartbeat, well within the grace)
            await asyncio.sleep(0.4)
        except asyncio.CancelledError:
            probe.mark("hard_stopped")
            raise
        probe.mark("wound_down")
        return "partial work"  # a result after a cancel must not be recorded

    # a long grace: the task must stop on its own, not be killed
    async with running_worker(db, open_db, app, probe, cancel_grace_s=10.0) as worker:
        engine = worker.engine
        job = await enqueue(engine, "polite")
        await wait_until(lambda: probe.has("started"))
        requested = await engine.cancel_job(job.id, owner=OWNER)
        assert (requested.status, requested.cancel_requested) == ("active", True)
        final = await wait_job(engine, job.id, "cancelled", timeout=5)

    assert probe.has("saw_cancel")
    assert not probe.has("hard_stopped"), "killed within the grace period"
    assert probe.has("wound_down")
    assert (final.result, final.attempts, final.error) == (None, 1, None)
    assert await event_types(engine, job.id) == [
        "job.queued",
        "job.started",
        "job.cancel_requested",
        "job.cancelled",
    ]


async def test_cancel_of_an_active_sync_job_from_another_connection(
    db: Database, db_url: str, open_db: Callable[[], Database]
) -> None:
    probe = Probe()
    app = Conveyor("cancel-sync")

    @app.task
    def polite_sync(ctx: Context) -> str:
        probe.mark("started")
        deadline = time.monotonic() + 8
        try:
            while time.monotonic() < deadline:
                ctx.raise_if_cancelled()
                time.sleep(0.01)
        except JobCancelled:
            time.sleep(0.4)  # cleaning up: longer than a heartbeat, well within the grace
            probe.mark("raised_cancelled")
            raise
        return "never cancelled"

    other_db = open_database(db_url)  # e.g. the API server's process
    try:
        async with running_worker(db, open_db, app, probe, cancel_grace_s=10.0) as worker:
            engine = worker.engine
            job = await enqueue(engine, "polite_sync")
            await wait_until(lambda: probe.has("started"))
            await Engine(other_db).cancel_job(job.id)
            final = await wait_job(engine, job.id, "cancelled", timeout=5)
            # cooperative: the attempt ends when the task ends, not while it cleans up
            finished_first = probe.has("raised_cancelled")
    finally:
        await other_db.close()

    assert finished_first, "the job was settled as cancelled while the task still ran"
    assert (final.result, final.attempts, final.error) == (None, 1, None)
    assert await event_types(engine, job.id) == [
        "job.queued",
        "job.started",
        "job.cancel_requested",
        "job.cancelled",
    ]


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_cancel_hard_stops_a_task_ignoring_it_after_the_grace(
    db: Database, open_db: Callable[[], Database], flavour: str
) -> None:
    probe = Probe()
    app = Conveyor("cancel-hard")

    @app.task
    async def stubborn(ctx: Context) -> str:
        probe.mark("started")
        deadline = time.monotonic() + 8
        try:
            while time.monotonic() < deadline:
                if ctx.cancelled:
                    probe.mark("saw_cancel")  # ... and carries on regardless
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            probe.mark("killed", ctx.cancelled)
            raise
        probe.mark("returned")
        return "late result"

    @app.task
    def stubborn_sync(ctx: Context) -> str:
        probe.mark("started")
        while not probe.gate.wait(0.01):
            if ctx.cancelled:
                probe.mark("saw_cancel")  # ... and carries on regardless
        probe.mark("returned")
        return "late result"

    task = "stubborn" if flavour == "async" else "stubborn_sync"
    grace = 0.5
    async with running_worker(db, open_db, app, probe, cancel_grace_s=grace) as worker:
        engine = worker.engine
        job = await enqueue(engine, task)
        await wait_until(lambda: probe.has("started"))
        await engine.cancel_job(job.id, owner=OWNER)
        final = await wait_job(engine, job.id, "cancelled", timeout=5)
        if flavour == "sync":
            # the abandoned thread finishes later: its result must not be recorded
            probe.gate.set()
            await wait_until(lambda: probe.has("returned"))
            await asyncio.sleep(0.2)
            final = await engine.get_job(job.id)

    # the task saw the cancel during the grace period and went on: then it was cut off
    assert probe.has("saw_cancel")
    if flavour == "async":
        assert probe.values.get("killed") is True and not probe.has("returned")
    assert (final.status, final.result, final.attempts) == ("cancelled", None, 1)
    assert final.error is None
    recorded = await engine.job_events(job.id)
    assert [e.type for e in recorded] == [
        "job.queued",
        "job.started",
        "job.cancel_requested",
        "job.cancelled",
    ]
    # the hard stop waited for the grace period (database clock; a lower bound only)
    requested_at, cancelled_at = recorded[2].created_at, recorded[3].created_at
    assert (cancelled_at - requested_at).total_seconds() >= 0.8 * grace


# -- 4. graceful drain ----------------------------------------------------------------------


async def test_drain_lets_the_running_job_finish_claims_nothing_and_deregisters(
    db: Database, open_db: Callable[[], Database]
) -> None:
    probe = Probe()
    app = Conveyor("drain")

    @app.task
    async def hold(ctx: Context, name: str) -> str:
        with probe.lock:
            probe.ran.append(name)
        await probe.wait_gate()
        return name

    async with running_worker(db, open_db, app, probe, concurrency=2) as worker:
        engine = worker.engine
        running = await enqueue(engine, "hold", {"name": "running"})
        await wait_until(lambda: probe.ran == ["running"])
        worker.request_stop()

        async def draining() -> bool:
            return (await engine.get_worker(worker.worker_id)).status == "draining"

        await wait_until(draining)
        late = await enqueue(engine, "hold", {"name": "late"})  # wakes the worker ...
        await asyncio.sleep(0.5)  # ... and more than two poll periods pass
        assert (await engine.get_job(late.id)).status == "queued"
        assert (await engine.get_job(running.id)).status == "active"
        probe.gate.set()
        await wait_stopped(worker)

        assert await engine.list_workers() == []
        done = await engine.get_job(running.id)
        assert (done.status, done.result, done.attempts) == ("completed", "running", 1)
        left = await engine.get_job(late.id)
        assert (left.status, left.attempts, left.started_at) == ("queued", 0, None)
        assert probe.ran == ["running"]


@pytest.mark.parametrize("how", ["second_stop", "drain_timeout"])
async def test_drain_releases_the_running_job_without_counting_the_attempt(
    db: Database, open_db: Callable[[], Database], how: str
) -> None:
    probe = Probe()
    app = Conveyor("drain-release")

    @app.task
    async def hold(ctx: Context) -> str:
        with probe.lock:
            probe.ran.append(ctx.attempt)
        try:
            await probe.wait_gate()
        except asyncio.CancelledError:
            probe.mark("interrupted")
            raise
        return "finished"

    drain_timeout = 0.3 if how == "drain_timeout" else 10.0
    async with running_worker(db, open_db, app, probe, drain_timeout_s=drain_timeout) as worker:
        engine = worker.engine
        job = await enqueue(engine, "hold")
        await wait_until(lambda: probe.ran == [1])
        worker.request_stop()
        if how == "second_stop":
            await asyncio.sleep(0.1)
            worker.request_stop()
        await wait_stopped(worker, timeout=5)

        assert probe.has("interrupted")
        released = await engine.get_job(job.id)
        assert (released.status, released.attempts, released.result) == ("queued", 0, None)
        assert await engine.list_workers() == []
        types = await event_types(engine, job.id)
        assert types == ["job.queued", "job.started", "job.released"]

    # the job runs again elsewhere as attempt 1: the released attempt did not count
    probe.gate.set()
    async with running_worker(db, open_db, app) as again:
        done = await wait_job(again.engine, job.id, "completed")
    assert (done.attempts, done.result) == (1, "finished")
    assert probe.ran == [1, 1]


# -- 5. the workers table -------------------------------------------------------------------


async def test_workers_table_shows_the_worker_its_tasks_and_load(db_url: str) -> None:
    probe = Probe()
    app = Conveyor("workers-table")

    @app.task
    async def hold(ctx: Context) -> None:
        probe.mark("started")
        await probe.wait_gate()

    @app.task
    def other(ctx: Context) -> None:
        return None

    runtime = Runtime(
        app,
        Settings(
            database_url=db_url,
            lease_ttl_s=5.0,
            heartbeat_interval_s=0.1,
            poll_max_s=0.2,
            sweep_interval_s=5.0,
            drain_timeout_s=5.0,
        ),
    )
    engine = await runtime.open(upgrade=False)
    try:
        worker = runtime.worker(concurrency=3, kind="embedded", worker_id="test-worker-1")
        await worker.start()
        try:
            (info,) = await engine.list_workers()
            assert (info.id, info.kind, info.pid, info.queues) == (
                "test-worker-1",
                "embedded",
                os.getpid(),
                None,
            )
            assert info.capabilities == ["hold", "other"]
            assert info.max_concurrency == 3

            first = await enqueue(engine, "hold")
            second = await enqueue(engine, "hold")
            await wait_until(lambda: probe.marks["started"] == 2)

            async def load_is(n: int, status: str) -> bool:
                (seen,) = await engine.list_workers()
                return seen.current_load == n and seen.status == status

            await wait_until(lambda: load_is(2, "active"), timeout=5)
            probe.gate.set()
            await wait_job(engine, first.id, "completed")
            await wait_job(engine, second.id, "completed")
            await wait_until(lambda: load_is(0, "idle"), timeout=5)
        finally:
            probe.gate.set()
            await asyncio.wait_for(worker.stop(), 15)
        assert await engine.list_workers() == []
    finally:
        await runtime.close()


# -- 6. lease renewal -----------------------------------------------------------------------


class Rescuer(threading.Thread):
    """Another process's recovery sweep, on its own thread, loop and connection.

    It keeps calling ``recover_expired`` (which would requeue a job whose lease ran out)
    and, while ``watch`` says so, samples the watched job's lease expiry.
    """

    def __init__(self, url: str, watch: Callable[[], str | None]) -> None:
        super().__init__(name="rescuer", daemon=True)
        self._url = url
        self._watch = watch
        self._halt = threading.Event()
        self.recovered: list[str] = []
        self.sweeps = 0
        self.samples: list[datetime] = []
        self.error: BaseException | None = None

    def halt(self) -> None:
        self._halt.set()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        database = open_database(self._url)
        engine = Engine(database)
        try:
            while not self._halt.is_set():
                self.recovered += await engine.recover_expired()
                self.sweeps += 1
                watched = self._watch()
                if watched is not None:
                    expiry = await lease_expiry(database, watched)
                    if expiry is not None and self._watch() is not None:
                        self.samples.append(expiry)
                await asyncio.sleep(0.05)
        except BaseException as exc:
            self.error = exc
        finally:
            await database.close()


async def test_leases_are_renewed_even_while_the_event_loop_is_blocked(db_url: str) -> None:
    ttl = 1.0
    probe = Probe()
    app = Conveyor("leases")

    @app.task
    async def slow(ctx: Context) -> str:
        await asyncio.sleep(3 * ttl)
        return "slow done"

    @app.task
    async def spin(ctx: Context) -> str:
        probe.mark("spinning", ctx.job_id)
        end = time.monotonic() + 2 * ttl
        while time.monotonic() < end:  # CPU-bound, never yields to the event loop
            pass
        probe.mark("spun")
        await asyncio.sleep(0)  # let the worker's loop run before the attempt ends
        return "spin done"

    def watched() -> str | None:
        if probe.has("spinning") and not probe.has("spun"):
            job_id: str = probe.values["spinning"]
            return job_id
        return None

    runtime = Runtime(
        app,
        Settings(
            database_url=db_url,
            lease_ttl_s=ttl,
            heartbeat_interval_s=0.2,
            sweep_interval_s=0.2,  # the worker's own recovery sweep runs too
            poll_max_s=0.2,
            drain_timeout_s=5.0,
        ),
    )
    engine = await runtime.open(upgrade=False)
    rescuer = Rescuer(db_url, watched)
    rescuer.start()
    try:
        worker = runtime.worker(concurrency=2)
        await worker.start()
        try:
            slow_job = await enqueue(engine, "slow")
            spin_job = await enqueue(engine, "spin")
            done_slow = await wait_job(engine, slow_job.id, "completed", timeout=15)
            done_spin = await wait_job(engine, spin_job.id, "completed", timeout=15)
        finally:
            await asyncio.wait_for(worker.stop(graceful=False), 15)
    finally:
        rescuer.halt()
        await asyncio.to_thread(rescuer.join, 10)
        await runtime.close()

    assert rescuer.error is None, rescuer.error
    assert rescuer.sweeps > 5
    assert rescuer.recovered == []  # no false rescue
    assert worker.fenced == 0
    assert (done_slow.attempts, done_slow.result) == (1, "slow done")
    assert (done_spin.attempts, done_spin.result) == (1, "spin done")
    for job in (slow_job, spin_job):
        assert await event_types(engine, job.id) == [
            "job.queued",
            "job.started",
            "job.completed",
        ]
    # the heartbeat thread kept renewing while the spin held the event loop
    assert len(set(rescuer.samples)) >= 2, rescuer.samples


# -- 7. self-fencing ------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_a_lost_lease_stops_the_attempt_and_writes_nothing(
    db: Database,
    open_db: Callable[[], Database],
    caplog: pytest.LogCaptureFixture,
    flavour: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="conveyor.worker")
    probe = Probe()
    app = Conveyor("fencing")

    @app.task
    async def long_async(ctx: Context) -> str:
        probe.mark("started")
        try:
            await probe.wait_gate()
        except asyncio.CancelledError:
            probe.mark("stopped")
            raise
        ctx.progress(90, "zombie")
        probe.mark("returned")
        return "zombie result"

    @app.task
    def long_sync(ctx: Context) -> str:
        probe.mark("started")
        probe.gate.wait(8)
        ctx.progress(90, "zombie")
        probe.mark("returned")
        return "zombie result"

    task = "long_async" if flavour == "async" else "long_sync"
    async with running_worker(db, open_db, app, probe, heartbeat_interval_s=0.1) as worker:
        engine = worker.engine
        job = await enqueue(engine, task)
        await wait_until(lambda: probe.has("started"))
        original = await lease_token_of(engine, job.id)
        assert original is not None
        # another worker now holds the lease (as after a recovery and a new claim)
        foreign = new_token()
        await engine.db.write(
            lambda tx: tx.conn.execute(
                update(jobs)
                .where(jobs.c.id == job.id)
                .values(
                    lease_token=foreign,
                    lease_expires_at=datetime.now(UTC) + timedelta(hours=1),
                    worker_id="someone-else",
                )
            )
        )
        await wait_until(lambda: worker.fenced == 1, timeout=5)
        if flavour == "async":
            assert probe.has("stopped")  # the coroutine was interrupted
        # let the task run to its end: it must not reach the database
        probe.gate.set()
        if flavour == "sync":
            await wait_until(lambda: probe.has("returned"))
        await asyncio.sleep(0.3)
        row = await engine.get_job(job.id)
        token = await lease_token_of(engine, job.id)

    assert token == foreign
    assert (row.status, row.result, row.worker_id, row.attempts) == (
        "active",
        None,
        "someone-else",
        1,
    )
    assert (row.progress, row.progress_message, row.error) == (0, None, None)
    assert await event_types(engine, job.id) == ["job.queued", "job.started"]
    # the fenced attempt did not even try to write (no refused outcome)
    refused = [
        r for r in caplog.records if "refused" in r.getMessage() and job.id in r.getMessage()
    ]
    assert refused == []
    if flavour == "async":
        assert not probe.has("returned")


# -- 8. concurrency -------------------------------------------------------------------------


async def test_concurrency_limit_is_never_exceeded(
    db: Database, open_db: Callable[[], Database]
) -> None:
    probe = Probe()
    app = Conveyor("concurrency")

    @app.task
    async def busy_async(i: int) -> int:
        probe.enter()
        try:
            await asyncio.sleep(0.03)
        finally:
            probe.leave()
        return i

    @app.task
    def busy_sync(i: int) -> int:
        probe.enter()
        try:
            time.sleep(0.03)
        finally:
            probe.leave()
        return i

    async with running_worker(db, open_db, app, probe, concurrency=3) as worker:
        engine = worker.engine
        await engine.enqueue_many(
            [JobSpec("busy_async" if i % 2 else "busy_sync", {"i": i}) for i in range(30)],
            owner=OWNER,
        )
        await wait_until(lambda: _all_completed(engine, 30), timeout=15)

    assert probe.max_running == 3  # reached, never exceeded
    assert probe.running == 0


async def _all_completed(engine: Engine, n: int) -> bool:
    return await status_counts(engine) == {"completed": n}


async def test_many_short_jobs_all_complete_exactly_once(
    db: Database, open_db: Callable[[], Database]
) -> None:
    n = 300
    probe = Probe()
    app = Conveyor("many")

    @app.task
    async def double(i: int) -> int:
        with probe.lock:
            probe.ran.append(i)
        return 2 * i

    @app.task
    def double_sync(i: int) -> int:
        with probe.lock:
            probe.ran.append(i)
        return 2 * i

    def spec(i: int) -> JobSpec:
        return JobSpec("double" if i % 3 else "double_sync", {"i": i})

    engine = Engine(db, catalog=app)
    await engine.enqueue_many([spec(i) for i in range(n // 2)], owner=OWNER)
    async with running_worker(db, open_db, app, probe, concurrency=8) as worker:
        await worker.engine.enqueue_many([spec(i) for i in range(n // 2, n)], owner=OWNER)
        await wait_until(lambda: _all_completed(engine, n), timeout=20)

    assert sorted(probe.ran) == list(range(n))  # every job ran, none twice
    rows = await db.read(
        lambda c: c.execute(select(jobs.c.input, jobs.c.result, jobs.c.attempts)).all()
    )
    assert len(rows) == n
    assert all(row.result == 2 * row.input["i"] and row.attempts == 1 for row in rows)
    counts = await event_counts(engine)
    assert (counts["job.started"], counts["job.completed"]) == (n, n)
    assert "job.released" not in counts and "job.retrying" not in counts


# -- 9. wake-ups ----------------------------------------------------------------------------

#: an idle worker polls at most every 15-45s with these: only a wake-up starts a job sooner
LONG_POLLS: dict[str, Any] = {"poll_min_s": 30.0, "poll_max_s": 30.0, "sweep_interval_s": 30.0}


async def test_enqueue_wakes_the_worker_without_waiting_for_a_poll(
    db: Database, open_db: Callable[[], Database]
) -> None:
    app = Conveyor("wakeup")

    @app.task
    async def ping(n: int) -> int:
        return n

    async with running_worker(db, open_db, app, **LONG_POLLS) as worker:
        engine = worker.engine
        await asyncio.sleep(0.3)  # the first (empty) claim is done: the worker is idle
        first = await enqueue(engine, "ping", {"n": 1})
        assert (await wait_job(engine, first.id, "completed", timeout=5)).result == 1
        await asyncio.sleep(0.2)  # idle again, its next poll far away
        second = await enqueue(engine, "ping", {"n": 2})
        assert (await wait_job(engine, second.id, "completed", timeout=5)).result == 2


class EnqueueDuringEmptyClaim(Engine):
    """Commits a job right after its first empty claim, before the worker sees that
    result: a submission racing the worker's claim (on PostgreSQL the claim awaits the
    database, so another request of the same process can commit meanwhile)."""

    armed = True  # per instance: cleared once the job is injected
    injected: Job | None = None

    async def settle(
        self, outcomes: Sequence[Outcome], claim: ClaimRequest | None = None
    ) -> SettleResult:
        result = await super().settle(outcomes, claim)
        if self.armed and claim is not None and not result.claimed:
            self.armed = False
            self.injected = await enqueue(self, "ping", {"n": 3})
        return result


async def test_a_wakeup_arriving_during_an_empty_claim_is_not_lost(
    db: Database, backend: str, open_db: Callable[[], Database]
) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite writes run inline on the loop: nothing can commit mid-claim")
    app = Conveyor("wakeup-race")

    @app.task
    async def ping(n: int) -> int:
        return n

    # only the in-process wake-up: a LISTEN notification may arrive late enough to
    # cover for a lost one, or not (e.g. before the listener is connected)
    async with running_worker(
        db, open_db, app, engine_class=EnqueueDuringEmptyClaim, listen=False, **LONG_POLLS
    ) as worker:
        engine = worker.engine
        assert isinstance(engine, EnqueueDuringEmptyClaim)
        await wait_until(lambda: engine.injected is not None, timeout=5)
        assert engine.injected is not None
        done = await wait_job(engine, engine.injected.id, "completed", timeout=5)
    assert done.result == 3


async def test_enqueue_from_another_process_wakes_a_postgres_worker(
    db: Database, db_url: str, backend: str, open_db: Callable[[], Database]
) -> None:
    if backend != "postgresql":
        pytest.skip("only PostgreSQL tells other processes (LISTEN/NOTIFY)")
    app = Conveyor("wakeup-remote")

    @app.task
    async def ping(n: int) -> int:
        return n

    other_db = open_database(db_url)
    try:
        async with running_worker(db, open_db, app, **LONG_POLLS) as worker:
            listener: Any = worker._listener
            assert listener is not None
            await asyncio.wait_for(listener.connected.wait(), 5)
            await asyncio.sleep(0.2)  # the first (empty) poll is done; the next is far away
            job = await enqueue(Engine(other_db), "ping", {"n": 7})
            done = await wait_job(worker.engine, job.id, "completed", timeout=5)
    finally:
        await other_db.close()
    assert done.result == 7
