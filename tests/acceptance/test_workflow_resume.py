"""Crash resume: kill -9 the worker in the middle of a multi-step workflow.

Completed step results are durable: after the crash the execution continues from where
it was on another worker, and no completed step runs again (counted in the ledger).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

from conveyor.engine.core import Engine
from conveyor.engine.models import ExecutionSpec
from conveyor.store.database import Database
from tests.acceptance.conftest import Processes, registered_worker
from tests.apps.ledger import CHAIN, app, init_ledger, read_ledger


async def test_kill_9_mid_workflow_resumes_without_rerunning_completed_steps(
    db: Database, procs: Processes, tmp_path: Path, db_url: str
) -> None:
    engine = Engine(db, catalog=app)
    ledger = tmp_path / "ledger.db"
    init_ledger(str(ledger))
    first = procs.worker(db_url, name="first", concurrency=1, ledger=ledger)
    await registered_worker(engine, first)
    started = await engine.start_execution(
        ExecutionSpec("ledger_chain", input={"sleep_s": 0.6}), owner="test"
    )
    execution_id = started.execution.id

    # kill the worker while the second step runs: the first is completed by then
    deadline = time.monotonic() + 90  # generous: a loaded CI box starts slowly
    while not any(r.key == "s2" and r.phase == "start" for r in read_ledger(str(ledger))):
        assert time.monotonic() < deadline, procs.diagnostics()
        await asyncio.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    await first.wait_exit(10)
    steps_at_kill = {s.step_id: s.status for s in await engine.execution_steps(execution_id)}
    assert steps_at_kill["s1"] == "completed"
    assert steps_at_kill["s2"] == "active"  # its lease is still held by the dead worker

    second = procs.worker(db_url, name="second", concurrency=1, ledger=ledger)
    await registered_worker(engine, second)
    deadline = time.monotonic() + 60
    while (await engine.get_execution(execution_id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline, procs.diagnostics()
        await asyncio.sleep(0.1)

    final = await engine.get_execution(execution_id)
    assert final.status == "completed", (final, procs.diagnostics())
    assert final.output == {
        "s4": {"job_id": final.output["s4"]["job_id"], "attempt": 1, "pid": second.pid, "key": "s4"}
    }
    rows = read_ledger(str(ledger))
    starts = Counter(r.key for r in rows if r.phase == "start")
    ends = Counter(r.key for r in rows if r.phase == "end")
    # exactly one recorded completion per step; only the interrupted step ran twice
    assert ends == Counter(dict.fromkeys(CHAIN, 1))
    assert starts == Counter({"s1": 1, "s2": 2, "s3": 1, "s4": 1})
    by_step = {s.step_id: s for s in await engine.execution_steps(execution_id)}
    assert by_step["s1"].attempts == 1
    assert by_step["s2"].attempts == 2
    s2_pids = [r.pid for r in rows if r.key == "s2" and r.phase == "start"]
    assert s2_pids == [first.pid, second.pid]
    s2_events = [e.type for e in await engine.job_events(by_step["s2"].job_id)]
    assert "job.lease_expired" in s2_events
