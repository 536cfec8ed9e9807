"""Crash recovery and graceful shutdown of real ``conveyor worker`` processes.

Workers run ``tests.apps.ledger``, whose tasks write ``start``/``end`` rows to a SQLite
ledger outside Conveyor, so a test can see which attempt of which job ran in which
process and whether it got to the end.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from conveyor.engine.core import Engine
from conveyor.engine.models import ClaimRequest, JobSpec
from tests.acceptance.conftest import (
    Processes,
    event_types,
    registered_worker,
    wait_for_jobs,
)
from tests.apps.ledger import LedgerRow, init_ledger, read_ledger
from tests.conftest import wait_until

JOBS = 6
SLEEP_S = 1.0


def ledger_file(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    init_ledger(str(path))
    return path


def rows_of(rows: list[LedgerRow], job_id: str, phase: str | None = None) -> list[LedgerRow]:
    return [r for r in rows if r.job_id == job_id and (phase is None or r.phase == phase)]


async def test_kill_9_mid_job_every_job_completes_once(
    db_url: str, engine: Engine, procs: Processes, tmp_path: Path
) -> None:
    ledger = ledger_file(tmp_path)
    worker_a = procs.worker(db_url, name="worker-a", ledger=ledger, concurrency=2)
    worker_b = procs.worker(db_url, name="worker-b", ledger=ledger, concurrency=2)
    id_a = await registered_worker(engine, worker_a)
    id_b = await registered_worker(engine, worker_b)

    job_ids = []
    for i in range(JOBS):
        spec = JobSpec("record", {"sleep_s": SLEEP_S, "key": f"job-{i}"})
        job_ids.append((await engine.enqueue(spec, owner="test")).job.id)

    def a_started() -> bool:
        return any(r.pid == worker_a.pid and r.phase == "start" for r in read_ledger(str(ledger)))

    await wait_until(a_started, timeout=30)
    os.kill(worker_a.pid, signal.SIGKILL)
    assert await worker_a.wait_exit(10) == -signal.SIGKILL

    at_kill = read_ledger(str(ledger))
    killed = {r.job_id for r in at_kill if r.pid == worker_a.pid and r.phase == "start"}
    # premise: A was killed before any of its attempts could reach the end (each sleeps
    # SLEEP_S after its start row, and A was killed right after its first start row)
    assert not [r for r in at_kill if r.pid == worker_a.pid and r.phase == "end"], at_kill
    assert killed <= set(job_ids)

    jobs = await wait_for_jobs(engine, job_ids, timeout=60, procs=procs)
    not_completed = {j.id: (j.status, j.error) for j in jobs.values() if j.status != "completed"}
    assert not not_completed, not_completed
    assert worker_b.alive(), worker_b.diagnostics()

    # no job lost, none made up
    page = await engine.list_jobs(limit=100)
    assert sorted(j.id for j in page.items) == sorted(job_ids)

    rows = read_ledger(str(ledger))
    ends = Counter(r.job_id for r in rows if r.phase == "end")
    assert ends == Counter({job_id: 1 for job_id in job_ids}), rows

    claimed_by_a = set()
    for job_id in job_ids:
        events = await engine.job_events(job_id)
        types = [e.type for e in events]
        started_by = [e.data["worker_id"] for e in events if e.type == "job.started"]
        expired = [e for e in events if e.type == "job.lease_expired"]
        job = jobs[job_id]
        (end,) = rows_of(rows, job_id, "end")
        # the attempt that finished is the one the job records, in a surviving process
        assert end.attempt == job.attempts, (job_id, end, job)
        assert end.pid == worker_b.pid, (job_id, end)
        assert types.count("job.completed") == 1, types
        if id_a in started_by:
            claimed_by_a.add(job_id)
            # A's attempt was recovered after its lease expired and ran again on B
            assert started_by == [id_a, id_b], (job_id, types, started_by)
            assert len(expired) == 1, (job_id, types)
            assert expired[0].data["worker_id"] == id_a, expired[0].data
            assert job.attempts == 2, (job_id, job.attempts, types)
        else:
            assert started_by == [id_b], (job_id, types, started_by)
            assert not expired, (job_id, types)
            assert job.attempts == 1, (job_id, job.attempts, types)

    # the jobs A had started are among those it held when killed: start row, no end row
    assert killed, "worker A started no job before it was killed"
    assert killed <= claimed_by_a
    for job_id in killed:
        (a_start,) = [r for r in rows_of(rows, job_id, "start") if r.pid == worker_a.pid]
        assert a_start.attempt == 1, a_start
        assert not [r for r in rows_of(rows, job_id, "end") if r.pid == worker_a.pid]
        assert jobs[job_id].attempts == 2
        assert "job.lease_expired" in await event_types(engine, job_id)


async def test_sigterm_drains_the_running_job_then_exits_0(
    db_url: str, engine: Engine, procs: Processes, tmp_path: Path
) -> None:
    ledger = ledger_file(tmp_path)
    worker = procs.worker(
        db_url, ledger=ledger, concurrency=1, settings={"CONVEYOR_DRAIN_TIMEOUT_S": "10"}
    )
    worker_id = await registered_worker(engine, worker)
    job_id = (await engine.enqueue(JobSpec("record", {"sleep_s": 1.5}), owner="test")).job.id

    await wait_until(lambda: rows_of(read_ledger(str(ledger)), job_id, "start"), timeout=30)
    worker.send(signal.SIGTERM)
    # the drain timeout bounds the wait, plus a margin for shutting down
    assert await worker.wait_exit(10 + 10) == 0, worker.diagnostics()

    job = await engine.get_job(job_id)
    assert job.status == "completed", (job.status, job.error, worker.diagnostics())
    assert job.attempts == 1
    assert job.result == {"job_id": job_id, "attempt": 1, "pid": worker.pid, "key": ""}
    rows = read_ledger(str(ledger))
    assert [(r.phase, r.pid, r.attempt) for r in rows_of(rows, job_id)] == [
        ("start", worker.pid, 1),
        ("end", worker.pid, 1),
    ]
    types = await event_types(engine, job_id)
    assert "job.released" not in types and types.count("job.completed") == 1, types
    assert worker_id not in [w.id for w in await engine.list_workers()]
    assert "Traceback" not in worker.stderr(), worker.diagnostics()


@pytest.mark.parametrize("task", ["record", "record_sync"])
async def test_second_sigterm_releases_the_running_job_at_once(
    db_url: str, engine: Engine, procs: Processes, tmp_path: Path, task: str
) -> None:
    ledger = ledger_file(tmp_path)
    worker = procs.worker(
        db_url, ledger=ledger, concurrency=1, settings={"CONVEYOR_DRAIN_TIMEOUT_S": "60"}
    )
    worker_id = await registered_worker(engine, worker)
    job_id = (await engine.enqueue(JobSpec(task, {"sleep_s": 10.0}), owner="test")).job.id

    await wait_until(lambda: rows_of(read_ledger(str(ledger)), job_id, "start"), timeout=30)
    worker.send(signal.SIGTERM)

    async def draining() -> bool:
        return any(
            w.id == worker_id and w.status == "draining" for w in await engine.list_workers()
        )

    await wait_until(draining, timeout=10)
    assert worker.alive(), "the first SIGTERM must drain, not stop, while a job runs"
    worker.send(signal.SIGTERM)
    # well before the 10 s job could have finished
    assert await worker.wait_exit(7) == 0, worker.diagnostics()

    job = await engine.get_job(job_id)
    assert (job.status, job.attempts) == ("queued", 0), (job, worker.diagnostics())
    types = await event_types(engine, job_id)
    assert types.count("job.released") == 1 and "job.completed" not in types, types
    assert not rows_of(read_ledger(str(ledger)), job_id, "end")
    assert worker_id not in [w.id for w in await engine.list_workers()]

    # released, not delayed: claimable right away
    claimed = await engine.claim(ClaimRequest("acceptance-probe", 1, None, None, 30.0))
    assert [c.id for c in claimed] == [job_id]
    assert claimed[0].attempt == 1
