"""The app of scenarios R15-R17, R21 and R22, and how the tests start it.

Tasks (``conveyor worker --app tests.faults.app_extra:app``; the ledger is the one of
:mod:`tests.faults.ledger`, named by ``LEDGER_PATH``):

* ``flood``: ``count`` ``job.progress`` events of about ``size`` bytes each, ``burst`` at a
  time, then a pause of ``interval`` seconds. ``ctx.progress`` caps a message at 1000
  characters, so the step reports through the attempt underneath it (what
  ``ctx.progress`` does after the cap) to reach the 4 KB events of the R15 spec.
* ``poison``: writes a ledger start row, then SIGKILLs its own process (a simulated OOM
  kill), every attempt.
* ``quick``: a short step with start/end ledger rows (the rest of the fleet's work).
* ``approval``: asks one yes/no question (no default), then applies the decision once as
  an idempotent-keyed effect (step ``decide``, payload ``{"approved": ...}``); its first
  execution after the answer sleeps ``first_hold_s`` so a test can kill it there.
* ``stubborn_sync`` / ``stubborn_async``: ignore cancellation for ``run_s`` seconds (a
  sync step sleeping in a worker thread; an async step that swallows ``CancelledError``),
  reporting progress every tick, then try a durable write (``ctx.memo``) and return a
  result. Their ledger rows show when the body really stopped.

:func:`serve` starts ``conveyor serve`` (API only) on this app, :func:`spawn_worker` a
worker process; both through the test's :class:`~tests.acceptance.conftest.Processes`,
which kills what is left at the end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from conveyor import Context, Conveyor
from conveyor.domain.graph import Step
from conveyor.domain.questions import Question
from conveyor.errors import LeaseLostError
from conveyor.workflows import Workflow
from tests.acceptance.conftest import CONVEYOR_BIN, Proc, Processes, process_env
from tests.faults.harness import FAST
from tests.faults.ledger import append_execution, executed_before, ledger_path, write_effect
from tests.servers import Server, free_port, ready_server, serve_command, server_env

APP = "tests.faults.app_extra:app"
app = Conveyor("faults-extra")

#: R17: a poison job is given up after this many attempts (retries + 1)
POISON_ATTEMPTS = 3


# -- R15, R16: many (large) events ---------------------------------------------------------


@app.task(retries=0)
async def flood(
    ctx: Context, count: int = 100, size: int = 100, burst: int = 1, interval: float = 0.0
) -> dict[str, Any]:
    """``count`` progress events with messages ``"<i>....."`` of ``size`` characters."""
    attempt = ctx._attempt  # below ctx.progress: its 1000-character cap would hide the size
    started = time.monotonic()
    for i in range(count):
        attempt.report_progress(100 * (i + 1) // count, str(i).ljust(size, "."))
        if (i + 1) % burst == 0:
            await asyncio.sleep(interval)
    return {"count": count, "elapsed_s": round(time.monotonic() - started, 3)}


# -- R17: a poison job, and the rest of the fleet's work ---------------------------------


@app.task(retries=POISON_ATTEMPTS - 1)
def poison(ctx: Context) -> None:
    """Dies with its whole worker process, every attempt (what the OOM killer does)."""
    append_execution(ledger_path(), ctx.job_id, "poison", ctx.attempt, None, "start")
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(retries=20)
async def quick(ctx: Context, step: str = "quick", sleep_s: float = 0.05) -> int:
    path = ledger_path()
    await asyncio.to_thread(append_execution, path, ctx.job_id, step, ctx.attempt, None, "start")
    await asyncio.sleep(sleep_s)
    await asyncio.to_thread(append_execution, path, ctx.job_id, step, ctx.attempt, None, "end")
    return ctx.attempt


# -- R21: a human approves (or not) --------------------------------------------------------

APPROVE = Question("approve", "Ship it?", {"type": "boolean"})


@app.task(retries=5)
async def approval(
    ctx: Context,
    timeout_s: float | None = None,
    on_timeout: str = "fail",
    first_hold_s: float = 0.0,
) -> dict[str, Any]:
    """Ask, then apply the decision once (keyed effect), then finish."""
    answers = await ctx.ask([APPROVE], timeout_s=timeout_s, on_timeout=on_timeout)
    approved = answers["approve"]
    if approved is not True and approved is not False:
        raise TypeError(f"the approval is not a boolean: {approved!r}")
    path = ledger_path()
    first = not await asyncio.to_thread(executed_before, path, ctx.job_id, "decide")
    await asyncio.to_thread(
        append_execution, path, ctx.job_id, "decide", ctx.attempt, None, "start"
    )
    payload = {"job_id": ctx.job_id, "approved": approved}
    await asyncio.to_thread(
        write_effect, path, ctx.job_id, "decide", ctx.attempt, keyed=True, payload=payload
    )
    await asyncio.sleep(first_hold_s if first else 0.0)
    await asyncio.to_thread(append_execution, path, ctx.job_id, "decide", ctx.attempt, None, "end")
    return {"approved": approved, "attempt": ctx.attempt}


app.add_workflow(Workflow("approve", [Step("gate", "approval")]))


# -- R22: steps that ignore cancellation ---------------------------------------------------

TICK_S = 0.1


@app.task(retries=0)
def stubborn_sync(ctx: Context, run_s: float = 5.0) -> dict[str, Any]:
    """Sleeps in its worker thread for ``run_s`` seconds whatever ``ctx.cancelled`` says."""
    path = ledger_path()
    append_execution(path, ctx.job_id, "stubborn", ctx.attempt, None, "start")
    ticks = 0
    end = time.monotonic() + run_s
    while time.monotonic() < end:
        time.sleep(TICK_S)
        ticks += 1
        ctx.progress(min(99, ticks), f"tick {ticks}")
    stored = _try_memo_sync(ctx, ticks)
    append_execution(path, ctx.job_id, "stubborn", ctx.attempt, None, "end")
    return {"ticks": ticks, "memo_stored": stored}


@app.task(retries=0)
async def stubborn_async(ctx: Context, run_s: float = 5.0) -> dict[str, Any]:
    """Swallows every ``CancelledError`` and goes on for ``run_s`` seconds."""
    path = ledger_path()
    await asyncio.to_thread(
        append_execution, path, ctx.job_id, "stubborn", ctx.attempt, None, "start"
    )
    ticks = swallowed = 0
    end = time.monotonic() + run_s
    while time.monotonic() < end:
        try:
            await asyncio.sleep(TICK_S)
        except asyncio.CancelledError:
            swallowed += 1  # "cleanup", then carry on as if nothing happened
        ticks += 1
        ctx.progress(min(99, ticks), f"tick {ticks}")
    try:
        await ctx.memo("after-cancel", lambda: ticks)
        stored = True
    except LeaseLostError:
        stored = False
    await asyncio.to_thread(
        append_execution, path, ctx.job_id, "stubborn", ctx.attempt, None, "end"
    )
    return {"ticks": ticks, "swallowed": swallowed, "memo_stored": stored}


def _try_memo_sync(ctx: Context, ticks: int) -> bool:
    try:
        ctx.memo_sync("after-cancel", lambda: ticks)
    except LeaseLostError:
        return False
    return True


# -- starting processes --------------------------------------------------------------------


def serve(
    procs: Processes,
    database_url: str,
    *,
    name: str = "api",
    port: int | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Server:
    """``conveyor serve --workers 0`` (API only) on this app with the fast lease settings,
    started as one of ``procs``; waits for /readyz and logs in as admin. ``port``: the
    port of an earlier incarnation (a restart)."""
    port = port or free_port()
    proc = procs.spawn(
        name,
        serve_command(port, APP, workers=0),
        server_env(database_url, extra_env, settings=FAST),
    )
    return ready_server(proc.popen, port, database_url, proc.stdout_path, output=proc.diagnostics)


def api_port(server: Server) -> int:
    return int(server.base.rsplit(":", 1)[1])


def spawn_worker(
    procs: Processes,
    database_url: str,
    ledger: Path,
    *,
    name: str,
    concurrency: int = 2,
    queues: Sequence[str] | None = None,
    settings: Mapping[str, str] | None = None,
) -> Proc:
    """``conveyor worker --app tests.faults.app_extra:app`` with the fast lease settings."""
    env = {
        "CONVEYOR_DATABASE_URL": database_url,
        "LEDGER_PATH": str(ledger),
        **FAST,
        **(settings or {}),
    }
    args = [str(CONVEYOR_BIN), "worker", "--app", APP, "--concurrency", str(concurrency)]
    if queues:
        args += ["--queues", ",".join(queues)]
    return procs.spawn(name, args, process_env(env))
