"""Queue semantics of the engine, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from conveyor.domain.retry import Backoff
from conveyor.engine.core import Engine
from conveyor.engine.models import (
    Cancelled,
    ClaimRequest,
    Completed,
    Failed,
    JobSpec,
    Progress,
    Released,
)
from conveyor.errors import (
    ConflictError,
    IdempotencyMismatchError,
    InvalidInputError,
    NotFoundError,
)
from conveyor.store.factory import open_database
from conveyor.store.schema import events, jobs


def claim_request(limit: int = 10, **kw: object) -> ClaimRequest:
    return ClaimRequest(
        worker_id=str(kw.get("worker_id", "w1")),
        limit=limit,
        queues=kw.get("queues"),  # type: ignore[arg-type]
        tasks=kw.get("tasks"),  # type: ignore[arg-type]
        lease_s=float(kw.get("lease_s", 30.0)),  # type: ignore[arg-type]
    )


async def event_types(engine: Engine, job_id: str) -> list[str]:
    return [e.type for e in await engine.job_events(job_id)]


async def test_enqueue_returns_queued_job_with_event(engine: Engine) -> None:
    result = await engine.enqueue(JobSpec("t", {"x": 1}, priority="high"), owner="alice")
    job = result.job
    assert result.created
    assert (job.task, job.status, job.priority.label, job.input) == (
        "t",
        "queued",
        "high",
        {"x": 1},
    )
    assert job.attempts == 0 and job.max_attempts == 3
    assert await event_types(engine, job.id) == ["job.queued"]


async def test_idempotency_key_returns_original_and_is_scoped_per_owner(engine: Engine) -> None:
    spec = JobSpec("t", {"x": 1}, idempotency_key="order-12345")
    first = await engine.enqueue(spec, owner="alice")
    again = await engine.enqueue(
        JobSpec("t", {"x": 1}, idempotency_key="order-12345"), owner="alice"
    )
    other = await engine.enqueue(JobSpec("t", {"x": 1}, idempotency_key="order-12345"), owner="bob")
    assert again.job.id == first.job.id and not again.created
    assert other.created and other.job.id != first.job.id and other.job.owner == "bob"
    with pytest.raises(IdempotencyMismatchError):
        await engine.enqueue(JobSpec("t", {"x": 2}, idempotency_key="order-12345"), owner="alice")
    page = await engine.list_jobs(owner="alice")
    assert [j.id for j in page.items] == [first.job.id]


async def test_concurrent_submits_with_one_key_create_one_job(db_url: str) -> None:
    databases = [open_database(db_url) for _ in range(4)]
    try:
        engines = [Engine(d) for d in databases]
        results = await asyncio.gather(
            *(e.enqueue(JobSpec("t", {}, idempotency_key="same-key-1"), owner="a") for e in engines)
        )
        assert len({r.job.id for r in results}) == 1
        assert sum(r.created for r in results) == 1
    finally:
        for d in databases:
            await d.close()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (JobSpec("t", {}, queue="bad queue"), "queue"),
        (JobSpec("t", {}, max_attempts=0), "max_attempts"),
        (JobSpec("t", {}, delay_s=-1), "delay_s"),
        (JobSpec("t", {}, timeout_s=0), "timeout_s"),
        (JobSpec("t", {}, idempotency_key="short"), "idempotency"),
        (JobSpec("t", {}, priority="urgent"), "priority"),
        (JobSpec("", {}), "task"),
        (JobSpec("t", {}, run_at=datetime(2030, 1, 1)), "time zone"),
    ],
)
async def test_bad_specs_are_rejected_before_anything_is_stored(
    engine: Engine, spec: JobSpec, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        await engine.enqueue(spec, owner="alice")
    assert (await engine.list_jobs()).items == []


async def test_bulk_enqueue_is_one_transaction(engine: Engine) -> None:
    results = await engine.enqueue_many([JobSpec("t", {"i": i}) for i in range(50)], owner="a")
    assert [r.job.input for r in results] == [{"i": i} for i in range(50)]
    with pytest.raises(InvalidInputError):
        await engine.enqueue_many(
            [JobSpec("t", {}), JobSpec("t", {}, queue="no spaces!")], owner="a"
        )
    stats = await engine.queue_stats("default")
    assert stats.counts["queued"] == 50


async def test_claim_order_is_priority_then_run_at(engine: Engine) -> None:
    low = (await engine.enqueue(JobSpec("t", priority="low"), owner="a")).job
    medium = (await engine.enqueue(JobSpec("t", priority="medium"), owner="a")).job
    critical = (await engine.enqueue(JobSpec("t", priority="critical"), owner="a")).job
    high = (await engine.enqueue(JobSpec("t", priority="high"), owner="a")).job
    medium2 = (await engine.enqueue(JobSpec("t", priority="medium"), owner="a")).job
    order = []
    for _ in range(5):
        (claimed,) = await engine.claim(claim_request(1))
        order.append(claimed.id)
    assert order == [critical.id, high.id, medium.id, medium2.id, low.id]


async def test_delayed_job_is_not_claimed_before_run_at(engine: Engine) -> None:
    delayed = (await engine.enqueue(JobSpec("t", delay_s=0.4), owner="a")).job
    assert delayed.status == "delayed"
    assert await engine.claim(claim_request()) == []
    await asyncio.sleep(0.5)
    (claimed,) = await engine.claim(claim_request())
    assert claimed.id == delayed.id
    future = datetime.now(UTC) + timedelta(hours=1)
    later = (await engine.enqueue(JobSpec("t", run_at=future), owner="a")).job
    assert later.status == "delayed"
    assert [j.id for j in (await engine.list_jobs(filters_status("delayed"))).items] == [later.id]


def filters_status(status: str):  # type: ignore[no-untyped-def]
    from conveyor.engine.jobs import JobFilters

    return JobFilters(status=status)


async def test_claim_exclusivity_under_concurrency(db_url: str, backend: str) -> None:
    setup = open_database(db_url)
    await Engine(setup).enqueue_many([JobSpec("t", {"i": i}) for i in range(300)], owner="a")
    await setup.close()
    claimers = [open_database(db_url) for _ in range(6)]
    claimed: list[str] = []

    async def claim_all(database: object, name: str) -> None:
        engine = Engine(database)  # type: ignore[arg-type]
        while True:
            got = await engine.claim(claim_request(7, worker_id=name))
            if not got:
                return
            claimed.extend(j.id for j in got)

    try:
        await asyncio.gather(*(claim_all(d, f"w{i}") for i, d in enumerate(claimers)))
    finally:
        for d in claimers:
            await d.close()
    assert len(claimed) == 300
    assert len(set(claimed)) == 300  # zero duplicate claims


async def test_retry_with_backoff_then_failed_after_max_attempts(engine: Engine) -> None:
    job = (
        await engine.enqueue(JobSpec("t", max_attempts=3, backoff=Backoff.fixed(0.2)), owner="a")
    ).job
    for attempt in (1, 2, 3):
        claimed = await wait_claim(engine)
        assert claimed.attempt == attempt
        await engine.settle(
            [Failed(claimed.id, claimed.lease_token, {"type": "E", "message": "x"})]
        )
        current = await engine.get_job(job.id)
        if attempt < 3:
            assert current.status == "delayed"  # waiting out the backoff
            assert await engine.claim(claim_request()) == []
    final = await engine.get_job(job.id)
    assert final.status == "failed" and final.attempts == 3
    assert final.error is not None and final.error["reason"] == "retries exhausted"
    assert await event_types(engine, job.id) == [
        "job.queued",
        "job.started",
        "job.retrying",
        "job.started",
        "job.retrying",
        "job.started",
        "job.failed",
    ]


async def wait_claim(engine: Engine, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await engine.claim(claim_request(1))
        if got:
            return got[0]
        assert asyncio.get_running_loop().time() < deadline, "nothing became claimable"
        await asyncio.sleep(0.05)


async def test_non_retryable_failure_fails_at_once(engine: Engine) -> None:
    job = (await engine.enqueue(JobSpec("t", max_attempts=5), owner="a")).job
    (claimed,) = await engine.claim(claim_request())
    await engine.settle([Failed(claimed.id, claimed.lease_token, {"type": "E"}, retryable=False)])
    final = await engine.get_job(job.id)
    assert final.status == "failed" and final.attempts == 1


async def test_stale_lease_token_cannot_complete(engine: Engine) -> None:
    job = (await engine.enqueue(JobSpec("t"), owner="a")).job
    (first,) = await engine.claim(claim_request(lease_s=0.05))
    await asyncio.sleep(0.15)
    assert await engine.recover_expired() == [job.id]
    (second,) = await engine.claim(claim_request(worker_id="w2"))
    assert second.attempt == 2
    stale = await engine.settle([Completed(first.id, first.lease_token, "zombie")])
    assert stale.lost == {job.id}
    assert (await engine.get_job(job.id)).status == "active"
    ok = await engine.settle([Completed(second.id, second.lease_token, "real")])
    assert ok.lost == frozenset()
    final = await engine.get_job(job.id)
    assert (final.status, final.result, final.attempts) == ("completed", "real", 2)
    # a completed job cannot be completed again, not even with its own token
    again = await engine.settle([Completed(second.id, second.lease_token, "twice")])
    assert again.lost == {job.id}


async def test_progress_is_recorded_only_under_the_lease(engine: Engine) -> None:
    job = (await engine.enqueue(JobSpec("t"), owner="a")).job
    (claimed,) = await engine.claim(claim_request())
    await engine.settle([Progress(claimed.id, claimed.lease_token, 40, "reading")])
    current = await engine.get_job(job.id)
    assert (current.progress, current.progress_message) == (40, "reading")
    refused = await engine.settle([Progress(claimed.id, "not-the-token", 90, "zombie")])
    assert refused.lost == {job.id}
    assert (await engine.get_job(job.id)).progress == 40


async def test_cancel_queued_job_is_immediate(engine: Engine) -> None:
    job = (await engine.enqueue(JobSpec("t"), owner="a")).job
    cancelled = await engine.cancel_job(job.id, owner="a")
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert await engine.claim(claim_request()) == []
    # cancelling again returns it unchanged
    assert (await engine.cancel_job(job.id)).status == "cancelled"
    assert await event_types(engine, job.id) == ["job.queued", "job.cancelled"]


async def test_cancel_active_job_is_cooperative_and_wins_over_a_result(engine: Engine) -> None:
    job = (await engine.enqueue(JobSpec("t"), owner="a")).job
    (claimed,) = await engine.claim(claim_request())
    requested = await engine.cancel_job(job.id)
    assert requested.status == "active" and requested.cancel_requested
    renewal = await engine.renew_leases("w1", [(claimed.id, claimed.lease_token)], load=1)
    assert renewal.cancel_requested == {job.id}
    # the step finished anyway: no result is recorded after a cancel
    await engine.settle([Completed(claimed.id, claimed.lease_token, "late result")])
    final = await engine.get_job(job.id)
    assert (final.status, final.result) == ("cancelled", None)
    assert await event_types(engine, job.id) == [
        "job.queued",
        "job.started",
        "job.cancel_requested",
        "job.cancelled",
    ]


async def test_cancel_finished_job_conflicts_and_others_jobs_are_not_found(engine: Engine) -> None:
    job = (await engine.enqueue(JobSpec("t"), owner="alice")).job
    (claimed,) = await engine.claim(claim_request())
    await engine.settle([Completed(claimed.id, claimed.lease_token, 1)])
    with pytest.raises(ConflictError):
        await engine.cancel_job(job.id, owner="alice")
    with pytest.raises(NotFoundError):
        await engine.cancel_job(job.id, owner="bob")
    with pytest.raises(NotFoundError):
        await engine.get_job(job.id, owner="bob")
    with pytest.raises(NotFoundError):
        await engine.job_events(job.id, owner="bob")
    with pytest.raises(NotFoundError):
        await engine.get_job("not-an-id")


async def test_retry_runs_a_failed_job_again(engine: Engine) -> None:
    job = (await engine.enqueue(JobSpec("t", max_attempts=1), owner="a")).job
    (claimed,) = await engine.claim(claim_request())
    await engine.settle([Failed(claimed.id, claimed.lease_token, {"type": "E"})])
    assert (await engine.get_job(job.id)).status == "failed"
    retried = await engine.retry_job(job.id, owner="a")
    assert (retried.status, retried.attempts, retried.error) == ("queued", 0, None)
    (again,) = await engine.claim(claim_request())
    assert again.id == job.id and again.attempt == 1
    with pytest.raises(ConflictError):
        await engine.retry_job(job.id)  # active jobs cannot be retried


async def test_release_gives_the_job_back_without_counting_the_attempt(engine: Engine) -> None:
    job = (await engine.enqueue(JobSpec("t"), owner="a")).job
    (claimed,) = await engine.claim(claim_request())
    await engine.settle([Released(claimed.id, claimed.lease_token)])
    current = await engine.get_job(job.id)
    assert (current.status, current.attempts) == ("queued", 0)
    (again,) = await engine.claim(claim_request())
    assert again.attempt == 1


async def test_cancelled_outcome_records_cancelled(engine: Engine) -> None:
    job = (await engine.enqueue(JobSpec("t"), owner="a")).job
    (claimed,) = await engine.claim(claim_request())
    await engine.settle([Cancelled(claimed.id, claimed.lease_token)])
    assert (await engine.get_job(job.id)).status == "cancelled"


async def test_pause_stops_claiming_and_resume_restarts_it(engine: Engine) -> None:
    await engine.enqueue(JobSpec("t", queue="emails"), owner="a")
    other = (await engine.enqueue(JobSpec("t", queue="reports"), owner="a")).job
    paused = await engine.pause_queue("emails", actor="admin")
    assert paused.paused
    claimed = await engine.claim(claim_request())
    assert [c.id for c in claimed] == [other.id]
    assert await engine.claim(claim_request()) == []
    resumed = await engine.resume_queue("emails", actor="admin")
    assert not resumed.paused
    assert len(await engine.claim(claim_request())) == 1


async def test_claim_respects_queue_and_task_filters(engine: Engine) -> None:
    await engine.enqueue(JobSpec("a", queue="q1"), owner="o")
    b = (await engine.enqueue(JobSpec("b", queue="q1"), owner="o")).job
    c = (await engine.enqueue(JobSpec("a", queue="q2"), owner="o")).job
    assert [j.id for j in await engine.claim(claim_request(queues=["q1"], tasks=["b"]))] == [b.id]
    assert [j.id for j in await engine.claim(claim_request(queues=["q2"]))] == [c.id]


async def test_queue_statistics(engine: Engine) -> None:
    specs = [JobSpec("t") for _ in range(6)] + [JobSpec("t", delay_s=3600)]
    await engine.enqueue_many(specs, owner="a")
    claimed = await engine.claim(claim_request(4))
    await engine.settle(
        [
            Completed(claimed[0].id, claimed[0].lease_token, 1),
            Completed(claimed[1].id, claimed[1].lease_token, 1),
            Failed(claimed[2].id, claimed[2].lease_token, {"type": "E"}, retryable=False),
        ]
    )
    stats = await engine.queue_stats("default")
    assert stats.counts == {
        "queued": 2,
        "delayed": 1,
        "active": 1,
        "awaiting_input": 0,
        "completed": 2,
        "failed": 1,
        "cancelled": 0,
    }
    assert stats.success_rate == pytest.approx(2 / 3, abs=1e-3)
    assert stats.avg_run_ms is not None and stats.avg_run_ms >= 0
    assert [q.name for q in await engine.list_queues()] == ["default"]
    with pytest.raises(NotFoundError):
        await engine.queue_stats("nope")


async def test_clean_deletes_old_finished_jobs_and_their_events(engine: Engine) -> None:
    done = (await engine.enqueue(JobSpec("t"), owner="a")).job
    keep = (await engine.enqueue(JobSpec("t"), owner="a")).job
    (claimed,) = await engine.claim(claim_request(1))
    await engine.settle([Completed(claimed.id, claimed.lease_token, 1)])
    assert (
        await engine.clean_queue("default", status="completed", older_than_s=3600, actor="x") == 0
    )
    assert await engine.clean_queue("default", status="completed", older_than_s=0, actor="x") == 1
    with pytest.raises(NotFoundError):
        await engine.get_job(done.id)
    assert (await engine.get_job(keep.id)).status == "queued"
    rows = await engine.db.read(
        lambda c: c.execute(select(events.c.id).where(events.c.job_id == done.id)).all()
    )
    assert rows == []
    with pytest.raises(InvalidInputError):
        await engine.clean_queue("default", status="queued", older_than_s=0, actor="x")


async def test_expired_lease_is_recovered_with_the_attempt_counted(engine: Engine) -> None:
    job = (await engine.enqueue(JobSpec("t", max_attempts=2), owner="a")).job
    await engine.claim(claim_request(lease_s=0.05))
    await asyncio.sleep(0.15)
    assert await engine.recover_expired() == [job.id]
    requeued = await engine.get_job(job.id)
    assert (requeued.status, requeued.attempts) == ("queued", 1)
    await engine.claim(claim_request(lease_s=0.05))
    await asyncio.sleep(0.15)
    assert await engine.recover_expired() == [job.id]
    dead = await engine.get_job(job.id)
    assert dead.status == "failed"
    assert dead.error is not None and dead.error["reason"] == "worker lost 2 times"
    types = await event_types(engine, job.id)
    assert types.count("job.lease_expired") == 2 and types[-1] == "job.failed"
    assert await engine.recover_expired() == []  # idempotent


async def test_renewal_extends_only_leases_still_held(engine: Engine) -> None:
    a = (await engine.enqueue(JobSpec("t"), owner="o")).job
    b = (await engine.enqueue(JobSpec("t"), owner="o")).job
    claimed = {c.id: c for c in await engine.claim(claim_request(2, lease_s=0.2))}
    await engine.settle([Completed(b.id, claimed[b.id].lease_token, 1)])
    renewal = await engine.renew_leases(
        "w1", [(a.id, claimed[a.id].lease_token), (b.id, claimed[b.id].lease_token)], load=1
    )
    assert renewal.renewed == {a.id} and renewal.lost == {b.id}
    await asyncio.sleep(0.3)  # longer than the original lease, shorter than the renewed one
    assert await engine.recover_expired() == []


async def test_every_transition_writes_an_event_with_gap_free_ids(engine: Engine) -> None:
    job = (await engine.enqueue(JobSpec("t"), owner="a")).job
    (claimed,) = await engine.claim(claim_request())
    await engine.settle([Progress(claimed.id, claimed.lease_token, 50, None)])
    await engine.settle([Completed(claimed.id, claimed.lease_token, {"ok": True})])
    recorded = await engine.job_events(job.id)
    assert [e.type for e in recorded] == [
        "job.queued",
        "job.started",
        "job.progress",
        "job.completed",
    ]
    ids = await engine.db.read(
        lambda c: list(c.execute(select(events.c.id).order_by(events.c.id)).scalars())
    )
    assert ids == list(range(1, len(ids) + 1))


async def test_list_jobs_paginates_newest_first_with_filters(engine: Engine) -> None:
    created = [(await engine.enqueue(JobSpec("t", {"i": i}), owner="a")).job for i in range(5)]
    await engine.enqueue(JobSpec("other"), owner="a")
    await engine.enqueue(JobSpec("t"), owner="b")
    from conveyor.engine.jobs import JobFilters

    first = await engine.list_jobs(JobFilters(task="t"), owner="a", limit=2)
    second = await engine.list_jobs(
        JobFilters(task="t"), owner="a", limit=2, cursor=first.next_cursor
    )
    third = await engine.list_jobs(
        JobFilters(task="t"), owner="a", limit=2, cursor=second.next_cursor
    )
    got = [j.id for j in first.items + second.items + third.items]
    assert got == [j.id for j in reversed(created)]
    assert third.next_cursor is None
    with pytest.raises(InvalidInputError):
        await engine.list_jobs(limit=101)
    with pytest.raises(InvalidInputError):
        await engine.list_jobs(cursor="garbage")
    with pytest.raises(InvalidInputError):
        await engine.list_jobs(JobFilters(status="sleeping"))


async def test_lease_and_due_times_use_the_database_clock(engine: Engine) -> None:
    job = (await engine.enqueue(JobSpec("t"), owner="a")).job
    await engine.claim(claim_request(lease_s=60))
    row = await engine.db.read(
        lambda c: c.execute(
            select(jobs.c.lease_expires_at, jobs.c.started_at).where(jobs.c.id == job.id)
        ).one()
    )
    lease = (row.lease_expires_at - row.started_at).total_seconds()
    assert 59.9 <= lease <= 60.1
    # moving the lease into the past (as the database clock sees it) makes it recoverable
    await engine.db.write(
        lambda tx: tx.conn.execute(
            update(jobs)
            .where(jobs.c.id == job.id)
            .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    )
    assert await engine.recover_expired() == [job.id]
