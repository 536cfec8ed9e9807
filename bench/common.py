"""What the benchmarks share: the command line's common options, throwaway databases,
commit counting, workers built with every knob exposed, worker processes, a ``conveyor
serve`` subprocess, rounds, percentiles and reporting."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import importlib
import json
import multiprocessing
import os
import pstats
import queue
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue as MpQueue
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import IO, Any, Literal, TypedDict, TypeVar

import httpx2 as httpx
from sqlalchemy import Connection, Engine, create_engine, event, func, select, text
from sqlalchemy.engine import make_url

from bench.apps import APP_SPEC
from conveyor.app import Conveyor
from conveyor.runtime import Runtime, upgrade_database
from conveyor.settings import Settings
from conveyor.store.database import Database, Tx
from conveyor.store.factory import open_database
from conveyor.store.schema import jobs
from conveyor.worker.runtime import Worker, WorkerSettings

T = TypeVar("T")
L = TypeVar("L", bound=str)

Backend = Literal["sqlite", "postgres"]
Synchronous = Literal["FULL", "NORMAL"]

PG_ADMIN_URL = os.environ.get("CONVEYOR_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
DEFAULT_PREFETCH_WINDOW_S = WorkerSettings().prefetch_window_s


# -- command line ---------------------------------------------------------------------------

BACKENDS: tuple[Backend, ...] = ("sqlite", "postgres")
SYNCHRONOUS_MODES: tuple[Synchronous, ...] = ("FULL", "NORMAL")


def add_database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", choices=BACKENDS, default="sqlite")
    parser.add_argument(
        "--sqlite-synchronous",
        choices=SYNCHRONOUS_MODES,
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


def bench_parser(prog: str, description: str | None, *, raw: bool) -> argparse.ArgumentParser:
    """A benchmark's parser with the database options (:func:`add_database_options`);
    ``raw``: the description is printed as written. The benchmark adds ``--timeout``
    (:func:`shared_options` reads it) and its own options."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter,
    )
    add_database_options(parser)
    return parser


def add_prefetch_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prefetch-window",
        type=float,
        default=None,
        help=f"WorkerSettings.prefetch_window_s (default {DEFAULT_PREFETCH_WINDOW_S}; 0: off)",
    )


def choice_arg(value: str, choices: Sequence[L], what: str) -> L:
    """``value`` as the one of ``choices`` (a ``Literal``) it equals."""
    for found in choices:
        if value == found:
            return found
    raise ValueError(f"unknown {what} {value!r}")


def backend_arg(value: str) -> Backend:
    return choice_arg(value, BACKENDS, "backend")


def synchronous_arg(value: str) -> Synchronous:
    return choice_arg(value, SYNCHRONOUS_MODES, "synchronous mode")


def optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class BenchOptions:
    """The options every benchmark has: the database ones and ``--timeout``."""

    db: Backend
    synchronous: Synchronous
    timeout_s: float
    quiet_wait_s: float
    sqlite_dir: str | None
    pg_admin_url: str


class SharedOptions(TypedDict):
    """The fields of :class:`BenchOptions`, as :func:`shared_options` reads them."""

    db: Backend
    synchronous: Synchronous
    timeout_s: float
    quiet_wait_s: float
    sqlite_dir: str | None
    pg_admin_url: str


def shared_options(ns: argparse.Namespace) -> SharedOptions:
    """The :class:`BenchOptions` fields of a parsed command line, to pass on with ``**``."""
    return SharedOptions(
        db=backend_arg(str(ns.db)),
        synchronous=synchronous_arg(str(ns.sqlite_synchronous)),
        timeout_s=float(ns.timeout),
        quiet_wait_s=float(ns.quiet_wait),
        sqlite_dir=optional_str(ns.sqlite_dir),
        pg_admin_url=str(ns.pg_admin_url),
    )


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


def prefetch_window(prefetch_window_s: float | None) -> float:
    """The prefetch window a worker gets: ``None`` is the worker's default."""
    return DEFAULT_PREFETCH_WINDOW_S if prefetch_window_s is None else prefetch_window_s


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
    settings = WorkerSettings(
        concurrency=options.concurrency,
        queues=None,
        lease_ttl_s=s.lease_ttl_s,
        heartbeat_interval_s=s.heartbeat_interval_s,
        poll_max_s=s.poll_max_s,
        sweep_interval_s=s.sweep_interval_s,
        drain_timeout_s=s.drain_timeout_s,
        cancel_grace_s=s.cancel_grace_s,
        prefetch_window_s=prefetch_window(options.prefetch_window_s),
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
        return await gather_reports(self._reports, self.processes, timeout_s)


async def gather_reports(
    reports: MpQueue[T], processes: Sequence[BaseProcess], timeout_s: float
) -> list[T]:
    """The reports of ``processes`` (one each) until all are in, every process has exited
    or ``timeout_s`` is up; then every process is joined (killed at the deadline)."""
    found: list[T] = []
    deadline = time.monotonic() + timeout_s
    while len(found) < len(processes) and time.monotonic() < deadline:
        try:
            found.append(await asyncio.to_thread(reports.get, True, 0.5))
        except queue.Empty:
            if all(p.exitcode is not None for p in processes):
                break
    for process in processes:
        await asyncio.to_thread(process.join, max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            process.kill()
            process.join()
    return found


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


def ms(seconds: float) -> float:
    return rounded(seconds * 1000.0, 3)


def db_figures(opts: BenchOptions) -> dict[str, Any]:
    """The database a round ran on, as the JSON line has it."""
    return {
        "db": opts.db,
        "sqlite_synchronous": opts.synchronous if opts.db == "sqlite" else None,
    }


def db_label(figures: dict[str, Any]) -> str:
    """The database of :func:`db_figures` for a summary line: ``postgres``, ``sqlite/FULL``."""
    if figures["db"] != "sqlite":
        return str(figures["db"])
    return f"sqlite/{figures['sqlite_synchronous']}"


def combine_rounds(
    rounds: list[dict[str, Any]], medians: Sequence[str], every: Sequence[str] = ()
) -> dict[str, Any]:
    """One set of figures for several rounds: the last round's, with the median of each of
    ``medians`` (None where no round has it), every round's value of each of ``every``
    (as ``<name>_all``), ``repeat``, and ``ok`` if every round was. One round's figures
    are returned as they are."""
    if len(rounds) == 1:
        return rounds[0]
    combined = dict(rounds[-1])
    for name in medians:
        values = [r[name] for r in rounds if r.get(name) is not None]
        combined[name] = statistics.median(values) if values else None
    for name in every:
        combined[f"{name}_all"] = [r.get(name) for r in rounds]
    combined["repeat"] = len(rounds)
    combined["ok"] = all(r["ok"] for r in rounds)
    return combined


def print_profile(profile: cProfile.Profile | str, cumulative: int) -> None:
    """The top entries of a profile (or of a stats file) to stderr: 30 by own time,
    ``cumulative`` by cumulative time."""
    stats = pstats.Stats(profile, stream=sys.stderr)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(cumulative)


# -- rounds ---------------------------------------------------------------------------------


def run_rounds(
    opts: BenchOptions,
    measure: Callable[[str], Coroutine[Any, Any, dict[str, Any]]],
    summary: Callable[[dict[str, Any]], str],
    repeat: int = 1,
) -> list[dict[str, Any]]:
    """``repeat`` rounds, each (after waiting for a quiet machine if asked to) measured by
    ``measure`` on a fresh throwaway database; each round's summary line is printed."""
    rounds: list[dict[str, Any]] = []
    for _ in range(repeat):
        if opts.quiet_wait_s > 0:
            wait_quiet(opts.quiet_wait_s)
        with throwaway_database(
            opts.db, pg_admin_url=opts.pg_admin_url, sqlite_dir=opts.sqlite_dir
        ) as url:
            figures = asyncio.run(measure(url))
        print(summary(figures), flush=True)
        rounds.append(figures)
    return rounds


def finish(figures: dict[str, Any]) -> int:
    """Print the JSON line; the exit status (1 if the figures say it was not ``ok``)."""
    emit_json(figures)
    return 0 if figures.get("ok", True) else 1


# -- a ``conveyor serve`` process -------------------------------------------------------------

API = "/api/v1"
ADMIN = "bench-admin"
REPO = Path(__file__).resolve().parent.parent
CONVEYOR = str(Path(sys.executable).parent / "conveyor")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            raw = handle.read()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB, from /proc/<pid>/status."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    found[name] = int(value.split()[0])
    except OSError:
        pass
    return found


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGINT (a graceful shutdown), then SIGKILL after 45 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(45)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Server:
    """``conveyor serve`` in a subprocess, and any companion processes started with it
    (same environment); their output goes to one temporary file."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    password: str
    env: dict[str, str]
    log: IO[bytes]
    companions: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        self.log.flush()
        self.log.seek(0)
        return "\n".join(self.log.read().decode(errors="replace").splitlines()[-lines:])

    def cpu_s(self) -> float | None:
        return process_cpu_s(self.process.pid)

    def start_companion(self, command: list[str]) -> subprocess.Popen[bytes]:
        """Another process (a ``conveyor worker``, say), stopped before the server."""
        process = subprocess.Popen(
            command, cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.companions.append(process)
        return process


@contextlib.contextmanager
def conveyor_serve(
    url: str,
    synchronous: Synchronous,
    *,
    workers: int,
    launcher: Sequence[str] = (CONVEYOR,),
    extra_env: dict[str, str] | None = None,
    clean_env: bool = False,
) -> Iterator[Server]:
    """``<launcher> serve --app bench.apps:app --workers <workers>`` on ``url`` (a free
    port on 127.0.0.1; the first admin ``ADMIN`` with a random password, a random JWT
    secret); ``clean_env``: without this process's ``CONVEYOR_*`` variables. Stopped
    with SIGINT on the way out (SIGKILL if it takes more than 45 s)."""
    port = free_port()
    password = secrets.token_urlsafe(18)
    env = {
        **{k: v for k, v in os.environ.items() if not (clean_env and k.startswith("CONVEYOR_"))},
        "CONVEYOR_ADMIN_USERNAME": ADMIN,
        "CONVEYOR_ADMIN_PASSWORD": password,
        "CONVEYOR_JWT_SECRET": secrets.token_urlsafe(48),
        "CONVEYOR_SQLITE_SYNCHRONOUS": synchronous,
        **(extra_env or {}),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [
        *launcher,
        "serve",
        "--app",
        APP_SPEC,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--database-url",
        url,
        "--log-level",
        "warning",
    ]
    with tempfile.TemporaryFile(prefix="conveyor_bench_server_") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        server = Server(process, "127.0.0.1", port, password, env, log)
        try:
            yield server
        finally:
            for companion in reversed(server.companions):
                stop_process(companion)
            stop_process(process)


async def wait_ready(server: Server, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5.0) as client:
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited ({server.process.returncode}):\n{server.log_tail()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/readyz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not get ready:\n{server.log_tail()}")
            await asyncio.sleep(0.05)


async def login(server: Server) -> str:
    """A bearer token of the server's first admin."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30.0) as client:
        response = await client.post(
            f"{API}/auth/token", json={"username": ADMIN, "password": server.password}
        )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token
