"""R17, R21, R22: a poison job, human-in-the-loop races, cancelling stubborn steps.

R17  A step that SIGKILLs its own worker process every attempt (a simulated OOM kill).
     A supervisor restarts the dead workers; after its attempts the job is ``failed``
     with "worker lost N times", the other jobs keep flowing, no crash loop follows.
R21  Over real HTTP (``conveyor serve`` plus worker processes): concurrent duplicate
     answers, another user's answer, an answer at the exact deadline and one just after
     it, no answer at all, and an answer sent while every worker is dead followed by a
     SIGKILL of the worker applying the decision. One decision per question; losers get
     409 or 410; the other user 404; the decision is applied exactly once; no answer by
     the deadline is never an approval.
R22  Cancel running steps that ignore cancellation (a sync step sleeping in its thread,
     an async step swallowing ``CancelledError``): cooperative first, then a hard stop at
     the grace deadline; the lease is released; nothing is recorded after the cancel.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx2 as httpx
import pytest
from sqlalchemy import func, select

from conveyor.engine.core import Engine, EngineSettings
from conveyor.engine.models import Job, JobSpec
from conveyor.store.database import Database
from conveyor.store.schema import step_memos
from tests.acceptance.conftest import Proc
from tests.faults import oracle
from tests.faults.app_extra import POISON_ATTEMPTS, TICK_S, app, serve, spawn_worker
from tests.faults.harness import (
    LEASE_TTL_S,
    ClientLog,
    Fleet,
    backend_of,
    distribution,
    event_list,
    lease_view,
    report,
    sync_engine,
    wait_for,
    wait_terminal,
)
from tests.faults.ledger import read_ledger
from tests.servers import Server
from tests.streams.conftest import API, async_client, start_execution


@pytest.fixture
def xengine(db: Database) -> Engine:
    """An engine on the test database that knows :mod:`tests.faults.app_extra`'s tasks."""
    return Engine(
        db,
        catalog=app,
        settings=EngineSettings(lease_ttl_s=LEASE_TTL_S, worker_heartbeat_timeout_s=30.0),
    )


# -- R17 -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Death:
    slot: str
    pid: int
    code: int
    at: float  # monotonic, when the supervisor saw it


@dataclass
class Supervisor:
    """Restarts a worker slot whose process died (what systemd or Kubernetes would do)."""

    fleet: Fleet
    slots: dict[str, Proc]
    deaths: list[Death] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            for slot, proc in list(self.slots.items()):
                code = proc.popen.poll()
                if code is None:
                    continue
                self.deaths.append(Death(slot, proc.pid, code, time.monotonic()))
                self.slots[slot] = spawn_worker(
                    self.fleet.procs,
                    self.fleet.database_url,
                    self.fleet.ledger,
                    name=f"{slot}-{len(self.deaths) + 1}",
                )
            await asyncio.sleep(0.05)


def seconds(a: datetime | None, b: datetime | None) -> float:
    assert a is not None and b is not None
    return (b - a).total_seconds()


async def test_r17_poison_job(
    db_url: str, xengine: Engine, fleet: Fleet, client_log: ClientLog
) -> None:
    backend = backend_of(db_url)
    # three slots: while a killed one restarts, one of the others sweeps and claims
    first = {
        name: spawn_worker(fleet.procs, db_url, fleet.ledger, name=name)
        for name in ("w1", "w2", "w3")
    }
    await fleet.ready(xengine, *first.values())
    supervisor = Supervisor(fleet, dict(first))
    supervising = asyncio.create_task(supervisor.run())
    try:
        poison = await client_log.submit(xengine, JobSpec("poison"))
        others: list[str] = []
        # the rest of the fleet's work: one short job every 0.1 s while the poison job lives
        while (await xengine.get_job(poison)).status not in ("failed", "completed"):
            others.append(await client_log.submit(xengine, JobSpec("quick", {"sleep_s": 0.05})))
            assert len(others) < 600, "the poison job is still alive after a minute"
            await asyncio.sleep(0.1)
        deaths_at_verdict = len(supervisor.deaths)
        jobs = await wait_terminal(xengine, [poison, *others], timeout=60, fleet=fleet)
        # no crash loop: nothing dies once the job is given up (one more lease of quiet)
        await asyncio.sleep(LEASE_TTL_S)
    finally:
        supervisor.stop()
        await supervising

    failed = jobs[poison]
    ledger = read_ledger(fleet.ledger)
    poison_runs = ledger.starts(poison)
    assert failed.status == "failed", failed
    assert failed.error is not None
    reason = str(failed.error.get("reason"))
    assert reason == f"worker lost {POISON_ATTEMPTS} times", failed.error
    assert failed.attempts == POISON_ATTEMPTS, failed
    # each attempt ran the body once and took one worker down with it, nothing more
    assert len(poison_runs) == POISON_ATTEMPTS, poison_runs
    assert len(supervisor.deaths) == POISON_ATTEMPTS, supervisor.deaths
    assert deaths_at_verdict == POISON_ATTEMPTS, supervisor.deaths
    assert all(d.code == -signal.SIGKILL for d in supervisor.deaths), supervisor.deaths
    assert {r.pid for r in poison_runs} == {d.pid for d in supervisor.deaths}
    history = [e.type for e in await event_list(xengine, poison)]
    assert history.count("job.lease_expired") == POISON_ATTEMPTS, history
    assert all(jobs[j].status == "completed" for j in others), Counter(
        jobs[j].status for j in others
    )
    found = oracle.check(db_url, client_log.accepted_ids(), ledger)
    found.assert_ok(fleet.diagnostics())

    episode_s = seconds(failed.created_at, failed.finished_at)
    assert failed.finished_at is not None
    ended = {j: jobs[j].finished_at for j in others}
    done_during = [
        j
        for j, at in ended.items()
        if at is not None and failed.created_at <= at <= failed.finished_at
    ]
    caught = [j for j in others if jobs[j].attempts > 1]
    report(
        "R17",
        backend,
        f"given up after {failed.attempts} attempts ({reason!r}) in {episode_s:.1f}s; "
        f"{len(done_during)} other jobs completed meanwhile "
        f"({len(done_during) / episode_s:.1f}/s), {len(caught)} of them re-run after a kill",
        attempts=failed.attempts,
        reason=reason,
        worker_deaths=len(supervisor.deaths),
        episode_s=round(episode_s, 3),
        other_jobs=len(others),
        other_completed_during_episode=len(done_during),
        throughput_during_episode_per_s=round(len(done_during) / episode_s, 2),
        other_jobs_rerun_after_kill=len(caught),
        other_job_latency_s=distribution(
            seconds(jobs[j].created_at, jobs[j].finished_at) for j in others
        ),
    )


# -- R21 -----------------------------------------------------------------------------------

DEADLINE_S = 4.0  # the questions' timeout in the deadline cases
NO_SWEEP_S = 120.0  # the sweep interval of the first workers
LATE_S = 0.25  # "just after the deadline"


def gate(execution: str) -> str:
    return f"{API}/executions/{execution}/steps/gate/clarification"


async def pending(client: httpx.AsyncClient, execution: str) -> dict[str, Any]:
    async def asked() -> dict[str, Any] | None:
        got = await client.get(gate(execution))
        if got.status_code == 200 and got.json()["status"] == "pending":
            body: dict[str, Any] = got.json()
            return body
        return None

    found: dict[str, Any] = await wait_for(asked, timeout=60, what=f"{execution} asks")
    return found


async def answer(client: httpx.AsyncClient, execution: str, approve: Any) -> httpx.Response:
    return await client.post(gate(execution), json={"answers": {"approve": approve}})


async def sleep_until_wall(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


@dataclass
class Verdict:
    """What became of one execution's question."""

    job_id: str
    status: str  # the step job's
    clarification: str
    answers: Any
    answered_events: int
    decisions: int  # effect rows of the decision (the side effect, keyed)
    decision_runs: int  # executions of the decision code (ledger start rows)
    result: Any


async def verdict(
    client: httpx.AsyncClient, xengine: Engine, fleet: Fleet, execution: str
) -> Verdict:
    clarification = (await client.get(gate(execution))).json()
    job_id = str(clarification["job_id"])
    job = (await wait_terminal(xengine, [job_id], timeout=60, fleet=fleet))[job_id]
    clarification = (await client.get(gate(execution))).json()
    history = [e.type for e in await event_list(xengine, job_id)]
    ledger = read_ledger(fleet.ledger)
    return Verdict(
        job_id,
        job.status,
        clarification["status"],
        clarification["answers"],
        history.count("clarification.answered"),
        len(ledger.effects_of(job_id)),
        len(ledger.starts(job_id)),
        job.result,
    )


async def test_r21_human_in_the_loop_races(
    db_url: str, xengine: Engine, fleet: Fleet, client_log: ClientLog
) -> None:
    backend = backend_of(db_url)
    # no expiry sweep while the deadlines pass (a worker's first sweep comes one interval
    # after its start): whether an answer is in time is the API's decision alone, not a
    # race with a sweep. The workers started later (answer_while_workers_die) sweep at
    # the fast pace and expire what is left.
    workers = [
        spawn_worker(
            fleet.procs,
            db_url,
            fleet.ledger,
            name=f"w{i}",
            settings={"CONVEYOR_SWEEP_INTERVAL_S": str(NO_SWEEP_S)},
        )
        for i in (1, 2)
    ]
    server: Server = serve(fleet.procs, db_url)
    await fleet.ready(xengine, *workers)
    _, a_token = server.new_user()
    _, b_token = server.new_user()
    statuses: dict[str, Any] = {}
    async with async_client(server, a_token) as a, async_client(server, b_token) as b:
        dup = await start_execution(a, "approve")
        exact = await start_execution(a, "approve", input={"timeout_s": DEADLINE_S})
        late = await start_execution(a, "approve", input={"timeout_s": DEADLINE_S})
        silent = await start_execution(a, "approve", input={"timeout_s": DEADLINE_S})
        asked = {e: await pending(a, e) for e in (dup, exact, late, silent)}
        for body in asked.values():
            client_log.record(202, str(body["job_id"]), None, owner="a", via="http")

        # another user: 404 on reading and on answering, like a missing execution
        b_read = await b.get(gate(dup))
        b_answer = await answer(b, dup, True)
        statuses["other_user"] = [b_read.status_code, b_answer.status_code]
        assert b_read.status_code == 404 and b_answer.status_code == 404, statuses

        # duplicate answers, concurrently (two the same, two contradicting)
        racing = await asyncio.gather(*(answer(a, dup, v) for v in (True, True, False, False)))
        codes = sorted(r.status_code for r in racing)
        statuses["duplicates"] = codes
        assert codes == [200, 409, 409, 409], [(r.status_code, r.text) for r in racing]
        winner = next(r for r in racing if r.status_code == 200).json()["answers"]["approve"]
        after = await answer(a, dup, not winner)
        statuses["after_decided"] = after.status_code
        assert after.status_code == 409, after.text

        # at the deadline (database clock, as the API reports it) and just after it
        deadline = {
            e: datetime.fromisoformat(asked[e]["timeout_at"]).timestamp()
            for e in (exact, late, silent)
        }
        assert asked[dup]["timeout_at"] is None
        await sleep_until_wall(deadline[exact])
        at_deadline = await answer(a, exact, True)
        await sleep_until_wall(deadline[late] + LATE_S)
        after_deadline = await answer(a, late, True)
        statuses["at_deadline"] = at_deadline.status_code
        statuses["after_deadline"] = after_deadline.status_code
        assert at_deadline.status_code in (200, 410), at_deadline.text
        assert after_deadline.status_code == 410, after_deadline.text
        if at_deadline.status_code == 410:
            again = await answer(a, exact, True)
            assert again.status_code == 410, again.text

        crash = await answer_while_workers_die(server, a_token, xengine, fleet, workers)
        statuses["while_workers_dead"] = crash.pop("statuses")
        results = {e: await verdict(a, xengine, fleet, e) for e in (dup, exact, late, silent)}
    for e in (dup, exact, late, silent):
        assert results[e].answered_events <= 1, results[e]
    assert results[dup] == Verdict(
        results[dup].job_id,
        "completed",
        "answered",
        {"approve": winner},
        1,
        1,
        1,
        {"approved": winner, "attempt": results[dup].result["attempt"]},
    )
    for e in (late, silent):  # no answer by the deadline: failed, never approved
        got = results[e]
        assert (got.status, got.clarification) == ("failed", "expired"), got
        assert (got.decisions, got.decision_runs, got.answered_events) == (0, 0, 0), got
        job = await xengine.get_job(got.job_id)
        assert job.error is not None and job.error.get("type") == "ClarificationTimeout", job
    if at_deadline.status_code == 200:
        assert (results[exact].status, results[exact].decisions) == ("completed", 1)
        assert results[exact].result["approved"] is True
    else:
        assert (results[exact].status, results[exact].decisions) == ("failed", 0)

    accepted = [*client_log.accepted_ids(), crash["job_id"]]
    found = oracle.check(db_url, accepted, read_ledger(fleet.ledger))
    found.assert_ok(fleet.diagnostics())
    report(
        "R21",
        backend,
        f"decisions per question: duplicates {results[dup].decisions}, at deadline "
        f"{results[exact].decisions} ({at_deadline.status_code}), after deadline "
        f"{results[late].decisions}, silent {results[silent].decisions}, answered while "
        f"workers dead + decider SIGKILLed {crash['decisions']} (decision code ran "
        f"{crash['decision_runs']}x); statuses {statuses}",
        status_codes=statuses,
        decisions_per_question={
            "duplicates": results[dup].decisions,
            "at_deadline": results[exact].decisions,
            "after_deadline": results[late].decisions,
            "no_answer": results[silent].decisions,
            "worker_killed": crash["decisions"],
        },
        answers_recorded_per_question={
            "duplicates": results[dup].answered_events,
            "at_deadline": results[exact].answered_events,
            "after_deadline": results[late].answered_events,
            "no_answer": results[silent].answered_events,
            "worker_killed": crash["answered_events"],
        },
        exact_deadline_outcome=results[exact].status,
        worker_killed_decision_runs=crash["decision_runs"],
        worker_killed_recovery_s=crash["recovery_s"],
    )


async def answer_while_workers_die(
    server: Server, token: str, xengine: Engine, fleet: Fleet, workers: list[Proc]
) -> dict[str, Any]:
    """Every worker is SIGKILLed while a question is pending; the answer arrives with no
    worker alive; new workers start, and the one applying the decision is SIGKILLed in
    the middle of it. The decision is still recorded once and applied once."""
    async with async_client(server, token) as a:
        execution = await start_execution(a, "approve", input={"first_hold_s": 60.0})
        asked = await pending(a, execution)
        job_id = str(asked["job_id"])
        for proc in workers:
            proc.send(signal.SIGKILL)
        for proc in workers:
            assert await proc.wait_exit(10) == -signal.SIGKILL
        given = await answer(a, execution, True)
        again = await answer(a, execution, False)
        assert given.status_code == 200, given.text
        assert again.status_code == 409, again.text
        assert (await xengine.get_job(job_id)).status == "queued"

        fresh = [
            spawn_worker(fleet.procs, fleet.database_url, fleet.ledger, name=f"w{i}b")
            for i in (1, 2)
        ]
        await fleet.ready(xengine, *fresh)

        def decided() -> int | None:  # the decision's effect is written, the step holds
            writes = read_ledger(fleet.ledger).writes_of(job_id)
            return writes[0].pid if writes else None

        pid: int = await wait_for(decided, timeout=60, what="the decision is applied", fleet=fleet)
        decider = next(p for p in fresh if p.pid == pid)
        decider.send(signal.SIGKILL)
        killed_at = time.monotonic()
        assert await decider.wait_exit(10) == -signal.SIGKILL
        got = await verdict(a, xengine, fleet, execution)
        recovery_s = time.monotonic() - killed_at
    assert (got.status, got.clarification, got.answers) == (
        "completed",
        "answered",
        {"approve": True},
    )
    assert got.result["approved"] is True, got
    # recorded once, applied once (the re-run's effect write hit the key), run twice
    assert (got.answered_events, got.decisions, got.decision_runs) == (1, 1, 2), got
    writes = read_ledger(fleet.ledger).writes_of(job_id)
    assert [w.inserted for w in writes] == [True, False], writes
    history = [e.type for e in await event_list(xengine, job_id)]
    assert history.count("job.lease_expired") == 1, history
    return {
        "job_id": job_id,
        "statuses": [given.status_code, again.status_code],
        "decisions": got.decisions,
        "decision_runs": got.decision_runs,
        "answered_events": got.answered_events,
        "recovery_s": round(recovery_s, 3),
    }


# -- R22 -----------------------------------------------------------------------------------

CANCEL_GRACE_S = 1.0
#: the stubborn steps would run this long if nobody stopped them
STUBBORN_RUN_S = 8.0
#: cancel -> terminal must stay well below STUBBORN_RUN_S: the hard stop, not the step's
#: own end, must finish the job (a hang detector; the expected figure is the grace)
TERMINAL_BOUND_S = CANCEL_GRACE_S + 5.0


@dataclass
class CancelFigures:
    task: str
    to_terminal_s: float
    progress_in_grace: int  # progress recorded between the cancel and the hard stop
    writes_after_cancel: int  # events after job.cancelled, a result, memos
    body_outlived_s: float | None  # the step body's end after the terminal state


async def test_r22_cancel_steps_that_ignore_it(
    db_url: str, xengine: Engine, fleet: Fleet, client_log: ClientLog
) -> None:
    backend = backend_of(db_url)
    worker = spawn_worker(
        fleet.procs,
        db_url,
        fleet.ledger,
        name="worker",
        settings={"CONVEYOR_CANCEL_GRACE_S": str(CANCEL_GRACE_S)},
    )
    await fleet.ready(xengine, worker)
    tasks = ("stubborn_sync", "stubborn_async")
    ids = {
        task: await client_log.submit(xengine, JobSpec(task, {"run_s": STUBBORN_RUN_S}))
        for task in tasks
    }

    def running() -> bool:
        ledger = read_ledger(fleet.ledger)
        return all(ledger.starts(job_id) for job_id in ids.values())

    await wait_for(running, timeout=60, what="both steps run", fleet=fleet)
    await asyncio.sleep(5 * TICK_S)  # a few ticks of progress first
    cancelled_at: dict[str, float] = {}
    for task, job_id in ids.items():
        job = await xengine.cancel_job(job_id)
        cancelled_at[task] = time.monotonic()
        assert job.status == "active" and job.cancel_requested, job

    terminal_at: dict[str, float] = {}
    final: dict[str, Job] = {}

    async def all_terminal() -> bool:
        for task, job_id in ids.items():
            if task in terminal_at:
                continue
            job = await xengine.get_job(job_id)
            if job.status in ("completed", "failed", "cancelled"):
                terminal_at[task] = time.monotonic()
                final[task] = job
        return len(terminal_at) == len(ids)

    await wait_for(
        all_terminal, timeout=STUBBORN_RUN_S + 30, what="cancelled jobs end", interval=0.05
    )
    leases = {task: lease_view(sync_engine(db_url), ids[task]) for task in tasks}

    # let the stubborn bodies run to their own end: whatever they try then must be refused
    def bodies_ended() -> bool:
        ledger = read_ledger(fleet.ledger)
        return all(ledger.ends(job_id) for job_id in ids.values())

    await wait_for(bodies_ended, timeout=STUBBORN_RUN_S + 30, what="the bodies end", fleet=fleet)
    await asyncio.sleep(1.0)  # and anything they reported has had time to be settled
    assert worker.alive(), worker.diagnostics()
    ledger = read_ledger(fleet.ledger)
    figures: list[CancelFigures] = []
    probe = sync_engine(db_url)
    try:
        for task, job_id in ids.items():
            job = await xengine.get_job(job_id)
            history = await event_list(xengine, job_id)
            types = [e.type for e in history]
            assert job.status == "cancelled", (task, job)
            assert job.result is None, (task, job.result)
            assert leases[task].token is None and leases[task].status == "cancelled", leases
            assert types.count("job.cancelled") == 1, (task, types)
            cut = types.index("job.cancel_requested")
            end = types.index("job.cancelled")
            between = types[cut + 1 : end]
            assert set(between) <= {"job.progress"}, (task, between)
            with probe.connect() as conn:
                memos = conn.execute(
                    select(func.count())
                    .select_from(step_memos)
                    .where(step_memos.c.job_id == job_id)
                ).scalar_one()
            writes_after = len(types) - end - 1 + memos + (job.result is not None)
            body_end = ledger.ends(job_id)[-1].mono
            figures.append(
                CancelFigures(
                    task,
                    round(terminal_at[task] - cancelled_at[task], 3),
                    len(between),
                    writes_after,
                    round(body_end - terminal_at[task], 3),
                )
            )
    finally:
        probe.dispose()
    for fig in figures:
        assert fig.writes_after_cancel == 0, figures
        assert fig.to_terminal_s <= TERMINAL_BOUND_S, figures
    found = oracle.check(db_url, client_log.accepted_ids(), ledger)
    found.assert_ok(fleet.diagnostics())
    report(
        "R22",
        backend,
        ", ".join(
            f"{f.task}: cancel -> cancelled {f.to_terminal_s}s (grace {CANCEL_GRACE_S}s), "
            f"writes after cancel {f.writes_after_cancel}"
            for f in figures
        ),
        cancel_grace_s=CANCEL_GRACE_S,
        cancel_to_terminal_s={f.task: f.to_terminal_s for f in figures},
        writes_after_cancel={f.task: f.writes_after_cancel for f in figures},
        progress_recorded_during_grace={f.task: f.progress_in_grace for f in figures},
        body_kept_running_after_terminal_s={f.task: f.body_outlived_s for f in figures},
    )
