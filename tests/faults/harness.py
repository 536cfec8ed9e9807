"""The fault-test harness: worker processes, the client log, figures, timing helpers.

Processes are started here (through :class:`tests.acceptance.conftest.Processes`), their
pids are recorded, and only those pids are ever signalled. Workers run
``tests.faults.app:app`` with short leases (:data:`FAST`), so recovery takes seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import statistics
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine as SyncEngine
from sqlalchemy import create_engine, select

from conveyor.domain.events import Event
from conveyor.engine.core import Engine
from conveyor.engine.models import (
    Cancelled,
    Completed,
    Failed,
    Job,
    JobSpec,
    Outcome,
    Progress,
    Released,
)
from conveyor.errors import LeaseLostError
from conveyor.store.schema import jobs
from conveyor.store.sql import db_now
from conveyor.store.url import sync_url
from conveyor.worker.runtime import Worker, WorkerSettings
from tests.acceptance.conftest import (
    CONVEYOR_BIN,
    Proc,
    Processes,
    process_env,
    registered_worker,
    wait_for_jobs,
)
from tests.conftest import wait_until
from tests.faults.ledger import LEDGER_ENV
from tests.servers import API_APP, Server, start_server

FAULTS_APP = "tests.faults.app:app"

LEASE_TTL_S = 2.0
HEARTBEAT_S = 0.3
SWEEP_S = 0.3
POLL_MAX_S = 0.2
#: the worker's sweep sleeps ``interval * U(0.75, 1.25)`` between runs
SWEEP_MAX_S = SWEEP_S * 1.25
#: the recovery bound of RELIABILITY.md: a lost lease is swept within TTL + sweep
RECOVERY_BOUND_S = LEASE_TTL_S + SWEEP_S
#: how much later than its interval a sweep may run on a loaded 2-core machine (other
#: processes, SQLite's single writer): a sweep later than SWEEP_MAX_S + this is a failure
SWEEP_SLACK_S = 2.5

FAST: dict[str, str] = {
    "CONVEYOR_LEASE_TTL_S": str(LEASE_TTL_S),
    "CONVEYOR_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
    "CONVEYOR_SWEEP_INTERVAL_S": str(SWEEP_S),
    "CONVEYOR_POLL_MAX_S": str(POLL_MAX_S),
    "CONVEYOR_DRAIN_TIMEOUT_S": "20",
}

#: seed of every randomised choice; a failing run is repeated with the same value
SEED = int(os.environ.get("CONVEYOR_FAULTS_SEED", "20250611"))


def rng_for(*parts: object) -> random.Random:
    """A random generator seeded from :data:`SEED` and the test's identity."""
    return random.Random(":".join([str(SEED), *map(str, parts)]))


# -- processes ---------------------------------------------------------------------------


@dataclass
class Fleet:
    """Worker processes of one test (on top of the acceptance tests' ``Processes``)."""

    procs: Processes
    database_url: str
    ledger: Path
    worker_ids: dict[int, str] = field(default_factory=dict)  # pid -> worker id

    def spawn(
        self,
        name: str,
        *,
        concurrency: int = 2,
        queues: Sequence[str] | None = None,
        faults: str | None = None,
        settings: Mapping[str, str] | None = None,
        prefix: Sequence[str] = (),
        app: str = FAULTS_APP,
    ) -> Proc:
        """``conveyor worker --app tests.faults.app:app``; ``faults`` arms fault points
        (``"mid_step:kill@2,drop_notify"``), ``settings`` adds environment variables (any
        ``CONVEYOR_*`` setting, ``PGAPPNAME``, libfaketime's), ``prefix`` goes before the
        command (``["faketime", "-f", "+300s"]``)."""
        env = {
            "CONVEYOR_DATABASE_URL": self.database_url,
            "LEDGER_PATH": str(self.ledger),
            **FAST,
            **(settings or {}),
        }
        if faults:
            env["CONVEYOR_FAULTS"] = faults
        args = [*prefix, str(CONVEYOR_BIN), "worker", "--app", app]
        args += ["--concurrency", str(concurrency)]
        if queues:
            args += ["--queues", ",".join(queues)]
        return self.procs.spawn(name, args, process_env(env))

    async def ready(self, engine: Engine, *workers: Proc, timeout: float = 30.0) -> list[str]:
        """Wait until every worker registered; their worker ids."""
        ids = await asyncio.gather(*(registered_worker(engine, w, timeout) for w in workers))
        for proc, worker_id in zip(workers, ids, strict=True):
            self.worker_ids[proc.pid] = worker_id
        return list(ids)

    def diagnostics(self) -> str:
        return self.procs.diagnostics()


async def wait_exit_at(proc: Proc, timeout: float) -> tuple[int, float]:
    """Wait for ``proc`` to exit: its exit code and when (``time.monotonic()``, polled
    every 5 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        code = proc.popen.poll()
        if code is not None:
            return code, time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{proc.name} still running after {timeout}s\n{proc.diagnostics()}"
            )
        await asyncio.sleep(0.005)


# worker log lines (conveyor/worker/runtime.py) a fenced attempt leaves behind
REFUSED_RE = re.compile(r"outcome for job (\S+) refused: its lease was lost")
LOST_RE = re.compile(r"lost the lease of job (\S+); abandoning the attempt")
SELF_FENCE_RE = re.compile(r"job (\S+): lease not renewed in time; stopping the attempt")


@dataclass(frozen=True, slots=True)
class FenceLog:
    """What a worker logged about leases it lost, by job id."""

    refused: list[str]  # a write reached the database and changed nothing
    lost: list[str]  # a renewal found the lease gone
    self_fenced: list[str]  # the worker's own clock said the lease may be gone

    @classmethod
    def parse(cls, text: str) -> FenceLog:
        return cls(REFUSED_RE.findall(text), LOST_RE.findall(text), SELF_FENCE_RE.findall(text))

    def noticed(self) -> set[str]:
        return set(self.refused) | set(self.lost) | set(self.self_fenced)


# -- the client log ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submission:
    """One submit as the client saw it. ``status`` is the HTTP status, or 0 when no
    answer came back (connection reset, server killed)."""

    status: int
    job_id: str | None
    idempotency_key: str | None
    owner: str
    via: str  # "http" or "engine"
    at: float  # time.monotonic()
    note: str = ""

    @property
    def accepted(self) -> bool:
        return self.status in (200, 202) and self.job_id is not None


class ClientLog:
    """Every submit of a test, in order; the oracle's list of accepted jobs."""

    def __init__(self, path: Path | None = None) -> None:
        self.entries: list[Submission] = []
        self._path = path
        self._lock = threading.Lock()

    def record(
        self,
        status: int,
        job_id: str | None,
        idempotency_key: str | None,
        *,
        owner: str,
        via: str,
        note: str = "",
    ) -> Submission:
        entry = Submission(status, job_id, idempotency_key, owner, via, time.monotonic(), note)
        with self._lock:
            self.entries.append(entry)
            if self._path is not None:
                with self._path.open("a") as out:
                    out.write(json.dumps(asdict(entry)) + "\n")
        return entry

    def accepted_ids(self) -> list[str]:
        """Ids of accepted jobs, each once, in first-acceptance order."""
        seen: dict[str, None] = {}
        for entry in self.entries:
            if entry.accepted and entry.job_id is not None:
                seen.setdefault(entry.job_id)
        return list(seen)

    async def submit(self, engine: Engine, spec: JobSpec, *, owner: str = "faults") -> str:
        """Submit through the engine (what the API does after authentication)."""
        result = await engine.enqueue(spec, owner=owner)
        self.record(
            202 if result.created else 200,
            result.job.id,
            spec.idempotency_key,
            owner=owner,
            via="engine",
        )
        return result.job.id

    async def submit_many(
        self, engine: Engine, specs: Sequence[JobSpec], *, owner: str = "faults"
    ) -> list[str]:
        results = await engine.enqueue_many(specs, owner=owner)
        for spec, result in zip(specs, results, strict=True):
            self.record(
                202 if result.created else 200,
                result.job.id,
                spec.idempotency_key,
                owner=owner,
                via="engine",
            )
        return [r.job.id for r in results]


# -- the HTTP API ------------------------------------------------------------------------


#: the settings of :func:`serve_api`'s servers: fast sweeps and polls, the default cancel
#: grace and drain
SERVE_API_SETTINGS = {"CONVEYOR_SWEEP_INTERVAL_S": "0.2", "CONVEYOR_POLL_MAX_S": "0.2"}


def serve_api(
    database_url: str,
    tmp: Path,
    extra_env: Mapping[str, str] | None = None,
    *,
    app: str = API_APP,
    args: Sequence[str] = (),
) -> Server:
    """``conveyor serve --app tests.apps.api_app:app`` through
    :func:`tests.servers.start_server` (admin user, JWT secret, fast sweep; ``app`` and
    extra CLI ``args`` such as ``["--workers", "0"]`` may differ); never left running
    when the start fails or the test times out. Stop it with
    ``tests.servers.stop_server``, or SIGKILL ``server.process`` (ours)."""
    return start_server(
        database_url,
        tmp,
        app=app,
        args=args,
        settings=SERVE_API_SETTINGS,
        extra_env=extra_env,
    )


# -- reading the database directly -------------------------------------------------------


def pause_outside_write_lock(proc: Proc, database_url: str, tries: int = 200) -> None:
    """SIGSTOP ``proc`` at a moment it holds no SQLite write lock.

    SQLite has one writer per file: a process stopped between ``BEGIN IMMEDIATE`` and
    ``COMMIT`` (a heartbeat, say) keeps every other process from writing until it
    resumes. Pausing a zombie there would test that limit of SQLite, not the lease
    fencing, so on SQLite the pause is retried until the file is free.
    """
    proc.send(signal.SIGSTOP)
    if not database_url.startswith("sqlite"):
        return
    path = database_url.split("sqlite:///", 1)[1]
    for _ in range(tries):
        conn = sqlite3.connect(path, timeout=0.05, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            pass
        finally:
            conn.close()
        proc.send(signal.SIGCONT)
        time.sleep(0.005)
        proc.send(signal.SIGSTOP)
    raise AssertionError(f"{proc.name} held the SQLite write lock at every try")


def sync_engine(database_url: str) -> SyncEngine:
    """A synchronous SQLAlchemy engine on Conveyor's database (for the oracle and probes)."""
    return create_engine(sync_url(database_url))


@dataclass(frozen=True, slots=True)
class LeaseView:
    status: str
    token: str | None
    expires_at: float | None  # lease_expires_at, Unix seconds
    expires_in_s: float | None  # lease_expires_at - DB now
    attempts: int
    worker_id: str | None


def lease_view(conn_engine: SyncEngine, job_id: str) -> LeaseView:
    with conn_engine.connect() as conn:
        row = conn.execute(
            select(
                jobs.c.status,
                jobs.c.lease_token,
                jobs.c.lease_expires_at,
                jobs.c.attempts,
                jobs.c.worker_id,
                db_now(),
            ).where(jobs.c.id == job_id)
        ).one()
    expires_at = None if row[2] is None else row[2].timestamp()
    expires_in = None if row[2] is None else (row[2] - row[5]).total_seconds()
    return LeaseView(row[0], row[1], expires_at, expires_in, row[3], row[4])


def leases_of(conn_engine: SyncEngine, worker_id: str) -> dict[str, float]:
    """The active jobs leased to ``worker_id``: lease_expires_at (Unix seconds) by job."""
    with conn_engine.connect() as conn:
        rows = conn.execute(
            select(jobs.c.id, jobs.c.lease_expires_at).where(
                jobs.c.worker_id == worker_id, jobs.c.status == "active"
            )
        ).all()
    return {str(r[0]): r[1].timestamp() for r in rows if r[1] is not None}


# -- figures -----------------------------------------------------------------------------

#: figures of every scenario run in this session, by "R1[sqlite]"-style keys
FIGURES: dict[str, dict[str, Any]] = {}


def distribution(values: Iterable[float]) -> dict[str, Any]:
    """n, median, p95 and max (rounded to ms), or n = 0."""
    data = sorted(values)
    if not data:
        return {"n": 0}
    p95 = data[min(len(data) - 1, max(0, round(0.95 * len(data)) - 1))]
    return {
        "n": len(data),
        "median": round(statistics.median(data), 3),
        "p95": round(p95, 3),
        "max": round(data[-1], 3),
    }


def report(scenario: str, backend: str, summary: str, **figures: Any) -> None:
    """Record a scenario's figures and print its one-line summary."""
    key = f"{scenario}[{backend}]"
    FIGURES[key] = {"seed": SEED, **figures}
    print(f"\n{scenario} [{backend}] seed={SEED}: {summary}")


def figures_table() -> str:
    lines = ["", f"fault scenarios (seed {SEED}):"]
    for key in sorted(FIGURES):
        shown = {k: v for k, v in FIGURES[key].items() if k != "seed"}
        lines.append(f"  {key}: {json.dumps(shown, sort_keys=True, default=str)}")
    return "\n".join(lines)


def write_figures(path: Path) -> None:
    path.write_text(json.dumps(FIGURES, indent=2, sort_keys=True, default=str) + "\n")


def backend_of(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgres"


async def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    fleet: Fleet | None = None,
    interval: float = 0.02,
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; a timeout
    shows the fleet's output."""
    details = fleet.diagnostics if fleet is not None else None
    return await wait_until(predicate, timeout, interval, what=what, details=details)


async def wait_terminal(
    engine: Engine, job_ids: Iterable[str], *, timeout: float, fleet: Fleet
) -> dict[str, Job]:
    """Wait until every job is completed, failed or cancelled; the jobs by id."""
    return await wait_for_jobs(engine, job_ids, timeout=timeout, procs=fleet.procs)


async def event_list(engine: Engine, job_id: str) -> list[Event]:
    return await engine.job_events(job_id, limit=1000)


async def events_total(engine: Engine, job_ids: list[str]) -> int:
    """How many events the jobs have, together."""
    return sum([len(await event_list(engine, job_id)) for job_id in job_ids])


@dataclass
class StaleReplay:
    """What replaying a stale attempt's writes did: each must have been refused."""

    attempted: int
    rejected: int
    renewed: set[str]  # leases the stale renewal still extended (must be none)


async def replay_stale_writes(
    engine: Engine, worker_id: str, tokens: Mapping[str, str], actor: str
) -> StaleReplay:
    """Every write a worker could still make with its old lease tokens, replayed through
    the engine: a renewal, each outcome, a memo and a document version."""
    attempted = rejected = 0
    renewal = await engine.renew_leases(worker_id, list(tokens.items()), load=len(tokens))
    attempted += len(tokens)
    rejected += len(renewal.lost & set(tokens))
    for job_id, token in tokens.items():
        outcomes: list[Outcome] = [
            Progress(job_id, token, 50, "stale progress"),
            Completed(job_id, token, {"stale": True}),
            Failed(job_id, token, {"type": "Stale", "message": "stale failure"}),
            Released(job_id, token),
            Cancelled(job_id, token),
        ]
        for outcome in outcomes:
            attempted += 1
            settled = await engine.settle([outcome])
            rejected += job_id in settled.lost
        writes: list[Awaitable[Any]] = [
            engine.put_memo(job_id, token, "stale", 1),
            engine.save_document(job_id, token, 0, "report", "stale", "stale", "test", actor),
        ]
        for write in writes:
            attempted += 1
            try:
                await write
            except LeaseLostError:
                rejected += 1
    return StaleReplay(attempted, rejected, set(renewal.renewed))


@contextlib.asynccontextmanager
async def inprocess_worker(
    engine: Engine,
    ledger: Path,
    *,
    concurrency: int = 2,
    queues: Sequence[str] | None = None,
) -> AsyncIterator[Worker]:
    """A real :class:`Worker` running ``tests.faults.app`` in the test's own process and
    event loop, with the fast lease settings: a rescuer or finisher that costs no process
    start-up (importing Conveyor takes seconds of CPU on a loaded 2-core machine).
    Its ledger rows carry the test's pid."""
    from tests.faults.app import app

    previous = os.environ.get(LEDGER_ENV)
    os.environ[LEDGER_ENV] = str(ledger)
    worker = Worker(
        engine,
        app.tasks,
        WorkerSettings(
            concurrency=concurrency,
            queues=list(queues) if queues is not None else None,
            lease_ttl_s=LEASE_TTL_S,
            heartbeat_interval_s=HEARTBEAT_S,
            poll_max_s=POLL_MAX_S,
            sweep_interval_s=SWEEP_S,
            drain_timeout_s=5.0,
            kind="embedded",
        ),
    )
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop(graceful=False)
        if previous is None:
            os.environ.pop(LEDGER_ENV, None)
        else:
            os.environ[LEDGER_ENV] = previous
