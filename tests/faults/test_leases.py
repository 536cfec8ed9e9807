"""R5 and R6: leases under a paused worker and under a CPU-bound step.

R5  zombie worker: SIGSTOP a worker mid-step for 2 x TTL while another takes its jobs
    over and completes them, then SIGCONT. Every write carrying the zombie's lease token
    must change nothing; the zombie notices, abandons its attempts and logs it.
R6  heartbeat starvation: steps spinning the CPU for 2 x TTL without yielding (one
    blocking the worker's event loop, one holding the GIL in a thread) keep their leases;
    nobody rescues them.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time

from conveyor.engine.core import Engine
from conveyor.engine.models import (
    JobSpec,
)
from tests.faults import oracle
from tests.faults.harness import (
    LEASE_TTL_S,
    ClientLog,
    FenceLog,
    Fleet,
    LeaseView,
    backend_of,
    distribution,
    event_list,
    events_total,
    inprocess_worker,
    lease_view,
    pause_outside_write_lock,
    replay_stale_writes,
    report,
    sync_engine,
    wait_for,
    wait_terminal,
)
from tests.faults.ledger import read_ledger

# -- R5 -----------------------------------------------------------------------------------


async def test_r5_zombie_worker_cannot_write(
    db_url: str, fengine: Engine, fleet: Fleet, client_log: ClientLog
) -> None:
    backend = backend_of(db_url)
    # the zombie stalls after its first finished step, before the checkpoint (the fault
    # point sleeps in the event loop): paused there, its completion is a stale write
    zombie = fleet.spawn(
        "zombie", concurrency=3, faults="after_effect_before_checkpoint:sleep=1.5@1"
    )
    [zombie_id] = await fleet.ready(fengine, zombie)
    # the first execution of each step sleeps past the pause; the re-run does not
    ids = await client_log.submit_many(
        fengine,
        [
            JobSpec("effect_step_sync", {"step": "zombie-thread", "first_sleep_s": 1.0}),
            JobSpec("effect_step", {"step": "zombie-async", "first_sleep_s": 1.0}),
            JobSpec("effect_step", {"step": "zombie-checkpoint", "first_sleep_s": 0.3}),
        ],
    )
    checkpoint = ids[2]

    def zombie_stalled() -> bool:
        ledger = read_ledger(fleet.ledger)
        started = {s.job_id for s in ledger.starts() if s.pid == zombie.pid}
        ended = {e.job_id for e in ledger.ends() if e.pid == zombie.pid}
        return started == set(ids) and ended == {checkpoint}

    await wait_for(
        zombie_stalled, timeout=20, what="the zombie runs two steps, stalls on one", fleet=fleet
    )
    pause_outside_write_lock(zombie, db_url)
    stopped = time.monotonic()
    probe = sync_engine(db_url)
    try:
        held = {job_id: lease_view(probe, job_id) for job_id in ids}
    finally:
        probe.dispose()
    tokens: dict[str, str] = {}
    for job_id, view in held.items():
        assert view.status == "active" and view.token is not None, view
        tokens[job_id] = view.token

    # the rescuer runs in-process; it stays up while the zombie resumes
    async with inprocess_worker(fengine, fleet.ledger, concurrency=3):
        jobs = await wait_terminal(fengine, ids, timeout=30, fleet=fleet)
        assert all(j.status == "completed" for j in jobs.values()), jobs
        await asyncio.sleep(max(0.0, stopped + 2 * LEASE_TTL_S - time.monotonic()))
        paused_s = time.monotonic() - stopped

        # every write the zombie could make with its real tokens: each must change nothing
        before = await events_total(fengine, ids)
        replay = await replay_stale_writes(fengine, zombie_id, tokens, actor="zombie")
        attempted, rejected = replay.attempted, replay.rejected
        assert not replay.renewed, replay
        assert await events_total(fengine, ids) == before, "a stale write left an event"
        after = {j.id: j for j in [await fengine.get_job(job_id) for job_id in ids]}
        for job_id in ids:
            assert (after[job_id].status, after[job_id].result) == (
                "completed",
                jobs[job_id].result,
            )

        # the zombie itself wakes up: it must notice, abandon both attempts and log it
        zombie.send(signal.SIGCONT)
        resumed = time.monotonic()
        await wait_for(
            lambda: FenceLog.parse(zombie.stderr()).noticed() >= set(ids),
            timeout=10,
            what="the zombie notices it lost its leases",
            fleet=fleet,
        )
        noticed_s = time.monotonic() - resumed
        await asyncio.sleep(0.5)  # let a thread that was mid-step run to its end
        zombie.send(signal.SIGTERM)
        assert await zombie.wait_exit(15) == 0, zombie.diagnostics()
        fence = FenceLog.parse(zombie.stderr())
        stale_successes = await events_total(fengine, ids) - before

    ledger = read_ledger(fleet.ledger)
    found = oracle.check(db_url, client_log.accepted_ids(), ledger)
    found.assert_ok(fleet.diagnostics())
    late_effects = [w for w in ledger.writes if w.pid == zombie.pid and w.mono > resumed]
    completed_by = {
        job_id: [
            e.data["attempt"]
            for e in await event_list(fengine, job_id)
            if e.type == "job.completed"
        ]
        for job_id in ids
    }
    zombie_attempted = len(fence.refused) + stale_successes
    report(
        "R5",
        backend,
        f"paused {paused_s:.1f}s; replayed stale writes with the zombie's tokens: attempted "
        f"{attempted}, rejected {rejected}; the zombie's own writes after SIGCONT: attempted "
        f"{zombie_attempted} (refused {len(fence.refused)}), stale writes that succeeded "
        f"{stale_successes}; it noticed within {noticed_s:.2f}s (self-fenced "
        f"{len(fence.self_fenced)}, renewals lost {len(fence.lost)}); late effects "
        f"{len(late_effects)}, absorbed by the key {sum(not w.inserted for w in late_effects)}; "
        f"effective duplicates {found.duplicates}",
        paused_s=round(paused_s, 2),
        replayed_attempted=attempted,
        replayed_rejected=rejected,
        zombie_writes_attempted=zombie_attempted,
        zombie_writes_refused=len(fence.refused),
        stale_successes=stale_successes,
        self_fenced=len(fence.self_fenced),
        renewals_lost=len(fence.lost),
        noticed_after_s=round(noticed_s, 3),
        late_effects=len(late_effects),
        **found.figures(),
    )
    assert rejected == attempted
    assert checkpoint in fence.refused, "the stalled completion must reach the database"
    assert stale_successes == 0
    assert all(not w.inserted for w in late_effects), late_effects
    assert completed_by == {job_id: [2] for job_id in ids}
    assert found.duplicates == 0


# -- R6 -----------------------------------------------------------------------------------

SPIN_S = 2 * LEASE_TTL_S


async def test_r6_cpu_bound_step_keeps_its_lease(
    db_url: str, fengine: Engine, fleet: Fleet, client_log: ClientLog
) -> None:
    backend = backend_of(db_url)
    # two workers: either could wrongly rescue the other's job
    a = fleet.spawn("spin-a", concurrency=1)
    b = fleet.spawn("spin-b", concurrency=1)
    await fleet.ready(fengine, a, b)
    ids = await client_log.submit_many(
        fengine,
        [
            JobSpec("spin_step", {"spin_s": SPIN_S}),  # blocks the worker's event loop
            JobSpec("spin_step_sync", {"spin_s": SPIN_S}),  # holds the GIL in a thread
        ],
    )
    # watch each lease from outside: when lease_expires_at moves, a renewal landed
    samples: dict[str, list[tuple[float, LeaseView]]] = {job_id: [] for job_id in ids}
    probe = sync_engine(db_url)
    try:
        deadline = time.monotonic() + SPIN_S + 20
        while time.monotonic() < deadline:
            views = {job_id: lease_view(probe, job_id) for job_id in ids}
            now = time.monotonic()
            for job_id, view in views.items():
                samples[job_id].append((now, view))
            if all(v.status in oracle.TERMINAL for v in views.values()):
                break
            await asyncio.sleep(0.05)
    finally:
        probe.dispose()
    jobs = await wait_terminal(fengine, ids, timeout=10, fleet=fleet)

    gaps: list[float] = []
    max_gap: dict[str, float] = {}
    min_margin: dict[str, float] = {}
    for job_id, series in samples.items():
        active = [(t, v) for t, v in series if v.status == "active" and v.expires_at is not None]
        assert active, f"job {job_id} was never seen active"
        renewals = [active[0][0]]
        margins = []
        for (_, prev), (t, view) in itertools.pairwise(active):
            if view.expires_at != prev.expires_at:
                renewals.append(t)
            if view.expires_in_s is not None:
                margins.append(view.expires_in_s)
        job_gaps = [later - earlier for earlier, later in itertools.pairwise(renewals)]
        gaps.extend(job_gaps)
        max_gap[job_id] = max(job_gaps, default=active[-1][0] - active[0][0])
        min_margin[job_id] = min(margins, default=LEASE_TTL_S)

    ledger = read_ledger(fleet.ledger)
    found = oracle.check(db_url, client_log.accepted_ids(), ledger)
    found.assert_ok(fleet.diagnostics())
    false_rescues = found.lease_expiries
    self_fenced = sorted(
        set(FenceLog.parse(a.stderr()).noticed() | FenceLog.parse(b.stderr()).noticed())
    )
    dist = distribution(gaps)
    report(
        "R6",
        backend,
        f"2 steps spinning {SPIN_S}s (event loop / thread) on 2 workers: false rescues "
        f"{false_rescues}, self-fenced {len(self_fenced)}; heartbeat gap seen in "
        f"lease_expires_at median {dist.get('median')}s p95 {dist.get('p95')}s max "
        f"{dist.get('max')}s (sampled every 50 ms, TTL {LEASE_TTL_S}s); smallest lease "
        f"margin left {min(min_margin.values()):.2f}s",
        false_rescues=false_rescues,
        self_fenced=len(self_fenced),
        heartbeat_gap_s=dist,
        max_gap_by_task={jobs[j].task: round(g, 3) for j, g in max_gap.items()},
        min_margin_s=round(min(min_margin.values()), 3),
        **found.figures(),
    )
    assert false_rescues == 0
    assert not self_fenced, self_fenced
    assert all(j.status == "completed" and j.attempts == 1 for j in jobs.values())
    assert all(len(ledger.starts(job_id)) == 1 for job_id in ids)
    assert max(max_gap.values()) < 0.75 * LEASE_TTL_S
