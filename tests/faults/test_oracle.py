"""The oracle itself: it must flag each kind of violation (a check that cannot fail proves
nothing), and pass a clean history. In-process, on both backends, in a second or two."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

from sqlalchemy import delete, update

from conveyor.domain.ids import new_id
from conveyor.engine.core import Engine
from conveyor.engine.models import ClaimedJob, ClaimRequest, Completed, JobSpec
from conveyor.store.schema import events, jobs
from tests.faults import oracle
from tests.faults.harness import ClientLog, sync_engine
from tests.faults.ledger import Effect, EffectWrite, Execution, Ledger


async def _claim(engine: Engine, lease_s: float = 2.0) -> ClaimedJob:
    claimed = await engine.claim(ClaimRequest("oracle-test", 1, None, None, lease_s))
    assert len(claimed) == 1
    job: ClaimedJob = claimed[0]
    return job


def _sql(database_url: str, statement: Any) -> None:
    engine = sync_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(statement)
    finally:
        engine.dispose()


def _ledger_for(job_id: str, attempt: int, at: float, **changes: Any) -> Ledger:
    """A clean ledger of one keyed step run once; ``changes`` replace its parts."""
    pid = 4242
    executions = [
        Execution(1, job_id, "s", attempt, None, "start", pid, 1.0, at - 0.2),
        Execution(2, job_id, "s", attempt, None, "end", pid, 1.1, at - 0.1),
    ]
    effects = [Effect(job_id, "s", f"{job_id}:s", attempt, pid, "{}", 1.05, at - 0.15)]
    writes = [EffectWrite(1, job_id, "s", f"{job_id}:s", True, attempt, pid, True, True, 1.05, at)]
    parts: dict[str, Any] = {"executions": executions, "effects": effects, "writes": writes}
    parts.update(changes)
    return Ledger(parts["executions"], parts["effects"], parts["writes"])


async def test_oracle_passes_a_clean_history_and_flags_each_violation(
    db_url: str, fengine: Engine, client_log: ClientLog
) -> None:
    done = await client_log.submit(fengine, JobSpec("effect_step", {"step": "s"}))
    claimed = await _claim(fengine)
    await fengine.settle([Completed(done, claimed.lease_token, {"ok": True})])
    finished = (await fengine.get_job(done)).finished_at
    assert finished is not None
    at = finished.timestamp()
    clean = _ledger_for(done, 1, at)
    oracle.check(db_url, [done], clean).assert_ok()

    def violations(ledger: Ledger | None = None, **kw: Any) -> list[str]:
        return oracle.check(db_url, client_log.accepted_ids(), ledger, **kw).violations

    # ledger-side violations of the completed job
    start, end = clean.executions
    effect, write = clean.effects[0], clean.writes[0]
    dup = Effect(done, "s", f"{done}:s", 2, 1, "{}", 2.0, at)
    rerun = Execution(3, done, "s", 2, None, "start", 1, 3.0, at + 1.0)
    clash = EffectWrite(2, done, "s", effect.idem_key, True, 2, 1, False, False, 2.0, at)
    cases: dict[str, Ledger] = {
        "effects for one stable key": _ledger_for(done, 1, at, effects=[effect, dup]),
        "completed, then ran again": _ledger_for(done, 1, at, executions=[start, end, rerun]),
        "never reached its end row": _ledger_for(done, 1, at, executions=[start]),
        "different payload": _ledger_for(done, 1, at, writes=[write, clash]),
        "has no effect row": _ledger_for(done, 1, at, effects=[]),
    }
    for expected, ledger in cases.items():
        found = oracle.check(db_url, [done], ledger).violations
        assert any(expected in v for v in found), (expected, found)
    unkeyed = _ledger_for(done, 1, at, effects=[effect, dup], writes=[replace(write, keyed=False)])
    assert any("unkeyed duplicate" in v for v in oracle.check(db_url, [done], unkeyed).violations)
    assert not oracle.check(db_url, [done], unkeyed, allow_unkeyed_duplicates=True).violations

    # a job that is not terminal, one lost, one active past its lease
    waiting = await client_log.submit(fengine, JobSpec("effect_step", {"step": "w"}))
    assert any(f"{waiting} is queued" in v for v in violations())
    client_log.record(202, new_id(), None, owner="faults", via="engine", note="made up")
    assert any(v.startswith("lost:") for v in violations())
    stale = await _claim(fengine, lease_s=0.6)
    assert stale.id == waiting
    assert any("is still active" in v for v in violations())
    await asyncio.sleep(0.8)
    found = violations(stale_after_s=0.1)
    assert any("the sweep did not recover it" in v for v in found), found

    # a failed job without a reason; a gap in the event ids
    _sql(db_url, update(jobs).where(jobs.c.id == done).values(status="failed", error={}))
    assert any("carries no reason" in v for v in violations())
    _sql(db_url, delete(events).where(events.c.id == 2))
    assert any("not consecutive" in v for v in violations())
    started = time.monotonic()
    oracle.check(db_url, client_log.accepted_ids(), clean)
    assert time.monotonic() - started < 5
