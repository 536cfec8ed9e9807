"""The Conveyor app the fault tests run in real worker processes.

Every step body writes an execution-ledger row at its start and at its end (see
:mod:`tests.faults.ledger`). Tasks:

* ``effect_step`` (async) and ``effect_step_sync`` (a worker thread, cannot be
  interrupted): start row, sleep, the side effect (keyed or not), end row.
* ``db_only_step``: no outside effect at all; what it produces is its result, which the
  worker commits in the same transaction as the checkpoint.
* ``spin_step``: spins the CPU for ``spin_s`` seconds without yielding (async: blocks the
  worker's event loop; sync: holds the GIL in a worker thread).

``first_sleep_s`` replaces ``sleep_s`` for the first execution of a step (decided from
the ledger, since a released attempt keeps its attempt number), so a crash test can catch
the first execution mid-step and let the re-run finish quickly.

Run a worker with ``conveyor worker --app tests.faults.app:app`` from the repository root.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from conveyor import Context, Conveyor
from tests.faults.ledger import append_execution, executed_before, ledger_path, write_effect

app = Conveyor("faults")

#: many attempts, so a job hit by several injected crashes still completes
RETRIES = 20


def _token(ctx: Context) -> str | None:
    """The attempt's lease token. Task code has no public access to it; this peeks at the
    worker's attempt object and records ``None`` if that ever changes."""
    attempt = getattr(ctx, "_attempt", None)
    job = getattr(attempt, "job", None)
    token = getattr(job, "lease_token", None)
    return token if isinstance(token, str) else None


def _sleep_for(path: str, ctx: Context, step: str, sleep_s: float, first: float | None) -> float:
    if first is not None and not executed_before(path, ctx.job_id, step):
        return first
    return sleep_s


def _result(ctx: Context, step: str, effect_inserted: bool | None) -> dict[str, Any]:
    return {
        "job_id": ctx.job_id,
        "step": step,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
        "effect_inserted": effect_inserted,
    }


@app.task(retries=RETRIES)
async def effect_step(
    ctx: Context,
    step: str = "effect",
    keyed: bool = True,
    sleep_s: float = 0.0,
    first_sleep_s: float | None = None,
) -> dict[str, Any]:
    """Start row, sleep (cancellable), the side effect, end row."""
    path = ledger_path()
    pause = await asyncio.to_thread(_sleep_for, path, ctx, step, sleep_s, first_sleep_s)
    token = _token(ctx)
    await asyncio.to_thread(append_execution, path, ctx.job_id, step, ctx.attempt, token, "start")
    ctx.progress(10, f"attempt {ctx.attempt} started")
    await asyncio.sleep(pause)
    payload = {"job_id": ctx.job_id, "step": step, "amount": 100}
    inserted = await asyncio.to_thread(
        write_effect, path, ctx.job_id, step, ctx.attempt, keyed=keyed, payload=payload
    )
    await asyncio.to_thread(append_execution, path, ctx.job_id, step, ctx.attempt, token, "end")
    return _result(ctx, step, inserted)


@app.task(retries=RETRIES)
def effect_step_sync(
    ctx: Context,
    step: str = "effect",
    keyed: bool = True,
    sleep_s: float = 0.0,
    first_sleep_s: float | None = None,
) -> dict[str, Any]:
    """Like ``effect_step`` in a worker thread: a stopped attempt keeps running to its end."""
    path = ledger_path()
    pause = _sleep_for(path, ctx, step, sleep_s, first_sleep_s)
    token = _token(ctx)
    append_execution(path, ctx.job_id, step, ctx.attempt, token, "start")
    time.sleep(pause)
    payload = {"job_id": ctx.job_id, "step": step, "amount": 100}
    inserted = write_effect(path, ctx.job_id, step, ctx.attempt, keyed=keyed, payload=payload)
    append_execution(path, ctx.job_id, step, ctx.attempt, token, "end")
    return _result(ctx, step, inserted)


@app.task(retries=RETRIES)
async def db_only_step(
    ctx: Context, step: str = "db-only", sleep_s: float = 0.0, value: int = 42
) -> dict[str, Any]:
    """No effect outside Conveyor: the result is committed with the checkpoint."""
    path = ledger_path()
    token = _token(ctx)
    await asyncio.to_thread(append_execution, path, ctx.job_id, step, ctx.attempt, token, "start")
    await asyncio.sleep(sleep_s)
    await asyncio.to_thread(append_execution, path, ctx.job_id, step, ctx.attempt, token, "end")
    return {**_result(ctx, step, None), "value": value * 2}


def _spin(seconds: float) -> int:
    end = time.monotonic() + seconds
    loops = 0
    while time.monotonic() < end:
        loops += 1
    return loops


@app.task(retries=RETRIES)
async def spin_step(ctx: Context, step: str = "spin", spin_s: float = 1.0) -> dict[str, Any]:
    """Blocks the worker's event loop: no await between the start and end rows."""
    path = ledger_path()
    token = _token(ctx)
    await asyncio.to_thread(append_execution, path, ctx.job_id, step, ctx.attempt, token, "start")
    loops = _spin(spin_s)
    await asyncio.to_thread(append_execution, path, ctx.job_id, step, ctx.attempt, token, "end")
    return {**_result(ctx, step, None), "loops": loops}


@app.task(retries=RETRIES)
def spin_step_sync(ctx: Context, step: str = "spin-sync", spin_s: float = 1.0) -> dict[str, Any]:
    """Holds the GIL in a worker thread for ``spin_s`` seconds."""
    path = ledger_path()
    token = _token(ctx)
    append_execution(path, ctx.job_id, step, ctx.attempt, token, "start")
    loops = _spin(spin_s)
    append_execution(path, ctx.job_id, step, ctx.attempt, token, "end")
    return {**_result(ctx, step, None), "loops": loops}
