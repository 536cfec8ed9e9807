"""R4: graceful shutdown (SIGTERM) and a second SIGTERM during the drain.

First SIGTERM: the worker stops claiming, lets its running steps finish, exits 0.
Second SIGTERM: it stops the running steps now and releases their jobs, which are
claimable at once (queued, no lease), not after a lease expiry.
"""

from __future__ import annotations

import asyncio
import signal
import time

from conveyor.engine.core import Engine
from conveyor.engine.models import ClaimRequest, JobSpec, Released
from tests.faults import oracle
from tests.faults.harness import (
    FAST,
    LEASE_TTL_S,
    ClientLog,
    Fleet,
    backend_of,
    event_list,
    inprocess_worker,
    lease_view,
    report,
    sync_engine,
    wait_exit_at,
    wait_for,
    wait_terminal,
)
from tests.faults.ledger import read_ledger

DRAIN_STEP_S = 1.0
#: the grace period of the first SIGTERM (CONVEYOR_DRAIN_TIMEOUT_S of the workers)
DRAIN_TIMEOUT_S = float(FAST["CONVEYOR_DRAIN_TIMEOUT_S"])
#: after the second SIGTERM the worker must be gone well before the drain timeout or the
#: 60 s step would end (it takes about 0.3 s on an idle machine, seconds on a loaded one)
PROMPT_EXIT_S = DRAIN_TIMEOUT_S / 2


async def test_r4_graceful_shutdown_and_double_sigterm(
    db_url: str, fengine: Engine, fleet: Fleet, client_log: ClientLog
) -> None:
    backend = backend_of(db_url)
    once = fleet.spawn("sigterm-once", concurrency=2, queues=["r4-drain"])
    twice = fleet.spawn("sigterm-twice", concurrency=2, queues=["r4-stop"])
    await fleet.ready(fengine, once, twice)
    drain_ids = await client_log.submit_many(
        fengine,
        [
            JobSpec("effect_step", {"step": "drain", "sleep_s": DRAIN_STEP_S}, queue="r4-drain")
            for _ in range(6)
        ],
    )
    stop_ids = await client_log.submit_many(
        fengine,
        [
            JobSpec(
                "effect_step",
                {"step": "stop", "first_sleep_s": 60.0, "sleep_s": 0.05},
                queue="r4-stop",
            )
            for _ in range(2)
        ],
    )

    def running(pid: int, n: int) -> bool:
        return len({s.job_id for s in read_ledger(fleet.ledger).starts() if s.pid == pid}) >= n

    # -- one SIGTERM: the two running steps finish, nothing new is claimed, exit 0 --------
    await wait_for(lambda: running(once.pid, 2), timeout=20, what="two drain steps run")
    once.send(signal.SIGTERM)
    termed = time.monotonic()
    code, exited = await wait_exit_at(once, DRAIN_TIMEOUT_S + 5)
    drain_s = exited - termed
    assert code == 0, once.diagnostics()
    ledger = read_ledger(fleet.ledger)
    ran = {s.job_id for s in ledger.starts() if s.pid == once.pid}
    finished = {e.job_id for e in ledger.ends() if e.pid == once.pid}
    assert len(ran) == 2 and ran == finished, (ran, finished)
    probe = sync_engine(db_url)
    try:
        for job_id in drain_ids:
            view = lease_view(probe, job_id)
            if job_id in ran:
                assert view.status == "completed", (job_id, view)
            else:  # never claimed during the drain
                assert (view.status, view.token, view.attempts) == ("queued", None, 0), view

        # -- two SIGTERMs: the drain is cut short, running jobs released at once ----------
        await wait_for(lambda: running(twice.pid, 2), timeout=20, what="two long steps run")
        twice.send(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert twice.alive(), "the first SIGTERM must wait for the running steps"
        twice.send(signal.SIGTERM)
        second = time.monotonic()
        code, exited = await wait_exit_at(twice, DRAIN_TIMEOUT_S + 5)
        stop_s = exited - second
        assert code == 0, twice.diagnostics()
        for job_id in stop_ids:
            view = lease_view(probe, job_id)
            assert (view.status, view.token) == ("queued", None), (job_id, view)
    finally:
        probe.dispose()
    claimed = await fengine.claim(ClaimRequest("fault-probe", 2, ["r4-stop"], None, LEASE_TTL_S))
    claimable_after = time.monotonic() - exited
    assert sorted(c.id for c in claimed) == sorted(stop_ids), "released jobs must be claimable"
    await fengine.settle([Released(c.id, c.lease_token) for c in claimed])

    async with inprocess_worker(fengine, fleet.ledger):  # the finisher
        await wait_terminal(fengine, [*drain_ids, *stop_ids], timeout=30, fleet=fleet)
    found = oracle.check(db_url, client_log.accepted_ids(), read_ledger(fleet.ledger))
    found.assert_ok(fleet.diagnostics())
    released = expired = 0
    for job_id in [*drain_ids, *stop_ids]:
        types = [e.type for e in await event_list(fengine, job_id)]
        expired += types.count("job.lease_expired")
        if job_id in stop_ids:
            released += types.count("job.released") >= 1
    report(
        "R4",
        backend,
        f"drain after one SIGTERM {drain_s:.2f}s (steps of {DRAIN_STEP_S}s, 2 running, 4 "
        f"queued left untouched); exit {stop_s:.2f}s after the second SIGTERM; released "
        f"{released}/2, left to lease expiry {expired}; released jobs claimable "
        f"{claimable_after:.3f}s after the exit",
        drain_s=round(drain_s, 3),
        second_sigterm_exit_s=round(stop_s, 3),
        released=released,
        left_to_lease_expiry=expired,
        claimable_after_s=round(claimable_after, 3),
        **found.figures(),
    )
    # within the grace period, and not cut short: both running steps finished (above)
    assert drain_s < DRAIN_TIMEOUT_S
    assert stop_s < PROMPT_EXIT_S
    assert released == 2 and expired == 0
