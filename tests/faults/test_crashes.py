"""R1-R3: worker processes crash at chosen points; nothing is lost or done twice.

R1  SIGKILL a worker mid-step (seeded delays, plus the ``mid_step`` fault point).
R2  crash in the at-least-once window (``after_effect_before_checkpoint``).
R3  crash inside the claim transaction (``after_claim``) and inside the completion
    transaction (``in_complete_txn``).
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass

import pytest

from conveyor.engine.core import Engine
from conveyor.engine.models import ClaimedJob, ClaimRequest, JobSpec, Released
from tests.faults import oracle
from tests.faults.harness import (
    LEASE_TTL_S,
    RECOVERY_BOUND_S,
    SWEEP_MAX_S,
    SWEEP_SLACK_S,
    ClientLog,
    Fleet,
    backend_of,
    distribution,
    event_list,
    inprocess_worker,
    lease_view,
    leases_of,
    report,
    rng_for,
    sync_engine,
    wait_exit_at,
    wait_for,
    wait_terminal,
)
from tests.faults.ledger import read_ledger

#: database timestamps are compared with this much rounding slack (SQLite: milliseconds)
DB_SLACK_S = 0.005
#: a recovery must come after the lease expired and at most this long after it
LATEST_SWEEP_S = SWEEP_MAX_S + SWEEP_SLACK_S

#: server/worker start-ups dominate; on a loaded 2-core machine they take many times longer
pytestmark = pytest.mark.timeout(240)


@dataclass(frozen=True)
class Kill:
    pid: int
    worker_id: str
    at: float  # time.monotonic() of the kill (or of the observed death for a fault kill)
    wall: float  # time.time() of the same moment (to compare with database timestamps)
    how: str
    leases: dict[str, float]  # the dead worker's leases right after: expiry by job


# -- R1 -----------------------------------------------------------------------------------

R1_BATCH = 17  # jobs submitted in each round, once its victim is up: 51 in all
R1_STEP_S = 0.5
R1_KILLS = 3  # two SIGKILLs at seeded delays, then one mid_step:kill fault point


async def test_r1_sigkill_worker_mid_step(
    db_url: str, fengine: Engine, fleet: Fleet, client_log: ClientLog
) -> None:
    backend = backend_of(db_url)
    rng = rng_for("R1", backend)
    victim = fleet.spawn("victim-1")
    await fleet.ready(fengine, victim)
    probe = sync_engine(db_url)
    # the other worker runs in-process (a real Worker; it never dies)
    async with inprocess_worker(fengine, fleet.ledger):
        specs = [
            JobSpec("effect_step", {"step": "work", "sleep_s": R1_STEP_S}) for _ in range(R1_BATCH)
        ]

        # each round: a fresh batch, then the victim dies mid-step (the backlog never runs
        # dry while a replacement starts up, however slow the machine)
        kills: list[Kill] = []
        ids: list[str] = []
        for round_ in range(R1_KILLS):
            pid = victim.pid
            ids += await client_log.submit_many(fengine, specs)

            def victim_busy(pid: int = pid) -> bool:
                return any(s.pid == pid for s in read_ledger(fleet.ledger).starts())

            if round_ < R1_KILLS - 1:
                await wait_for(
                    victim_busy, timeout=30, what=f"{victim.name} runs a step", fleet=fleet
                )
                await asyncio.sleep(rng.uniform(0.05, 0.8 * R1_STEP_S))
                victim.send(signal.SIGKILL)
                at, wall = time.monotonic(), time.time()
                assert await victim.wait_exit(10) == -signal.SIGKILL
                worker_id = fleet.worker_ids[pid]
                leases = leases_of(probe, worker_id)
                kills.append(Kill(pid, worker_id, at, wall, "sigkill", leases))
            else:  # this incarnation was started with mid_step:kill@N
                code, at = await wait_exit_at(victim, 30)
                wall = time.time() - (time.monotonic() - at)
                assert code == -signal.SIGKILL, victim.diagnostics()
                assert "fault point mid_step: kill" in victim.stderr(), victim.diagnostics()
                worker_id = fleet.worker_ids[pid]
                leases = leases_of(probe, worker_id)
                kills.append(Kill(pid, worker_id, at, wall, "mid_step:kill", leases))
            if round_ < R1_KILLS - 1:
                faults = None
                if round_ + 1 == R1_KILLS - 1:
                    faults = f"mid_step:kill@{rng.randint(2, 4)}"
                victim = fleet.spawn(f"victim-{round_ + 2}", faults=faults)
                await fleet.ready(fengine, victim)

        jobs = await wait_terminal(fengine, ids, timeout=60, fleet=fleet)
    probe.dispose()
    ledger = read_ledger(fleet.ledger)
    found = oracle.check(db_url, client_log.accepted_ids(), ledger)
    found.assert_ok(fleet.diagnostics())
    assert all(j.status == "completed" for j in jobs.values())

    # every attempt a kill interrupted: recovered (job.lease_expired) after its lease ran
    # out and within a sweep of it, then re-run. The re-run waits behind the queue's
    # backlog (a recovered job is requeued with run_at = now): kill -> next start is
    # reported, and checked only to come after the lease expired.
    recoveries: list[float] = []  # kill -> job.lease_expired
    after_expiry: list[float] = []  # lease_expires_at -> job.lease_expired
    restarts: list[float] = []  # kill -> next attempt's start row
    in_flight: list[int] = []
    problems: list[str] = []
    for kill in kills:
        expired: dict[str, float] = {}  # job -> recovered at (database clock)
        for job_id in ids:
            for event in await event_list(fengine, job_id):
                if event.type == "job.lease_expired" and event.data["worker_id"] == kill.worker_id:
                    expired[job_id] = event.created_at.timestamp()
        in_flight.append(len(expired))
        if not expired:
            problems.append(f"kill of pid {kill.pid} ({kill.how}): no job.lease_expired")
        unfinished = {
            s.job_id
            for s in ledger.starts()
            if s.pid == kill.pid
            and not any(e.pid == kill.pid and e.job_id == s.job_id for e in ledger.ends())
        }
        if not unfinished <= set(expired):
            problems.append(
                f"attempts killed with pid {kill.pid} not recorded as lease expired: "
                f"{sorted(unfinished - set(expired))}"
            )
        for job_id, recovered in expired.items():
            recoveries.append(recovered - kill.wall)
            expires = kill.leases.get(job_id)
            if expires is not None:
                after_expiry.append(recovered - expires)
                if expires > kill.wall + LEASE_TTL_S + DB_SLACK_S:
                    problems.append(f"job {job_id}: its lease was renewed after the kill")
                if not -DB_SLACK_S < recovered - expires <= LATEST_SWEEP_S:
                    problems.append(
                        f"job {job_id}: recovered {recovered - expires:.3f}s after its lease "
                        f"expired (expected 0-{LATEST_SWEEP_S:.2f}s)"
                    )
            later = [s for s in ledger.starts(job_id) if s.mono > kill.at]
            if not later:
                problems.append(f"job {job_id} never started again after the kill")
                continue
            first = min(later, key=lambda s: s.mono)
            restarts.append(first.mono - kill.at)
            if expires is not None and first.wall < expires - DB_SLACK_S:
                problems.append(f"job {job_id}: re-run before its lease expired")

    recovery = distribution(recoveries)
    sweep_lag = distribution(after_expiry)
    restart_dist = distribution(restarts)
    per_kill = found.re_executions / len(kills)
    report(
        "R1",
        backend,
        f"{len(kills)} kills ({', '.join(k.how for k in kills)}), {len(ids)} jobs, 2 workers; "
        f"kill->lease recovered median {recovery.get('median')}s p95 {recovery.get('p95')}s "
        f"max {recovery.get('max')}s (bound TTL+sweep {RECOVERY_BOUND_S}s, "
        f"n={recovery['n']}); lease expiry->recovered max {sweep_lag.get('max')}s; "
        f"kill->next attempt start median {restart_dist.get('median')}s "
        f"p95 {restart_dist.get('p95')}s max {restart_dist.get('max')}s (behind the "
        f"backlog); raw re-executions per kill {per_kill:.2f}; lost {len(found.lost)}; "
        f"duplicates {found.duplicates} (absorbed {found.absorbed})",
        kills=len(kills),
        jobs=len(ids),
        in_flight_per_kill=in_flight,
        kill_to_recovery_s=recovery,
        expiry_to_recovery_s=sweep_lag,
        kill_to_restart_s=restart_dist,
        bound_s=RECOVERY_BOUND_S,
        re_executions_per_kill=round(per_kill, 2),
        **found.figures(),
    )
    assert not problems, "\n".join(problems)
    assert found.duplicates == 0


# -- R2 -----------------------------------------------------------------------------------


async def test_r2_crash_after_effect_before_checkpoint(
    db_url: str, fengine: Engine, fleet: Fleet, client_log: ClientLog
) -> None:
    backend = backend_of(db_url)
    fault = "after_effect_before_checkpoint:exit@1"
    keyed_worker = fleet.spawn("crash-keyed", concurrency=1, queues=["r2-keyed"], faults=fault)
    db_worker = fleet.spawn("crash-db-only", concurrency=1, queues=["r2-db"], faults=fault)
    keyed = await client_log.submit(
        fengine,
        JobSpec("effect_step", {"step": "charge", "keyed": True, "sleep_s": 0.1}, queue="r2-keyed"),
    )
    db_only = await client_log.submit(
        fengine, JobSpec("db_only_step", {"step": "tally", "value": 21}, queue="r2-db")
    )
    for proc in (keyed_worker, db_worker):
        code, _ = await wait_exit_at(proc, 30)
        assert code == 3, proc.diagnostics()
        assert "fault point after_effect_before_checkpoint: exit" in proc.stderr()

    # at the crash: the effect happened, the checkpoint did not
    at_crash = read_ledger(fleet.ledger)
    assert len(at_crash.effects_of(keyed)) == 1
    probe = sync_engine(db_url)
    try:
        for job_id in (keyed, db_only):
            assert len(at_crash.ends(job_id)) == 1, at_crash
            assert lease_view(probe, job_id).status == "active"
    finally:
        probe.dispose()

    async with inprocess_worker(fengine, fleet.ledger):  # the rescuer
        jobs = await wait_terminal(fengine, [keyed, db_only], timeout=30, fleet=fleet)
    ledger = read_ledger(fleet.ledger)
    found = oracle.check(db_url, client_log.accepted_ids(), ledger)
    found.assert_ok(fleet.diagnostics())

    raw = {job_id: len(ledger.starts(job_id)) for job_id in (keyed, db_only)}
    writes = ledger.writes_of(keyed)
    completed = {
        job_id: [e for e in await event_list(fengine, job_id) if e.type == "job.completed"]
        for job_id in (keyed, db_only)
    }
    report(
        "R2",
        backend,
        f"keyed effect step: raw executions {raw[keyed]}, effect rows "
        f"{len(ledger.effects_of(keyed))}, absorbed {found.absorbed}, effective duplicates "
        f"{found.duplicates}; DB-only step: raw executions {raw[db_only]}, recorded results "
        f"{len(completed[db_only])}",
        raw_executions_keyed=raw[keyed],
        raw_executions_db_only=raw[db_only],
        results_db_only=len(completed[db_only]),
        **found.figures(),
    )
    assert raw == {keyed: 2, db_only: 2}
    assert len(ledger.effects_of(keyed)) == 1
    assert [(w.inserted, w.same_payload) for w in writes] == [(True, True), (False, True)]
    assert found.duplicates == 0
    assert jobs[db_only].result is not None
    assert jobs[db_only].result["value"] == 42
    assert [len(completed[keyed]), len(completed[db_only])] == [1, 1]
    assert all(e.data["attempt"] == 2 for events in completed.values() for e in events)


# -- R3 -----------------------------------------------------------------------------------


async def _claim_soon(engine: Engine, queue: str, timeout: float) -> tuple[ClaimedJob, float]:
    """Claim one job of ``queue`` as an in-process probe, retrying briefly (a dead
    session's locks may take a moment to go); the job and when it was claimed."""
    deadline = time.monotonic() + timeout
    while True:
        claimed = await engine.claim(ClaimRequest("fault-probe", 1, [queue], None, LEASE_TTL_S))
        if claimed:
            return claimed[0], time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing claimable in {queue} within {timeout}s")
        await asyncio.sleep(0.01)


async def test_r3_crash_inside_claim_and_completion_transactions(
    db_url: str, fengine: Engine, fleet: Fleet, client_log: ClientLog
) -> None:
    backend = backend_of(db_url)
    claimer = fleet.spawn(
        "crash-in-claim", concurrency=1, queues=["r3-claim"], faults="after_claim:exit@1"
    )
    completer = fleet.spawn(
        "crash-in-complete", concurrency=1, queues=["r3-complete"], faults="in_complete_txn:exit@1"
    )
    in_claim = await client_log.submit(
        fengine, JobSpec("effect_step", {"step": "claimed"}, queue="r3-claim")
    )
    in_complete = await client_log.submit(
        fengine, JobSpec("effect_step", {"step": "completed", "sleep_s": 0.1}, queue="r3-complete")
    )
    probe = sync_engine(db_url)
    try:
        # crash inside the claim: rolled back, nobody holds the job, claimable at once
        code, died = await wait_exit_at(claimer, 30)
        assert code == 3, claimer.diagnostics()
        assert "fault point after_claim: exit" in claimer.stderr()
        view = lease_view(probe, in_claim)
        assert (view.status, view.token, view.attempts, view.worker_id) == (
            "queued",
            None,
            0,
            None,
        ), view
        assert [e.type for e in await event_list(fengine, in_claim)] == ["job.queued"]
        claimed, at = await _claim_soon(fengine, "r3-claim", timeout=LEASE_TTL_S)
        claimable_after = at - died
        assert claimed.id == in_claim and claimed.attempt == 1
        await fengine.settle([Released(claimed.id, claimed.lease_token)])

        # crash inside the completion: rolled back, still active under the dead lease
        code, died_completing = await wait_exit_at(completer, 30)
        assert code == 3, completer.diagnostics()
        assert "fault point in_complete_txn: exit" in completer.stderr()
        view = lease_view(probe, in_complete)
        assert view.status == "active" and view.token is not None, view
        assert view.expires_at is not None
        expires = view.expires_at
        types = [e.type for e in await event_list(fengine, in_complete)]
        assert "job.completed" not in types, types
    finally:
        probe.dispose()

    async with inprocess_worker(fengine, fleet.ledger):  # the rescuer
        await wait_terminal(fengine, [in_claim, in_complete], timeout=30, fleet=fleet)
    ledger = read_ledger(fleet.ledger)
    found = oracle.check(db_url, client_log.accepted_ids(), ledger)
    found.assert_ok(fleet.diagnostics())

    needed_expiry = {}
    for job_id in (in_claim, in_complete):
        types = [e.type for e in await event_list(fengine, job_id)]
        needed_expiry[job_id] = types.count("job.lease_expired")
    [recovered] = [
        e.created_at.timestamp()
        for e in await event_list(fengine, in_complete)
        if e.type == "job.lease_expired"
    ]
    complete_starts = ledger.starts(in_complete)
    rerun_after = complete_starts[-1].mono - died_completing
    report(
        "R3",
        backend,
        f"crash in claim: claimable again after {claimable_after:.3f}s, lease expiries "
        f"needed {needed_expiry[in_claim]}; crash in completion: lease expiries needed "
        f"{needed_expiry[in_complete]}, recovered {recovered - expires:.3f}s after the lease "
        f"expired, re-run {rerun_after:.2f}s after the crash (bound TTL+sweep "
        f"{RECOVERY_BOUND_S}s), raw executions {len(complete_starts)}, "
        f"effect rows {len(ledger.effects_of(in_complete))}; anomalies {len(found.violations)}",
        claimable_after_s=round(claimable_after, 3),
        lease_expiries_claim=needed_expiry[in_claim],
        lease_expiries_complete=needed_expiry[in_complete],
        rerun_after_s=round(rerun_after, 3),
        expiry_to_recovery_s=round(recovered - expires, 3),
        **found.figures(),
    )
    assert needed_expiry == {in_claim: 0, in_complete: 1}
    assert len(ledger.starts(in_claim)) == 1  # the crashed claim never ran the body
    assert len(complete_starts) == 2
    # not before the lease ran out, and within a sweep of it
    assert -DB_SLACK_S < recovered - expires <= LATEST_SWEEP_S
    assert complete_starts[-1].wall > expires - DB_SLACK_S
    assert len(ledger.effects_of(in_complete)) == 1
    assert found.duplicates == 0
