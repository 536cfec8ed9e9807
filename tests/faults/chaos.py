"""Randomised chaos runs of RELIABILITY.md (R9, R11, R18, R19, R20); not part of CI.

    python -m tests.faults.chaos --scenario {r9,r11,r18,r19,r20,all} --minutes N --seed S \\
        [--db postgres|sqlite]

Everything is real: a private PostgreSQL cluster per scenario (initdb into
``/tmp/conveyor-chaos/pg-PORT`` as the ``postgres`` user, ``fsync=on``, its own port, so
restarting it never touches the shared cluster on 5432 that other test runs use), worker
processes of ``tests.faults.app`` started through :class:`tests.faults.harness.Fleet`, a
real ``conveyor serve`` where clients submit over HTTP, and the user-space proxy of
:mod:`tests.faults.proxy`. Every random choice comes from ``--seed``. Only processes this
run started are ever signalled, and only the private cluster is ever stopped.

* ``r9``: PostgreSQL restarts under load: every U(5, 40) s ``pg_ctl stop -m immediate``,
  U(0, 2) s down, ``start``; two workers and a steady HTTP submit rate. Then one restart
  aimed at the lease-recovery sweep (fault point ``mid_recovery_sweep:sleep=3``).
* ``r11``: repeated partitions of one worker through the proxy (black hole, resets),
  then added latency (see :mod:`tests.faults.partition`).
* ``r18``: soak: small jobs at a steady rate (50k/h) with periodic R1 (SIGKILL a worker,
  start a new one) and R10 (``pg_terminate_backend``) faults; RSS, fds, connections and
  row counts sampled every 10 s.
* ``r19``: 3 idle workers (idle statement and transaction rate from the private
  cluster's statement log and ``pg_stat_database``), then a burst of 1k jobs; again with
  notifications disabled (fault point ``drop_notify``).
* ``r20``: 100k jobs of churn while another session holds a transaction open; claim
  latency against dead tuples; then the holder ends, vacuum, recovery.

Each scenario runs the oracle (:func:`tests.faults.oracle.check`) after quiescence, merges
its figures into ``tests/faults/.figures-chaos.json`` and prints a table. ``--db sqlite``
is accepted by ``r18`` only (the others are about PostgreSQL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import itertools
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psycopg

from conveyor import faults
from conveyor.engine.core import Engine, EngineSettings
from conveyor.engine.models import ClaimRequest, Completed, JobSpec
from conveyor.store.database import Database
from conveyor.store.factory import open_database
from conveyor.store.migrate import upgrade
from tests.acceptance.conftest import CONVEYOR_BIN, Proc, Processes, process_env
from tests.api.conftest import ADMIN_PASSWORD, JWT_SECRET, free_port, login
from tests.faults import oracle, partition
from tests.faults.app import app as faults_app
from tests.faults.harness import (
    FAST,
    FAULTS_APP,
    LEASE_TTL_S,
    ClientLog,
    Fleet,
    distribution,
)
from tests.faults.ledger import Execution, Ledger, init_ledger, read_ledger

FIGURES_FILE = Path(__file__).with_name(".figures-chaos.json")
WORK_ROOT = Path(os.environ.get("CONVEYOR_CHAOS_DIR", "/tmp/conveyor-chaos"))
PORTS = {"r9": 5499, "r11": 5498, "r18": 5497, "r19": 5496, "r20": 5495}
TERMINAL = ("completed", "failed", "cancelled")
DB_NAME = "conveyor_chaos"
#: every worker and API process of a chaos run gives up on a database call after this
DEADLINE = {"CONVEYOR_DB_CALL_DEADLINE_S": "5", "CONVEYOR_DB_CONNECT_TIMEOUT_S": "2"}


def pg_bin() -> Path:
    versions = sorted(os.listdir("/etc/postgresql"), key=lambda v: int(v.split(".")[0]))
    return Path("/usr/lib/postgresql") / versions[-1] / "bin"


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- a private PostgreSQL cluster ----------------------------------------------------------


class Cluster:
    """initdb into a directory of our own, on its own port; stopped only by us."""

    def __init__(self, port: int, conf: Mapping[str, str] | None = None) -> None:
        self.port = port
        self.dir = WORK_ROOT / f"pg-{port}"
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.conf = {
            "port": str(port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.dir}'",
            "fsync": "on",
            "max_connections": "200",
            "shared_buffers": "64MB",
            "log_line_prefix": "'%m [%p] db=%d '",
            **(conf or {}),
        }
        self.restarts: list[dict[str, float]] = []

    def _pg(self, *args: str, timeout: float = 120) -> str:
        cmd = ["runuser", "-u", "postgres", "--", str(pg_bin() / args[0]), *args[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def create(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        shutil.chown(self.dir, "postgres", "postgres")
        self._pg("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as conf:
            for key, value in self.conf.items():
                conf.write(f"{key} = {value}\n")
        self.start()

    def start(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, down_s: float) -> dict[str, float]:
        """Stop immediately, stay down ``down_s``, start; when each happened."""
        down = time.monotonic()
        self.stop("immediate")
        stopped = time.monotonic()
        time.sleep(down_s)
        self.start()
        up = time.monotonic()
        record = {"down": down, "stopped": stopped, "up": up, "down_s": up - down}
        self.restarts.append(record)
        return record

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("fast")
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url(), autocommit=True, connect_timeout=5)

    def create_database(self, name: str) -> str:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        url = self.url(name)
        upgrade(url)
        return url

    def query(self, sql: str, params: Sequence[Any] = (), database: str = "postgres") -> Any:
        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()


# -- one run --------------------------------------------------------------------------------


@dataclass
class Run:
    scenario: str
    seed: int
    minutes: float
    backend: str
    root: Path
    procs: Processes
    ledger: Path
    log: ClientLog
    rng: random.Random
    url: str
    cluster: Cluster | None
    db: Database
    engine: Engine
    fleet: Fleet
    notes: list[str] = field(default_factory=list)

    @property
    def deadline_at(self) -> float:
        return self.started + self.minutes * 60

    started: float = field(default_factory=time.monotonic)

    async def reopen(self) -> None:
        """A fresh engine (after the old pool's connections were killed or closed)."""
        with contextlib.suppress(Exception):
            await self.db.close()
        self.db = open_database(self.url)
        self.engine = make_engine(self.db)


def make_engine(db: Database) -> Engine:
    return Engine(
        db,
        catalog=faults_app,
        settings=EngineSettings(lease_ttl_s=LEASE_TTL_S, worker_heartbeat_timeout_s=60.0),
    )


@contextlib.asynccontextmanager
async def open_run(
    scenario: str, args: argparse.Namespace, conf: Mapping[str, str] | None = None
) -> Any:
    root = WORK_ROOT / f"{scenario}-seed{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    (root / "processes").mkdir(parents=True)
    cluster: Cluster | None = None
    if args.db == "postgres":
        cluster = Cluster(PORTS[scenario], conf)
        say(f"{scenario}: private PostgreSQL cluster on port {cluster.port} ({cluster.dir})")
        cluster.create()
        url = cluster.create_database(DB_NAME)
    else:
        url = f"sqlite:///{root / 'conveyor.db'}"
        upgrade(url)
    procs = Processes(root / "processes")
    ledger = init_ledger(root / "ledger.db")
    db = open_database(url)
    run = Run(
        scenario=scenario,
        seed=args.seed,
        minutes=args.minutes,
        backend=args.db,
        root=root,
        procs=procs,
        ledger=ledger,
        log=ClientLog(root / "client-log.jsonl"),
        rng=random.Random(f"{args.seed}:{scenario}"),
        url=url,
        cluster=cluster,
        db=db,
        engine=make_engine(db),
        fleet=Fleet(procs, url, ledger),
    )
    try:
        yield run
    finally:
        procs.cleanup()
        with contextlib.suppress(Exception):
            await run.db.close()
        if cluster is not None and not args.keep:
            cluster.destroy()
        say(f"{scenario}: processes' output and ledgers under {root}")


def worker_settings(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**DEADLINE, **(extra or {})}


def spawn_api(run: Run, extra: Mapping[str, str] | None = None) -> tuple[Proc, str, str]:
    """``conveyor serve`` (API only, no embedded worker); its process, URL and a token."""
    port = free_port()
    env = process_env(
        {
            "CONVEYOR_DATABASE_URL": run.url,
            "CONVEYOR_ADMIN_USERNAME": "admin",
            "CONVEYOR_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "CONVEYOR_JWT_SECRET": JWT_SECRET,
            "CONVEYOR_LOGIN_MAX_FAILURES": "1000",
            "CONVEYOR_TOKEN_TTL_S": str(7 * 86_400),
            "CONVEYOR_TOKEN_MAX_LIFETIME_S": str(7 * 86_400),
            "CONVEYOR_MAX_WAITING_JOBS_PER_USER": "10000000",
            **FAST,
            **DEADLINE,
            **(extra or {}),
        }
    )
    args = [str(CONVEYOR_BIN), "serve", "--app", FAULTS_APP, "--workers", "0"]
    proc = run.procs.spawn("api", [*args, "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/readyz", timeout=2.0).status_code == 200:
                break
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the API did not start\n{proc.diagnostics()}")
        time.sleep(0.2)
    return proc, base, login(base, "admin", ADMIN_PASSWORD)


# -- a steady HTTP client -------------------------------------------------------------------

RETRYABLE = {0, 409, 429, 502, 503, 504}


class Submitter(threading.Thread):
    """Submits one job every ``1/rate`` s over HTTP with an ``Idempotency-Key``; retries a
    submission (same key, same body) on 503/409/429/no answer for up to ``give_up_s``."""

    def __init__(
        self,
        base: str,
        token: str,
        log: ClientLog,
        rate: float,
        body_for: Callable[[int], dict[str, Any]],
        prefix: str,
        give_up_s: float = 120.0,
    ) -> None:
        super().__init__(name=f"submitter-{prefix}", daemon=True)
        self.base, self.token, self.log, self.rate = base, token, log, rate
        self.body_for, self.prefix, self.give_up_s = body_for, prefix, give_up_s
        self.halt = threading.Event()
        self.statuses: Counter[int] = Counter()
        self.bad: list[dict[str, Any]] = []  # 5xx other than 503
        self.missing_retry_after = 0
        self.logical = 0
        self.gave_up = 0
        self.answers: list[tuple[float, int]] = []  # (monotonic, status)
        self.submitted_at: dict[str, float] = {}  # job id -> first acceptance (monotonic)

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.base, headers=headers, timeout=15.0) as client:
            next_at = time.monotonic()
            i = 0
            while not self.halt.is_set():
                now = time.monotonic()
                if now < next_at:
                    self.halt.wait(next_at - now)
                    continue
                next_at = max(next_at + 1 / self.rate, now - 1 / self.rate)
                self._one(client, i)
                i += 1

    def _one(self, client: httpx.Client, i: int) -> None:
        key = f"{self.prefix}-{i:08d}"
        body = self.body_for(i)
        self.logical += 1
        give_up = time.monotonic() + self.give_up_s
        while True:
            retry_after = 0.2
            try:
                response = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": key})
            except httpx.TransportError as exc:
                status, job_id = 0, None
                self.log.record(0, None, key, owner="admin", via="http", note=type(exc).__name__)
            else:
                status = response.status_code
                job_id = None
                if status in (200, 202):
                    job_id = str(response.json()["id"])
                self.log.record(status, job_id, key, owner="admin", via="http")
                if status >= 500 and status != 503:
                    self.bad.append(
                        {"status": status, "body": response.text[:2000], "at": time.time()}
                    )
                if status == 503:
                    header = response.headers.get("retry-after")
                    if header is None:
                        self.missing_retry_after += 1
                    else:
                        retry_after = min(float(header), 0.5)
            now = time.monotonic()
            self.statuses[status] += 1
            self.answers.append((now, status))
            if job_id is not None:
                self.submitted_at.setdefault(job_id, now)
                return
            if status not in RETRYABLE or now > give_up or self.halt.is_set():
                self.gave_up += 1
                return
            time.sleep(retry_after)

    def stop(self) -> None:
        self.halt.set()
        self.join(60)

    def figures(self) -> dict[str, Any]:
        return {
            "logical_submissions": self.logical,
            "http_statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "http_5xx_other_than_503": len(self.bad),
            "http_503_without_retry_after": self.missing_retry_after,
            "gave_up": self.gave_up,
        }


# -- shared helpers -------------------------------------------------------------------------


def job_counts(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


async def wait_quiescent(run: Run, timeout: float) -> dict[str, int]:
    """Wait until no job is queued or active (every job in the private DB is ours)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = await asyncio.to_thread(_counts_any, run.url)
        if not any(k not in TERMINAL for k in counts):
            return counts
        if time.monotonic() > deadline:
            run.notes.append(f"not quiescent after {timeout}s: {counts}")
            return counts
        await asyncio.sleep(1.0)


def _counts_any(url: str) -> dict[str, int]:
    if url.startswith("sqlite"):
        import sqlite3

        path = url.split(":///", 1)[1]
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
            rows = conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
        return {str(r[0]): int(r[1]) for r in rows}
    return job_counts(url)


class IndexedLedger(Ledger):
    """The same snapshot with per-job lookups: the oracle asks for each job's rows, and a
    scan per job is quadratic over a soak's hundred thousand rows."""

    def __init__(self, base: Ledger) -> None:
        super().__init__(base.executions, base.effects, base.writes)
        by_job: dict[tuple[str, str], list[Execution]] = defaultdict(list)
        for row in base.executions:
            by_job[(row.job_id, row.phase)].append(row)
        object.__setattr__(self, "_by_job", by_job)

    def starts(self, job_id: str | None = None) -> list[Execution]:
        if job_id is None:
            return super().starts()
        found: list[Execution] = self.__dict__["_by_job"].get((job_id, "start"), [])
        return found

    def ends(self, job_id: str | None = None) -> list[Execution]:
        if job_id is None:
            return super().ends()
        found: list[Execution] = self.__dict__["_by_job"].get((job_id, "end"), [])
        return found


#: figures of the oracle that describe the whole database, not the jobs checked
_GLOBAL_FIGURES = {"events"}


def run_oracle(run: Run, ids: Sequence[str]) -> dict[str, Any]:
    """:func:`oracle.check` over every accepted job, in chunks: one query may bind at most
    65535 ids, and the oracle scans the effect writes once per completed job, so each
    chunk gets a ledger holding only its own jobs' rows. Counts are summed."""
    say(f"{run.scenario}: oracle over {len(ids)} accepted jobs")
    full = read_ledger(run.ledger)
    chunk = 2500 if full.writes else 30_000
    merged: dict[str, Any] = {}
    statuses: Counter[str] = Counter()
    violations: list[str] = []
    for first in range(0, max(len(ids), 1), chunk):
        part = list(ids[first : first + chunk])
        wanted = set(part)
        ledger = IndexedLedger(
            Ledger(
                [e for e in full.executions if e.job_id in wanted],
                [e for e in full.effects if e.job_id in wanted],
                [w for w in full.writes if w.job_id in wanted],
            )
        )
        found = oracle.check(run.url, part, ledger)
        violations.extend(found.violations)
        for name, value in found.figures().items():
            if name == "statuses":
                statuses.update(value)
            elif name in _GLOBAL_FIGURES:
                merged[name] = value
            else:
                merged[name] = merged.get(name, 0) + value
    merged["statuses"] = dict(statuses)
    merged["violations"] = len(violations)
    merged["violation_samples"] = list(dict.fromkeys(violations))[:10]
    return merged


def ledger_first_starts(run: Run) -> dict[str, tuple[float, int]]:
    """First start (monotonic, pid) of every job in the ledger."""
    first: dict[str, tuple[float, int]] = {}
    for start in read_ledger(run.ledger).starts():
        first.setdefault(start.job_id, (start.mono, start.pid))
    return first


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 3:
        return None
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 3600


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    with (WORK_ROOT / "figures.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def save_figures(key: str, figures: dict[str, Any]) -> None:
    with _locked():
        data: dict[str, Any] = {}
        if FIGURES_FILE.exists():
            with contextlib.suppress(json.JSONDecodeError):
                data = json.loads(FIGURES_FILE.read_text())
        data[key] = figures
        FIGURES_FILE.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _show(value: Any) -> str:
    if isinstance(value, dict) and "n" in value and ("median" in value or value["n"] == 0):
        if value["n"] == 0:
            return "n=0"
        return f"n={value['n']} median={value['median']} p95={value['p95']} max={value['max']}"
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 160 else text[:157] + "..."


def print_table(key: str, figures: Mapping[str, Any]) -> None:
    width = max((len(k) for k in figures), default=10)
    print(f"\n== {key} ==")
    for name in sorted(figures):
        print(f"  {name:<{width}}  {_show(figures[name])}")
    print(flush=True)


def finish(run: Run, figures: dict[str, Any], command: str) -> dict[str, Any]:
    key = f"{run.scenario.upper()}[{run.backend}]"
    figures = {
        "seed": run.seed,
        "minutes": run.minutes,
        "command": command,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "wall_s": round(time.monotonic() - run.started, 1),
        "load_average_end": load_average(),
        "notes": run.notes,
        **figures,
    }
    save_figures(key, figures)
    print_table(key, figures)
    return figures


def latency_after(
    submitted: Mapping[str, float], starts: Mapping[str, tuple[float, int]], since: float = 0.0
) -> list[float]:
    return [starts[j][0] - t for j, t in submitted.items() if t >= since and j in starts]


# -- R9: PostgreSQL restarts under load ----------------------------------------------------

#: the listener lost a connection that was up (not a failed reconnect attempt)
LISTEN_DROP = re.compile(r"LISTEN connection lost \((?!connection failed)")
SWEEP_FAILED = re.compile(r"(lease recovery sweep failed)")


async def scenario_r9(run: Run, command: str) -> dict[str, Any]:
    assert run.cluster is not None
    cluster = run.cluster
    # polling slowed to 2 s: pickups stay fast only while LISTEN works
    settings = worker_settings({"CONVEYOR_POLL_MAX_S": "2"})
    api, base, token = await asyncio.to_thread(spawn_api, run)
    workers = [run.fleet.spawn(f"w{i}", concurrency=4, settings=settings) for i in (1, 2)]
    await run.fleet.ready(run.engine, *workers, timeout=90)
    rate = 10.0
    submitter = Submitter(
        base,
        token,
        run.log,
        rate,
        lambda i: {"task": "effect_step", "input": {"step": "r9", "sleep_s": 0.05}},
        f"r9-{run.seed}",
    )
    submitter.start()
    say(f"r9: submitting {rate}/s over HTTP; restarting PostgreSQL every U(5,40) s")
    monkey_end = run.started + run.minutes * 60 - 60  # the last minute: the aimed restart
    restarts: list[dict[str, float]] = []
    while True:
        wait = run.rng.uniform(5, 40)
        if time.monotonic() + wait > monkey_end:
            break
        await asyncio.sleep(wait)
        down = run.rng.uniform(0, 2)
        record = await asyncio.to_thread(cluster.restart, down)
        restarts.append(record)
        say(f"r9: restart {len(restarts)}: down {record['down_s']:.2f}s")
    await asyncio.sleep(10)

    # the aimed restart: drain both workers, start armed ones, strand leases with a
    # SIGKILLed worker, and stop PostgreSQL while a sweep sleeps inside its transaction
    say("r9: aimed restart at the recovery sweep (mid_recovery_sweep:sleep=3)")
    alive_until_drain = {p.name: p.alive() for p in workers}
    for proc in workers:
        proc.send(signal.SIGTERM)
    for proc in workers:
        await proc.wait_exit(60)
    victim = run.fleet.spawn("victim", concurrency=4, queues=["victim"], settings=settings)
    await run.fleet.ready(run.engine, victim, timeout=90)
    victim_ids = await run.log.submit_many(
        run.engine,
        [
            JobSpec("effect_step", {"step": f"victim-{i}", "first_sleep_s": 60.0}, queue="victim")
            for i in range(4)
        ],
    )
    deadline = time.monotonic() + 60
    while not set(victim_ids) <= set(ledger_first_starts(run)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"victim did not start its jobs\n{victim.diagnostics()}")
        await asyncio.sleep(0.1)
    # only armed1 sweeps (and sleeps in its first sweep that recovers rows): were both
    # armed, the other worker's first recovering sweep, the one that must complete after
    # PostgreSQL is back, would sleep 3 s too and inflate the recovery time
    armed = [
        run.fleet.spawn(
            "armed1",
            concurrency=4,
            queues=["default", "victim"],
            faults="mid_recovery_sweep:sleep=3@1",
            settings=settings,
        ),
        run.fleet.spawn(
            "armed2",
            concurrency=4,
            queues=["default", "victim"],
            settings={**settings, "CONVEYOR_SWEEP_INTERVAL_S": "600"},
        ),
    ]
    await run.fleet.ready(run.engine, *armed, timeout=90)
    victim.send(signal.SIGKILL)
    killed = time.monotonic()
    hit_line = "conveyor fault point mid_recovery_sweep"
    deadline = time.monotonic() + 30
    while not any(hit_line in p.stderr() for p in armed):
        if time.monotonic() > deadline:
            raise RuntimeError("no sweep hit mid_recovery_sweep")
        await asyncio.sleep(0.02)
    hit = time.monotonic()
    aimed = await asyncio.to_thread(cluster.restart, run.rng.uniform(0, 2))
    say(f"r9: sweep hit {hit - killed:.2f}s after the kill; PostgreSQL down {aimed['down_s']:.2f}s")
    await run.reopen()
    recovered_at: float | None = None
    recovered_wall = 0.0
    deadline = time.monotonic() + 60
    while recovered_at is None and time.monotonic() < deadline:
        rows = await asyncio.to_thread(
            cluster.query,
            "SELECT count(*) FROM jobs WHERE id = ANY(%s) AND status = 'active' AND worker_id = %s",
            (victim_ids, run.fleet.worker_ids[victim.pid]),
            DB_NAME,
        )
        if rows[0][0] == 0:
            recovered_at, recovered_wall = time.monotonic(), time.time()
        else:
            await asyncio.sleep(0.05)
    await asyncio.sleep(15)
    submitter.stop()
    say("r9: waiting for quiescence")
    counts = await wait_quiescent(run, 180)

    starts = ledger_first_starts(run)
    all_starts = sorted(s.mono for s in read_ledger(run.ledger).starts())
    up_to_claim = []
    up_to_2xx = []
    for record in [*restarts, aimed]:
        after = [t for t in all_starts if t >= record["up"]]
        if after:
            up_to_claim.append(after[0] - record["up"])
        ok = [t for t, s in submitter.answers if t >= record["up"] and s in (200, 202)]
        if ok:
            up_to_2xx.append(ok[0] - record["up"])
    # submit -> start latency, 3 s after each restart until the next (LISTEN back?)
    windows = [(r["up"] + 3, r2["down"]) for r, r2 in itertools.pairwise(restarts)]
    steady = [
        starts[j][0] - t
        for j, t in submitter.submitted_at.items()
        if j in starts and any(a <= t <= b for a, b in windows)
    ]
    baseline_end = restarts[0]["down"] if restarts else time.monotonic()
    before = [
        starts[j][0] - t
        for j, t in submitter.submitted_at.items()
        if j in starts and t < baseline_end
    ]
    # every drop of an established LISTEN connection after the first proves the previous
    # reconnect re-established LISTEN; failed reconnect attempts are counted apart
    listen_drops = {p.name: len(LISTEN_DROP.findall(p.stderr())) for p in (*workers, *armed)}
    # the interrupted sweep blocks armed1's event loop for its 3 s sleep: its failure (the
    # sleep over) to the recovery is the "next tick" of RELIABILITY.md
    sweep_failed = [
        wall
        for wall, _ in partition.log_times(armed[0].stderr(), SWEEP_FAILED)
        if wall <= recovered_wall + 0.001
    ]
    listen_lines = {p.name: p.stderr().count("LISTEN connection lost") for p in (*workers, *armed)}
    all_ids = run.log.accepted_ids()
    found = await asyncio.to_thread(run_oracle, run, all_ids)
    for proc in (*workers, *armed):
        if proc.name.startswith("armed") and not proc.alive():
            run.notes.append(f"{proc.name} exited: {proc.popen.returncode}")
    if submitter.bad:
        run.notes.append(f"5xx other than 503, first: {submitter.bad[0]}")
        run.notes.append(f"API log tail: {api.diagnostics()[-3000:]}")
    return finish(
        run,
        {
            "restarts": len(restarts) + 1,
            "down_s": distribution(r["down_s"] for r in [*restarts, aimed]),
            "pg_up_to_first_claim_s": distribution(up_to_claim),
            "pg_up_to_first_2xx_s": distribution(up_to_2xx),
            "submit_to_start_s_before_restarts": distribution(before),
            "submit_to_start_s_between_restarts": distribution(steady),
            "listen_established_connection_drops": listen_drops,
            "listen_lost_lines_incl_failed_reconnects": listen_lines,
            "workers_alive_through_restarts": {
                **alive_until_drain,
                **{p.name: p.alive() for p in armed},
            },
            "aimed_sweep_hit_after_kill_s": round(hit - killed, 3),
            "aimed_pg_up_to_leases_recovered_s": (
                round(recovered_at - aimed["up"], 3) if recovered_at is not None else None
            ),
            "aimed_interrupted_sweep_failed_to_leases_recovered_s": (
                round(recovered_wall - sweep_failed[-1], 3) if sweep_failed else None
            ),
            "final_counts": counts,
            "lost": found["lost"],
            "duplicates": found["duplicates"],
            "oracle": found,
            **submitter.figures(),
        },
        command,
    )


# -- R11: partitions through the proxy ------------------------------------------------------


async def scenario_r11(run: Run, command: str) -> dict[str, Any]:
    fleet, engine, log = run.fleet, run.engine, run.log
    pair = await partition.start_pair(fleet, engine, cut_settings={"CONVEYOR_POLL_MAX_S": "5"})
    latency_share = 0.25
    end_fast = run.started + run.minutes * 60 * (1 - latency_share)
    episodes: list[dict[str, Any]] = []
    while time.monotonic() < end_fast:
        mode = run.rng.choice(["blackhole", "blackhole", "reset"])
        if mode == "blackhole":
            pause = run.rng.uniform(1.5, 3.0) * LEASE_TTL_S
            say(f"r11: black hole for {pause:.1f}s")
            fig = await partition.blackhole_episode(fleet, engine, log, pair, pause_s=pause)
        else:
            n_resets = run.rng.randint(1, 4)
            say(f"r11: {n_resets} resets")
            fig = await partition.reset_episode(
                fleet, engine, log, pair, resets=n_resets, pickups=2
            )
        episodes.append({"mode": mode, **fig})
        await asyncio.sleep(run.rng.uniform(0.5, 3.0))
    for proc in (pair.cut, pair.direct, pair.proxy):
        proc.send(signal.SIGTERM)
    for proc in (pair.cut, pair.direct, pair.proxy):
        await proc.wait_exit(60)
    say("r11: +200 ms latency")
    slow = {
        "CONVEYOR_LEASE_TTL_S": "10",
        "CONVEYOR_HEARTBEAT_INTERVAL_S": "1",
        "CONVEYOR_DB_CALL_DEADLINE_S": "8",
    }
    lat_pair = await partition.start_pair(fleet, engine, latency_ms=200, settings=slow)
    while True:
        fig = await partition.latency_episode(fleet, engine, log, lat_pair, jobs=30)
        episodes.append({"mode": "latency", **fig})
        if time.monotonic() > run.deadline_at:
            break
    counts = await wait_quiescent(run, 120)
    found = await asyncio.to_thread(run_oracle, run, run.log.accepted_ids())
    black = [e for e in episodes if e["mode"] == "blackhole"]
    resets = [e for e in episodes if e["mode"] == "reset"]
    lats = [e for e in episodes if e["mode"] == "latency"]
    return finish(
        run,
        {
            "episodes": dict(Counter(e["mode"] for e in episodes)),
            "blackhole_partition_s": distribution(e["partition_s"] for e in black),
            "blackhole_takeover_s": distribution(
                v for e in black for v in e["takeover_s"].values()
            ),
            "blackhole_self_fence_after_s": distribution(
                v for e in black for v in e["self_fence_after_s"].values()
            ),
            "blackhole_fence_margin_s": distribution(m for e in black for m in e["fence_margin_s"]),
            "blackhole_jobs_not_self_fenced": sum(
                2 - len(set(e["self_fenced"]) & {e["ids"]["long"], e["ids"]["thread"]})
                for e in black
            ),
            "stale_writes_attempted": sum(e["stale_writes_attempted"] for e in black),
            "stale_writes_rejected": sum(e["stale_writes_rejected"] for e in black),
            "stale_writes_refused_from_worker": sum(e["refused_by_db"] for e in black),
            "stale_successes": sum(e["stale_successes"] + e["stale_event_writes"] for e in black),
            "longest_db_call_s": distribution(e["longest_db_call_s"] for e in black),
            "cut_back_after_heal_s": distribution(e["cut_back_after_heal_s"] for e in black),
            "reset_count": sum(e["resets"] for e in resets),
            "reset_lease_expiries": sum(e["lease_expired_events"] for e in resets),
            "reset_self_fenced": sum(e["self_fenced"] for e in resets),
            "reset_notify_pickup_s": distribution(p for e in resets for p in e["notify_pickup_s"]),
            "latency_all_done_s": distribution(e["all_done_s"] for e in lats),
            "latency_lease_expiries": sum(e["lease_expired_events"] for e in lats),
            "latency_self_fenced": sum(e["self_fenced"] for e in lats),
            "latency_starts_by_worker": [e["starts_by_worker"] for e in lats],
            "final_counts": counts,
            "lost": found["lost"],
            "duplicates": found["duplicates"],
            "oracle": found,
        },
        command,
    )


# -- R18: soak --------------------------------------------------------------------------------


async def scenario_r18(run: Run, command: str, rate: float) -> dict[str, Any]:
    pg = run.cluster
    settings = worker_settings()
    api, base, token = await asyncio.to_thread(spawn_api, run)
    steady = run.fleet.spawn("steady", concurrency=4, settings=settings)
    victim = run.fleet.spawn("victim-1", concurrency=4, settings=settings)
    await run.fleet.ready(run.engine, steady, victim, timeout=90)
    # the harness's own pool would count among the connections: close it while sampling
    await run.db.close()
    submitter = Submitter(
        base,
        token,
        run.log,
        rate,
        lambda i: {"task": "effect_step", "input": {"step": "soak"}},
        f"r18-{run.seed}",
    )
    submitter.start()
    submit_started = time.monotonic()
    say(f"r18: soak at {rate:.1f} jobs/s for {run.minutes} min")
    samples: list[dict[str, Any]] = []
    sample_file = run.root / "samples.jsonl"
    faults_log: list[dict[str, Any]] = []
    next_fault = time.monotonic() + run.rng.uniform(60, 120)
    kind = "R1"
    victims = 1

    def sample() -> dict[str, Any]:
        now = time.monotonic() - run.started
        entry: dict[str, Any] = {"t": round(now, 1)}
        for name, proc in (("api", api), ("steady", steady), ("victim", victim)):
            entry[f"{name}_rss_mb"] = rss_mb(proc.pid)
            entry[f"{name}_fds"] = open_fds(proc.pid)
        if pg is not None:
            rows = pg.query("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (DB_NAME,))
            entry["pg_connections"] = int(rows[0][0])
        counts = _counts_any(run.url)
        entry["active"] = counts.get("active", 0)
        entry["queued"] = counts.get("queued", 0)
        entry["completed"] = counts.get("completed", 0)
        return entry

    while time.monotonic() < run.deadline_at:
        try:
            entry = await asyncio.to_thread(sample)
        except Exception as exc:  # a sample failing is noted, never fatal
            entry = {"t": round(time.monotonic() - run.started, 1), "error": str(exc)[:200]}
        samples.append(entry)
        with sample_file.open("a") as out:
            out.write(json.dumps(entry) + "\n")
        if len(samples) % 6 == 0:
            say(f"r18: {entry}")
        if time.monotonic() >= next_fault:
            if kind == "R1" or pg is None:
                victim.send(signal.SIGKILL)
                victims += 1
                victim = run.fleet.spawn(f"victim-{victims}", concurrency=4, settings=settings)
                faults_log.append({"kind": "R1", "t": round(time.monotonic() - run.started, 1)})
                kind = "R10"
            else:
                rows = await asyncio.to_thread(
                    pg.query,
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (DB_NAME,),
                )
                faults_log.append(
                    {
                        "kind": "R10",
                        "t": round(time.monotonic() - run.started, 1),
                        "terminated": int(rows[0][0]),
                    }
                )
                kind = "R1"
            say(f"r18: fault {faults_log[-1]}")
            next_fault = time.monotonic() + run.rng.uniform(60, 120)
        await asyncio.sleep(10)
    submitter.stop()
    submit_window = time.monotonic() - submit_started
    say("r18: waiting for quiescence")
    counts = await wait_quiescent(run, 300)
    final = await asyncio.to_thread(sample)
    samples.append(final)
    await run.reopen()

    duration = samples[-1]["t"]
    warm = max(120.0, 0.15 * duration)
    steady_samples = [s for s in samples if "error" not in s and s["t"] >= warm]

    def series(name: str) -> list[tuple[float, float]]:
        return [(s["t"], float(s[name])) for s in steady_samples if s.get(name) is not None]

    def first_last(name: str) -> list[Any]:
        values = [s.get(name) for s in steady_samples if s.get(name) is not None]
        return [values[0], values[-1]] if values else []

    starts = ledger_first_starts(run)
    latencies = latency_after(submitter.submitted_at, starts)
    found = await asyncio.to_thread(run_oracle, run, run.log.accepted_ids())
    rss_slopes = {
        name: (round(v, 2) if (v := slope_per_hour(series(f"{name}_rss_mb"))) is not None else None)
        for name in ("api", "steady")
    }
    fd_slopes = {
        name: (round(v, 2) if (v := slope_per_hour(series(f"{name}_fds"))) is not None else None)
        for name in ("api", "steady")
    }
    return finish(
        run,
        {
            "rate_per_s": rate,
            "achieved_submit_rate_per_s": round(submitter.logical / submit_window, 2),
            "samples": len(samples),
            "warm_up_s": warm,
            "rss_slope_mb_per_h": rss_slopes,
            "rss_mb_after_warmup_and_end": {
                n: first_last(f"{n}_rss_mb") for n in ("api", "steady", "victim")
            },
            "fd_slope_per_h": fd_slopes,
            "fds_after_warmup_and_end": {
                n: first_last(f"{n}_fds") for n in ("api", "steady", "victim")
            },
            "pg_connections_after_warmup_and_end": first_last("pg_connections"),
            "pg_connections_max": max(
                (s.get("pg_connections") or 0 for s in steady_samples), default=None
            ),
            "active_rows_end": final.get("active"),
            "active_rows_max_after_warmup": max(
                (s.get("active") or 0 for s in steady_samples), default=None
            ),
            "faults": dict(Counter(f["kind"] for f in faults_log)),
            "fault_log": faults_log,
            "submit_to_start_s": distribution(latencies),
            "final_counts": counts,
            "lost": found["lost"],
            "duplicates": found["duplicates"],
            "oracle": found,
            **submitter.figures(),
        },
        command,
    )


# -- R19: idle cost and thundering herd -------------------------------------------------------

_LOG_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \S+ \[\d+\] db=(\S*) (\w+):  (.*)$")
#: simple-protocol statements ("statement: BEGIN") and extended-protocol ones
#: ("execute <unnamed>: UPDATE ...", what psycopg sends for parameterised SQL)
_STATEMENT = re.compile(r"^(?:statement|execute [^:]*): (.*)$", re.DOTALL)


def count_statements(log: Path, start: int, end: int | None = None) -> Counter[str]:
    """Statements the private cluster logged for our database between two log offsets,
    by kind: the first word, or CLAIM for a SKIP LOCKED claim. A statement's continuation
    lines (SQL spanning several lines) are joined to it first."""
    with log.open("rb") as handle:
        handle.seek(start)
        data = handle.read() if end is None else handle.read(end - start)
    entries: list[tuple[str, str]] = []  # (database, message)
    for line in data.decode(errors="replace").splitlines():
        match = _LOG_ENTRY.match(line)
        if match is not None:
            if match.group(2) == "LOG":
                entries.append((match.group(1), match.group(3)))
            else:
                entries.append(("", ""))
        elif entries:
            database, message = entries[-1]
            entries[-1] = (database, f"{message}\n{line}")
    kinds: Counter[str] = Counter()
    for database, message in entries:
        if database != DB_NAME:
            continue
        statement = _STATEMENT.match(message)
        if statement is None:
            continue
        kinds[_kind(" ".join(statement.group(1).split()).upper())] += 1
    return kinds


def _kind(sql: str) -> str:
    if "SKIP LOCKED" in sql:
        if sql.startswith("UPDATE JOBS SET STATUS"):
            return "claim (one UPDATE ... SKIP LOCKED)"
        if "FROM CLARIFICATIONS" in sql:
            return "sweep: clarification expiry (SKIP LOCKED)"
        if "LEASE_EXPIRES_AT <" in sql:
            return "sweep: lease recovery (SKIP LOCKED)"
        return "other SKIP LOCKED"
    if "FOR UPDATE" in sql:
        return "SELECT ... FOR UPDATE (by id)"
    if sql.startswith("UPDATE WORKERS"):
        return "UPDATE workers (heartbeat)"
    if sql.startswith("SELECT PG_NOTIFY"):
        return "SELECT pg_notify (wake-up hint)"
    if sql in ("", ";"):
        return "; (pool pre-ping)"
    return sql.split(None, 1)[0]


def xacts(cluster: Cluster) -> int:
    rows = cluster.query(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (DB_NAME,)
    )
    return int(rows[0][0])


async def r19_round(
    run: Run, label: str, idle_s: float, burst: int, faults_env: str | None
) -> dict[str, Any]:
    cluster = run.cluster
    assert cluster is not None
    # production defaults for polling, heartbeats and sweeps (FAST would inflate the
    # idle rate); notifications and polling are what is measured
    defaults = {
        "CONVEYOR_LEASE_TTL_S": "30",
        "CONVEYOR_HEARTBEAT_INTERVAL_S": "2",
        "CONVEYOR_SWEEP_INTERVAL_S": "2",
        "CONVEYOR_POLL_MAX_S": "1",
    }
    if faults_env:
        os.environ["CONVEYOR_FAULTS"] = faults_env
    else:
        os.environ.pop("CONVEYOR_FAULTS", None)
    faults.reload()
    await run.reopen()
    workers = [
        run.fleet.spawn(
            f"{label}-w{i}", concurrency=4, faults=faults_env, settings=worker_settings(defaults)
        )
        for i in (1, 2, 3)
    ]
    await run.fleet.ready(run.engine, *workers, timeout=90)
    await run.db.close()  # the harness stays off the database while idle
    await asyncio.sleep(10)  # start-up traffic settles
    say(f"r19[{label}]: idle for {idle_s:.0f}s")
    offset = cluster.log.stat().st_size
    x0, t0 = await asyncio.to_thread(xacts, cluster), time.monotonic()
    await asyncio.sleep(idle_s)
    x1, t1 = await asyncio.to_thread(xacts, cluster), time.monotonic()
    idle_end_offset = cluster.log.stat().st_size
    await asyncio.sleep(1.5)  # statements logged at the end of the window reach the file
    idle_kinds = count_statements(cluster.log, offset, idle_end_offset)
    idle_window = t1 - t0

    await run.reopen()
    say(f"r19[{label}]: burst of {burst} jobs")
    lock_samples: list[int] = []
    stop_sampling = asyncio.Event()

    async def sample_locks() -> None:
        while not stop_sampling.is_set():
            rows = await asyncio.to_thread(
                cluster.query,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                "AND wait_event_type = 'Lock'",
                (DB_NAME,),
            )
            lock_samples.append(int(rows[0][0]))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample_locks())
    burst_offset = cluster.log.stat().st_size
    specs = [JobSpec("effect_step", {"step": f"burst-{label}"}) for _ in range(burst)]
    submitted = time.monotonic()
    results = await run.engine.enqueue_many(specs, owner="faults")
    committed = time.monotonic()  # pickups count from here (the client log is written after)
    ids = [r.job.id for r in results]
    for result in results:
        run.log.record(202, result.job.id, None, owner="faults", via="engine")
    deadline = time.monotonic() + 300
    while True:
        counts = await asyncio.to_thread(job_counts, run.url)
        if not any(k not in TERMINAL for k in counts):
            break
        if time.monotonic() > deadline:
            run.notes.append(f"r19[{label}] burst not done after 300 s: {counts}")
            break
        await asyncio.sleep(0.2)
    drained = time.monotonic()
    stop_sampling.set()
    await sampler
    await asyncio.sleep(1.5)
    burst_kinds = count_statements(cluster.log, burst_offset)
    ledger = read_ledger(run.ledger)
    id_set = set(ids)
    first: dict[str, float] = {}
    per_attempt: Counter[tuple[str, int]] = Counter()
    for start in ledger.starts():
        if start.job_id in id_set:
            first.setdefault(start.job_id, start.mono)
            per_attempt[(start.job_id, start.attempt)] += 1
    pickups = [first[j] - committed for j in ids if j in first]
    pickups.sort()
    collisions = sum(n - 1 for n in per_attempt.values() if n > 1)
    for proc in workers:
        proc.send(signal.SIGTERM)
    for proc in workers:
        await proc.wait_exit(60)
    total_idle = sum(idle_kinds.values())
    return {
        "idle_window_s": round(idle_window, 1),
        "idle_transactions_per_s": round((x1 - x0) / idle_window, 2),
        "idle_statements_per_s": round(total_idle / idle_window, 2),
        "idle_statements_by_kind": dict(idle_kinds),
        "burst_jobs": burst,
        "burst_enqueue_s": round(committed - submitted, 3),
        "burst_drain_s": round(drained - committed, 3),
        "burst_pickup_s": distribution(pickups),
        "burst_first_pickup_s": round(pickups[0], 3) if pickups else None,
        "burst_pickup_p99_s": round(pickups[min(len(pickups) - 1, int(0.99 * len(pickups)))], 3)
        if pickups
        else None,
        "claim_collisions": collisions,
        "lock_wait_samples": len(lock_samples),
        "lock_waiting_max": max(lock_samples, default=0),
        "lock_waiting_samples_nonzero": sum(1 for x in lock_samples if x),
        "burst_statements_by_kind": dict(burst_kinds),
    }


async def scenario_r19(run: Run, command: str, burst: int) -> dict[str, Any]:
    idle_s = run.minutes * 60
    rounds = {
        "notify": await r19_round(run, "notify", idle_s, burst, None),
        "no_notify": await r19_round(run, "no-notify", idle_s, burst, "drop_notify"),
    }
    os.environ.pop("CONVEYOR_FAULTS", None)
    faults.reload()
    await run.reopen()
    counts = await wait_quiescent(run, 60)
    found = await asyncio.to_thread(run_oracle, run, run.log.accepted_ids())
    figures: dict[str, Any] = {
        "idle_measured_by": "statements: log_statement=all on the private cluster, lines for "
        "this database; transactions: pg_stat_database xact_commit+xact_rollback deltas",
        "settings": "3 workers x 4 slots; poll_max 1 s, heartbeat 2 s, sweep 2 s, lease 30 s",
        "final_counts": counts,
        "lost": found["lost"],
        "duplicates": found["duplicates"],
        "oracle": found,
    }
    for label, values in rounds.items():
        for name, value in values.items():
            figures[f"{label}.{name}"] = value
    return finish(run, figures, command)


# -- R20: queue-table bloat ---------------------------------------------------------------


async def scenario_r20(run: Run, command: str, total: int) -> dict[str, Any]:
    cluster = run.cluster
    assert cluster is not None
    # the probe claims from its own queue, which no worker serves
    workers = [
        run.fleet.spawn(f"w{i}", concurrency=8, queues=["default"], settings=worker_settings())
        for i in (1, 2)
    ]
    await run.fleet.ready(run.engine, *workers, timeout=90)
    # the holder: an open transaction with an xid and a snapshot pins the vacuum horizon
    holder = psycopg.connect(cluster.url(DB_NAME), autocommit=True, connect_timeout=5)
    holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    holder_xid = holder.execute("SELECT txid_current()").fetchone()
    say(f"r20: holder xid {holder_xid}; churning {total} jobs")

    probe_id = "r20-probe"
    series: list[dict[str, Any]] = []

    async def probe_claim() -> float:
        """Enqueue one job on a queue no worker serves and claim it: the claim's time."""
        await run.engine.enqueue(
            JobSpec("db_only_step", {"step": "probe"}, queue="probe"), owner="probe"
        )
        started = time.monotonic()
        result = await run.engine.settle(
            [], ClaimRequest(probe_id, 1, ["probe"], ["db_only_step"], 30.0)
        )
        elapsed = time.monotonic() - started
        for job in result.claimed:
            await run.engine.settle([Completed(job.id, job.lease_token, {"probe": True})])
        return elapsed

    def table_stats() -> dict[str, Any]:
        rows = cluster.query(
            "SELECT relname, n_live_tup, n_dead_tup, pg_total_relation_size(relid), "
            "autovacuum_count, vacuum_count FROM pg_stat_user_tables "
            "WHERE relname IN ('jobs', 'events')",
            (),
            DB_NAME,
        )
        out: dict[str, Any] = {}
        for name, live, dead, size, auto, manual in rows:
            out[f"{name}_live"] = int(live)
            out[f"{name}_dead"] = int(dead)
            out[f"{name}_mb"] = round(int(size) / 1_048_576, 1)
            out[f"{name}_vacuums"] = int(auto) + int(manual)
        return out

    async def record(phase: str) -> dict[str, Any]:
        claim = await probe_claim()
        stats = await asyncio.to_thread(table_stats)
        entry = {"t": round(time.monotonic() - run.started, 1), "phase": phase, "claim_s": claim}
        entry.update(stats)
        series.append(entry)
        return entry

    baseline = [await record("baseline") for _ in range(10)]
    submitted = 0
    batch = 500
    last_record = 0.0
    while submitted < total:
        counts = await asyncio.to_thread(job_counts, run.url)
        backlog = counts.get("queued", 0) + counts.get("active", 0)
        if backlog < 3000:
            n = min(batch, total - submitted)
            specs = [JobSpec("db_only_step", {"step": "churn"}) for _ in range(n)]
            await run.log.submit_many(run.engine, specs)
            submitted += n
        if time.monotonic() - last_record >= 2.0:
            entry = await record("churn")
            last_record = time.monotonic()
            if len(series) % 15 == 0:
                say(f"r20: submitted {submitted}: {entry}")
        else:
            await asyncio.sleep(0.5)
    while True:
        counts = await asyncio.to_thread(job_counts, run.url)
        if counts.get("queued", 0) + counts.get("active", 0) == 0:
            break
        await record("drain")
        await asyncio.sleep(1.0)
    peak = await record("held")
    say(f"r20: churn done; ending the holder ({peak})")
    holder.execute("ROLLBACK")
    holder.close()
    released = time.monotonic()
    base_claim = statistics.median(e["claim_s"] for e in baseline)
    autovacuum_wait = 90.0
    dead_low_at: float | None = None
    latency_ok_at: float | None = None
    manual_vacuum = False
    ok_streak = 0
    while time.monotonic() - released < autovacuum_wait + 120:
        entry = await record("released")
        now = time.monotonic()
        if dead_low_at is None and entry["jobs_dead"] <= max(1000, 0.05 * peak["jobs_dead"]):
            dead_low_at = now
        ok_streak = ok_streak + 1 if entry["claim_s"] <= max(1.5 * base_claim, 0.005) else 0
        if latency_ok_at is None and ok_streak >= 5:
            latency_ok_at = now
        if dead_low_at is not None and latency_ok_at is not None:
            break
        if not manual_vacuum and now - released > autovacuum_wait and dead_low_at is None:
            say("r20: autovacuum has not cleaned up; VACUUM (ANALYZE) jobs, events")
            await asyncio.to_thread(cluster.query, "VACUUM (ANALYZE) jobs, events", (), DB_NAME)
            manual_vacuum = True
        await asyncio.sleep(1.0)
    counts = await wait_quiescent(run, 60)
    (run.root / "r20-series.json").write_text(json.dumps(series, indent=1))
    found = await asyncio.to_thread(run_oracle, run, [j for j in run.log.accepted_ids()])
    churn = [e for e in series if e["phase"] in ("churn", "drain", "held")]
    buckets: dict[str, list[float]] = {}
    for entry in churn:
        dead = entry["jobs_dead"]
        label = (
            "<10k"
            if dead < 10_000
            else "<50k"
            if dead < 50_000
            else "<100k"
            if dead < 100_000
            else "<200k"
            if dead < 200_000
            else ">=200k"
        )
        buckets.setdefault(label, []).append(entry["claim_s"])
    after = [e for e in series if e["phase"] == "released"]
    return finish(
        run,
        {
            "jobs_churned": submitted,
            "probe_claim_baseline_s": distribution(e["claim_s"] for e in baseline),
            "probe_claim_during_churn_s": distribution(e["claim_s"] for e in churn),
            "probe_claim_by_jobs_dead_tuples": {
                k: distribution(v) for k, v in sorted(buckets.items())
            },
            "jobs_dead_tuples_peak": max(e["jobs_dead"] for e in series),
            "events_dead_tuples_peak": max(e["events_dead"] for e in series),
            "jobs_table_mb_peak": max(e["jobs_mb"] for e in series),
            "probe_claim_after_release_s": distribution(e["claim_s"] for e in after[-10:]),
            "released_to_dead_tuples_low_s": round(dead_low_at - released, 1)
            if dead_low_at
            else None,
            "released_to_claim_latency_recovered_s": round(latency_ok_at - released, 1)
            if latency_ok_at
            else None,
            "manual_vacuum_needed": manual_vacuum,
            "final_counts": counts,
            "lost": found["lost"],
            "duplicates": found["duplicates"],
            "oracle": found,
        },
        command,
    )


# -- entry point ------------------------------------------------------------------------------


async def run_scenario(name: str, args: argparse.Namespace, command: str) -> dict[str, Any]:
    if args.db == "sqlite" and name != "r18":
        raise SystemExit(f"{name} needs PostgreSQL (only r18 runs on SQLite)")
    conf: dict[str, str] = {}
    if name == "r19":
        conf = {"log_statement": "'all'"}
    async with open_run(name, args, conf) as run:
        say(f"{name}: seed {args.seed}, {args.minutes} min, load average {load_average()}")
        if name == "r9":
            return await scenario_r9(run, command)
        if name == "r11":
            return await scenario_r11(run, command)
        if name == "r18":
            return await scenario_r18(run, command, args.rate)
        if name == "r19":
            return await scenario_r19(run, command, args.burst)
        if name == "r20":
            return await scenario_r20(run, command, args.jobs)
    raise SystemExit(f"unknown scenario {name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenario", choices=["r9", "r11", "r18", "r19", "r20", "all"], required=True
    )
    parser.add_argument(
        "--minutes", type=float, default=5.0, help="run length (r19: idle time per round)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--rate", type=float, default=50_000 / 3600, help="r18 jobs/s")
    parser.add_argument("--burst", type=int, default=1000, help="r19 burst size")
    parser.add_argument("--jobs", type=int, default=100_000, help="r20 jobs of churn")
    parser.add_argument("--keep", action="store_true", help="keep the private cluster")
    args = parser.parse_args(argv)
    command = "python -m tests.faults.chaos " + " ".join(sys.argv[1:] if argv is None else argv)
    names = ["r9", "r11", "r18", "r19", "r20"] if args.scenario == "all" else [args.scenario]
    for name in names:
        asyncio.run(run_scenario(name, args, command))


if __name__ == "__main__":
    main()
