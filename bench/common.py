"""What the benchmarks share: throwaway databases, commit counting, workers built with
every knob exposed, worker processes, percentiles and reporting."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import multiprocessing
import os
import queue
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue as MpQueue
from multiprocessing.synchronize import Event as MpEvent
from typing import Any, Literal, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, func, select, text
from sqlalchemy.engine import make_url

from conveyor.app import Conveyor
from conveyor.runtime import Runtime, upgrade_database
from conveyor.settings import Settings
from conveyor.store.database import Database, Tx
from conveyor.store.factory import open_database
from conveyor.store.schema import jobs
from conveyor.worker.runtime import Worker, WorkerSettings

T = TypeVar("T")

Backend = Literal["sqlite", "postgres"]
Synchronous = Literal["FULL", "NORMAL"]

PG_ADMIN_URL = os.environ.get("CONVEYOR_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
DEFAULT_PREFETCH_WINDOW_S = WorkerSettings().prefetch_window_s


# -- command line ---------------------------------------------------------------------------


def add_database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--sqlite-synchronous",
        choices=("FULL", "NORMAL"),
        default="FULL",
        help="SQLite's PRAGMA synchronous (default FULL)",
    )
    parser.add_argument(
        "--sqlite-dir",
        default=None,
        help="where the throwaway SQLite file goes (default: the system temp directory)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before measuring, wait up to this long for the machine to be idle",
    )
    parser.add_argument(
        "--pg-admin-url",
        default=PG_ADMIN_URL,
        help="a PostgreSQL URL allowed to CREATE DATABASE (env CONVEYOR_BENCH_PG)",
    )


def backend_arg(value: str) -> Backend:
    if value == "sqlite":
        return "sqlite"
    if value == "postgres":
        return "postgres"
    raise ValueError(f"unknown backend {value!r}")


def synchronous_arg(value: str) -> Synchronous:
    if value == "FULL":
        return "FULL"
    if value == "NORMAL":
        return "NORMAL"
    raise ValueError(f"unknown synchronous mode {value!r}")


# -- throwaway databases --------------------------------------------------------------------


def _psycopg_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


@contextlib.contextmanager
def throwaway_database(
    backend: Backend, *, pg_admin_url: str = PG_ADMIN_URL, sqlite_dir: str | None = None
) -> Iterator[str]:
    """A migrated, empty database URL; the database is deleted afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="conveyor_bench_", dir=sqlite_dir) as tmp:
            url = f"sqlite:///{tmp}/bench.db"
            upgrade_database(url)
            yield url
        return
    name = f"conveyor_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_psycopg_url(pg_admin_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            url = make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
            upgrade_database(url)
            yield url
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def make_settings(url: str, synchronous: Synchronous) -> Settings:
    return Settings(database_url=url, sqlite_synchronous=synchronous)


# -- counting write transactions ------------------------------------------------------------


@dataclass
class WriteStats:
    """Write transactions committed through one or more :class:`Database` instances."""

    commits: int = 0
    seconds: float = 0.0  # wall time spent inside write() (on SQLite: on the event loop)

    def reset(self) -> None:
        self.commits = 0
        self.seconds = 0.0


def count_writes(db: Database, stats: WriteStats) -> Database:
    """Wrap ``db.write`` on this instance so every committed transaction is counted.

    The product code is untouched: only the instance attribute is shadowed. A call that
    raises committed nothing and is not counted (lock retries happen inside one call).
    """
    original = db.write

    async def write(fn: Callable[[Tx], T]) -> T:
        started = time.perf_counter()
        result = await original(fn)
        stats.commits += 1
        stats.seconds += time.perf_counter() - started
        return result

    db.write = write  # type: ignore[method-assign]
    return db


# -- counting SQL statements -----------------------------------------------------------------


@dataclass
class StatementStats:
    """SQL statements sent through one :class:`Database` (each one a round trip on
    PostgreSQL; an ``executemany`` counts once), plus transactions and pool checkouts."""

    statements: int = 0
    commits: int = 0
    checkouts: int = 0
    by_statement: Counter[str] = field(default_factory=Counter)

    def reset(self) -> None:
        self.statements = self.commits = self.checkouts = 0
        self.by_statement.clear()

    def top(self, n: int = 15) -> list[tuple[str, int]]:
        return self.by_statement.most_common(n)


def _sync_engine(db: Database) -> Engine:
    """The SQLAlchemy engine behind a database (the asyncio engine's sync facade)."""
    found = getattr(db, "engine", None) or getattr(db, "_engine", None)
    sync = getattr(found, "sync_engine", found)
    if not isinstance(sync, Engine):
        raise TypeError(f"cannot find the SQLAlchemy engine of {type(db).__name__}")
    return sync


def _statement_key(statement: str) -> str:
    """A statement shortened to what tells it apart (long IN lists folded)."""
    words = " ".join(statement.split())
    return words if len(words) <= 110 else f"{words[:107]}..."


def count_statements(db: Database, stats: StatementStats) -> Callable[[], None]:
    """Count the statements, commits and pool checkouts of ``db`` (SQLAlchemy events on
    its engine: nothing in the product changes). Returns a function that stops counting.
    """
    engine = _sync_engine(db)

    def on_execute(
        _conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, _many: bool
    ) -> None:
        stats.statements += 1
        stats.by_statement[_statement_key(statement)] += 1

    def on_commit(_conn: Any) -> None:
        stats.commits += 1

    def on_checkout(_dbapi: Any, _record: Any, _proxy: Any) -> None:
        stats.checkouts += 1

    event.listen(engine, "before_cursor_execute", on_execute)
    event.listen(engine, "commit", on_commit)
    event.listen(engine.pool, "checkout", on_checkout)

    def stop() -> None:
        event.remove(engine, "before_cursor_execute", on_execute)
        event.remove(engine, "commit", on_commit)
        event.remove(engine.pool, "checkout", on_checkout)

    return stop


# -- workers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int = 4
    prefetch_window_s: float | None = None  # None: the worker's default
    kind: str = "process"


@dataclass
class CountedWorker:
    worker: Worker
    loop_writes: WriteStats  # the claim/settle loop (the runtime's database)
    heartbeat_writes: WriteStats  # lease renewals, on the heartbeat thread's database


def build_worker(runtime: Runtime, options: WorkerOptions) -> CountedWorker:
    """Like :meth:`Runtime.worker`, with ``prefetch_window_s`` exposed and commits counted.

    Installs the counter on the runtime's database: writes made through the runtime's
    engine (enqueues included) count as well, so reset ``loop_writes`` before measuring.
    """
    s = runtime.settings
    loop_writes = WriteStats()
    heartbeat_writes = WriteStats()
    count_writes(runtime.engine.db, loop_writes)
    window = (
        DEFAULT_PREFETCH_WINDOW_S
        if options.prefetch_window_s is None
        else options.prefetch_window_s
    )
    settings = WorkerSettings(
        concurrency=options.concurrency,
        queues=None,
        lease_ttl_s=s.lease_ttl_s,
        heartbeat_interval_s=s.heartbeat_interval_s,
        poll_max_s=s.poll_max_s,
        sweep_interval_s=s.sweep_interval_s,
        drain_timeout_s=s.drain_timeout_s,
        cancel_grace_s=s.cancel_grace_s,
        prefetch_window_s=window,
        kind=options.kind,
    )

    def open_db() -> Database:
        db = open_database(
            s.database_url, sqlite_synchronous=s.sqlite_synchronous, pool_size=s.pool_size
        )
        return count_writes(db, heartbeat_writes)

    worker = Worker(runtime.engine, runtime.app.tasks, settings, open_db=open_db)
    return CountedWorker(worker, loop_writes, heartbeat_writes)


def load_app(spec: str) -> Conveyor:
    module_name, _, attribute = spec.partition(":")
    found = getattr(importlib.import_module(module_name), attribute or "app")
    if not isinstance(found, Conveyor):
        raise TypeError(f"{spec} is not a Conveyor app")
    return found


# -- worker processes -----------------------------------------------------------------------


@dataclass(frozen=True)
class ChildConfig:
    url: str
    synchronous: Synchronous
    app: str
    worker: WorkerOptions


@dataclass(frozen=True)
class ChildReport:
    worker_id: str
    finished: int
    commits: int
    heartbeat_commits: int
    write_s: float
    error: str | None = None


def _child_main(
    config: ChildConfig,
    ready: MpEvent,
    go: MpEvent,
    stop: MpEvent,
    reports: MpQueue[ChildReport],
) -> None:
    """A worker process: open, say ready, start on ``go``, report and stop on ``stop``."""
    try:
        report = asyncio.run(_child(config, ready, go, stop))
    except BaseException as exc:
        reports.put(ChildReport("?", 0, 0, 0, 0.0, error=f"{type(exc).__name__}: {exc}"))
        raise
    reports.put(report)


async def _child(config: ChildConfig, ready: MpEvent, go: MpEvent, stop: MpEvent) -> ChildReport:
    runtime = Runtime(load_app(config.app), make_settings(config.url, config.synchronous))
    await runtime.open(upgrade=False)
    try:
        counted = build_worker(runtime, config.worker)
        worker = counted.worker
        ready.set()
        await asyncio.to_thread(go.wait)
        counted.loop_writes.reset()
        counted.heartbeat_writes.reset()
        await worker.start()
        await asyncio.to_thread(stop.wait)
        report = ChildReport(
            worker.worker_id,
            worker.finished,
            counted.loop_writes.commits,
            counted.heartbeat_writes.commits,
            counted.loop_writes.seconds,
        )
        await worker.stop()
        return report
    finally:
        await runtime.close()


@dataclass
class WorkerProcesses:
    """``count`` worker processes (spawned, so nothing of this process leaks into them)."""

    config: ChildConfig
    count: int
    processes: list[SpawnProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._ready = [ctx.Event() for _ in range(self.count)]
        self._go = ctx.Event()
        self._stop = ctx.Event()
        self._reports: MpQueue[ChildReport] = ctx.Queue()
        self.processes = [
            ctx.Process(
                target=_child_main,
                args=(self.config, ready, self._go, self._stop, self._reports),
                name=f"bench-worker-{i}",
                daemon=True,
            )
            for i, ready in enumerate(self._ready)
        ]

    def start(self) -> None:
        for process in self.processes:
            process.start()

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(r.is_set() for r in self._ready):
            dead = [p for p in self.processes if p.exitcode is not None]
            if dead:
                raise RuntimeError(f"worker process {dead[0].name} exited ({dead[0].exitcode})")
            if time.monotonic() > deadline:
                raise TimeoutError("worker processes did not get ready in time")
            await asyncio.sleep(0.02)

    def go(self) -> None:
        self._go.set()

    async def stop(self, timeout_s: float = 60.0) -> list[ChildReport]:
        """Tell every process to report and stop; return their reports."""
        self._stop.set()
        self._go.set()  # a process still waiting for go must not hang
        reports: list[ChildReport] = []
        deadline = time.monotonic() + timeout_s
        while len(reports) < self.count and time.monotonic() < deadline:
            try:
                reports.append(await asyncio.to_thread(self._reports.get, True, 0.5))
            except queue.Empty:
                if all(p.exitcode is not None for p in self.processes):
                    break
        for process in self.processes:
            await asyncio.to_thread(process.join, max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                process.kill()
                process.join()
        return reports


# -- reading the jobs table -----------------------------------------------------------------


def _count_unfinished(conn: Connection) -> int:
    """Jobs still queued or running (both statuses have a partial index)."""
    stmt = select(func.count()).select_from(jobs).where(jobs.c.status.in_(("queued", "active")))
    return int(conn.execute(stmt).scalar_one())


async def count_unfinished(db: Database) -> int:
    return await db.read(_count_unfinished)


async def status_counts(db: Database) -> dict[str, int]:
    def body(conn: Connection) -> dict[str, int]:
        rows = conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status)).all()
        return {str(status): int(n) for status, n in rows}

    return await db.read(body)


# -- the machine's CPU -------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuSample:
    wall: float  # time.perf_counter()
    own: float  # this process's CPU seconds, every thread (time.process_time())
    machine_busy: float | None  # CPU seconds all cores spent busy since boot (/proc/stat)


def _machine_busy() -> float | None:
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal ...
    ticks = [int(v) for v in fields[1:9]]
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
    return busy / os.sysconf("SC_CLK_TCK")


def cpu_sample() -> CpuSample:
    return CpuSample(time.perf_counter(), time.process_time(), _machine_busy())


def cpu_usage(before: CpuSample, after: CpuSample) -> dict[str, float | None]:
    """Cores kept busy between two samples: by this process, and by the whole machine
    (the difference is other processes: the database server, worker processes, or
    anything else running on the machine, which makes the figures noisy)."""
    wall = max(after.wall - before.wall, 1e-9)
    machine = None
    if before.machine_busy is not None and after.machine_busy is not None:
        machine = rounded((after.machine_busy - before.machine_busy) / wall, 2)
    return {"own_cpu_cores": rounded((after.own - before.own) / wall, 2), "machine_cores": machine}


def wait_quiet(max_wait_s: float, busy_cores: float = 0.25) -> float | None:
    """Wait (at most ``max_wait_s``) until the machine's other load is below ``busy_cores``
    over half a second; return the last load seen (None where /proc/stat is missing)."""
    deadline = time.monotonic() + max_wait_s
    load: float | None = None
    while True:
        before = cpu_sample()
        time.sleep(0.5)
        after = cpu_sample()
        load = cpu_usage(before, after)["machine_cores"]
        if load is None or load < busy_cores or time.monotonic() >= deadline:
            return load


# -- figures --------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of sorted values, linearly interpolated."""
    if not sorted_values:
        return float("nan")
    rank = (len(sorted_values) - 1) * p / 100.0
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def emit_json(figures: dict[str, Any]) -> None:
    """The machine-readable line (always the last line a benchmark prints)."""
    print(json.dumps(figures, sort_keys=True), flush=True)


def rounded(value: float, digits: int = 3) -> float:
    return round(value, digits)
