"""Helpers of the storage fault scenarios (R10, R12, R13, R14 in tests/faults/).

* :func:`start_api` starts a real ``conveyor serve`` through ``tests/servers.py`` with
  any app, any number of embedded worker slots and an optional command prefix
  (``unshare -m sh -c ...`` for a private tmpfs, or a libfaketime environment).
* PostgreSQL backends of the test's own database are found in ``pg_stat_activity`` by
  ``application_name`` (set per process with libpq's ``PGAPPNAME``) and terminated.
* :func:`faketime_env` runs a process under Debian's libfaketime with the monotonic clock
  left alone (``FAKETIME_DONT_FAKE_MONOTONIC=1``).
* :class:`HttpSubmitter` submits over HTTP and records every answer in the client log.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from sqlalchemy import Engine as SyncEngine
from sqlalchemy import select, text

from conveyor.store.schema import events
from tests.conftest import IN_CI
from tests.faults.harness import ClientLog
from tests.faults.ledger import Ledger
from tests.servers import Server, start_server

# -- a real API server -------------------------------------------------------------------


#: what the servers here run with: a longer drain, other settings at their defaults
STORAGE_SETTINGS = {"CONVEYOR_DRAIN_TIMEOUT_S": "5"}


def start_api(
    database_url: str,
    log: Path,
    *,
    app: str,
    workers: int = 0,
    env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> Server:
    """``[prefix...] conveyor serve --app APP --workers N`` through
    :func:`tests.servers.start_server`, with :data:`STORAGE_SETTINGS` and ``env``;
    ``log`` receives stdout and stderr. Stop it with :func:`tests.servers.stop_server`
    (SIGTERM: the database is closed and its totals logged)."""
    return start_server(
        database_url,
        log.parent,
        app=app,
        workers=workers,
        prefix=prefix,
        settings=STORAGE_SETTINGS,
        extra_env=env,
        log=log,
    )


def server_log(server: Server) -> str:
    return server.log.read_text(errors="replace")


# -- submitting over HTTP ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    status: int  # 0: no answer (transport error)
    body: dict[str, Any]
    headers: dict[str, str]
    key: str | None

    @property
    def job_id(self) -> str | None:
        value = self.body.get("id") if self.status in (200, 202) else None
        return value if isinstance(value, str) else None


class HttpSubmitter:
    """``POST /api/v1/jobs`` through one keep-alive client; every answer is recorded in
    the client log (one instance per thread: httpx clients are not shared)."""

    def __init__(self, server: Server, token: str, owner: str, log: ClientLog) -> None:
        self.client = server.client(token)
        self.owner = owner
        self.log = log

    def submit(self, body: Mapping[str, Any], key: str | None, note: str = "") -> Answer:
        headers = {} if key is None else {"Idempotency-Key": key}
        try:
            response = self.client.post("/api/v1/jobs", json=dict(body), headers=headers)
        except httpx.TransportError as exc:
            self.log.record(0, None, key, owner=self.owner, via="http", note=f"{note}: {exc!r}")
            return Answer(0, {}, {}, key)
        try:
            payload = response.json()
        except ValueError:
            payload = {"_raw": response.text[:500]}
        answer = Answer(
            response.status_code,
            payload if isinstance(payload, dict) else {"_raw": payload},
            dict(response.headers),
            key,
        )
        self.log.record(answer.status, answer.job_id, key, owner=self.owner, via="http", note=note)
        return answer

    def close(self) -> None:
        self.client.close()


# -- PostgreSQL backends -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backend:
    pid: int
    application_name: str
    state: str | None
    query: str

    @property
    def listener(self) -> bool:
        return self.query.lstrip().upper().startswith("LISTEN")


_BACKENDS = text(
    "SELECT pid, application_name, state, query FROM pg_stat_activity "
    "WHERE datname = current_database() AND application_name LIKE :pattern "
    "AND pid <> pg_backend_pid() AND backend_type = 'client backend' ORDER BY pid"
)
_TERMINATE = text(
    "SELECT pid, application_name, state, query, pg_terminate_backend(pid) "
    "FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name LIKE :pattern AND pid <> pg_backend_pid() "
    "AND backend_type = 'client backend'"
)


def pg_backends(probe: SyncEngine, pattern: str) -> list[Backend]:
    """Client backends *of the test's database* whose application_name is LIKE
    ``pattern``."""
    with probe.connect() as conn:
        rows = conn.execute(_BACKENDS, {"pattern": pattern}).all()
    return [Backend(int(r[0]), str(r[1]), r[2], str(r[3] or "")) for r in rows]


def terminate_backends(probe: SyncEngine, pattern: str) -> tuple[list[Backend], datetime]:
    """``pg_terminate_backend`` every client backend of the test's database whose
    application_name is LIKE ``pattern``; the backends and the database time of the kill."""
    with probe.connect() as conn:
        rows = conn.execute(_TERMINATE, {"pattern": pattern}).all()
        at: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
        conn.commit()
    return [Backend(int(r[0]), str(r[1]), r[2], str(r[3] or "")) for r in rows], at


def db_clock(probe: SyncEngine) -> datetime:
    with probe.connect() as conn:
        now: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    return now


# -- libfaketime ---------------------------------------------------------------------------

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def require_faketime() -> None:
    """Skip without Debian's libfaketime (fail in CI: .ci/run installs it)."""
    if FAKETIME_LIB.exists():
        return
    message = f"libfaketime not installed ({FAKETIME_LIB}); apt-get install faketime"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def faketime_env(offset: str) -> dict[str, str]:
    """Environment running a process ``offset`` (``"+300s"``) off the real wall clock;
    the monotonic clock stays real (leases are tracked with it)."""
    return {
        "LD_PRELOAD": str(FAKETIME_LIB),
        "FAKETIME": offset,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "NO_FAKE_STAT": "1",
    }


def real_wall_of(mono: float) -> float:
    """The real ``time.time()`` at ``time.monotonic() == mono`` (CLOCK_MONOTONIC is
    system-wide, so a skewed process's monotonic stamps map back to real time)."""
    return mono + (time.time() - time.monotonic())


def clock_skews(ledger: Ledger) -> dict[int, float]:
    """Per pid: the median of ``wall - real time`` over its ledger rows (a worker's
    ``time.time()`` skew, measured on what it actually wrote)."""
    offset = time.time() - time.monotonic()
    by_pid: dict[int, list[float]] = defaultdict(list)
    for row in ledger.executions:
        by_pid[row.pid].append(row.wall - (row.mono + offset))
    return {pid: sorted(v)[len(v) // 2] for pid, v in by_pid.items()}


def deskewed(ledger: Ledger) -> Ledger:
    """The ledger with every ``wall`` recomputed from ``mono`` (real time), for the
    oracle's "ran again after completion" check when workers ran with skewed clocks."""
    offset = time.time() - time.monotonic()
    return Ledger(
        [replace(e, wall=e.mono + offset) for e in ledger.executions],
        [replace(e, wall=e.mono + offset) for e in ledger.effects],
        [replace(w, wall=w.mono + offset) for w in ledger.writes],
    )


# -- a private tmpfs (unshare -m) --------------------------------------------------------


def require_unshare() -> None:
    """Skip without root and util-linux's unshare (fail in CI, which runs as root)."""
    problem = None
    if os.geteuid() != 0:
        problem = "a private mount namespace needs root"
    elif shutil.which("unshare") is None or shutil.which("nsenter") is None:
        problem = "unshare/nsenter (util-linux) not installed"
    if problem is None:
        return
    if IN_CI:
        pytest.fail(problem)
    pytest.skip(problem)


def tmpfs_prefix(mountpoint: Path, size: str, setup: str) -> list[str]:
    """A command prefix: a new mount namespace, a ``size`` tmpfs on ``mountpoint`` (seen
    only inside it), then ``setup`` (shell, run inside), then the command itself."""
    script = f'mount -t tmpfs -o size={size} conveyor-r13 "{mountpoint}" && {setup} && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


def inside(pid: int, path: Path) -> Path:
    """``path`` as the process ``pid`` sees it (through its mount namespace). Fine for
    stat and unlink; SQLite cannot open a database this way (it resolves the magic
    ``/proc/PID/root`` link to ``/``): use :func:`inspect_sqlite`."""
    return Path(f"/proc/{pid}/root") / path.relative_to("/")


_INSPECT = """
import json, sqlite3, sys
conn = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True, timeout=30.0)
integrity = "; ".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check"))
rows = conn.execute("SELECT id, idempotency_key, status FROM jobs").fetchall()
queued = conn.execute(
    "SELECT job_id, count(*) FROM events WHERE type = 'job.queued' "
    "AND job_id IS NOT NULL GROUP BY job_id"
).fetchall()
print(json.dumps({
    "integrity": integrity,
    "jobs": {r[0]: [r[1], r[2]] for r in rows},
    "queued": dict(queued),
}))
"""


@dataclass(frozen=True, slots=True)
class SqliteState:
    integrity: str
    keys: dict[str, str | None]  # job id -> idempotency key
    statuses: dict[str, str]  # job id -> stored status
    queued_events: dict[str, int]  # job id -> job.queued events


def inspect_sqlite(pid: int, database: Path) -> SqliteState:
    """``PRAGMA integrity_check`` and every job of a SQLite file inside the mount
    namespace of ``pid`` (a read-only connection, from a process ``nsenter`` puts
    there)."""
    done = subprocess.run(
        ["nsenter", "--target", str(pid), "--mount", sys.executable, "-c", _INSPECT, str(database)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"inspecting {database} failed:\n{done.stderr}")
    found = json.loads(done.stdout)
    return SqliteState(
        found["integrity"],
        {k: v[0] for k, v in found["jobs"].items()},
        {k: v[1] for k, v in found["jobs"].items()},
        {k: int(v) for k, v in found["queued"].items()},
    )


# -- claims ----------------------------------------------------------------------------------

_OPENS = {"job.started"}
_CLOSES = {
    "job.completed",
    "job.failed",
    "job.cancelled",
    "job.released",
    "job.lease_expired",
    "job.retrying",
    "job.queued",
}


@dataclass
class ClaimAudit:
    """Who held each job when, from the event log and the execution ledger."""

    started_events: int = 0
    double_claims: list[str] = field(default_factory=list)  # started while still held
    overlapping_runs: list[str] = field(default_factory=list)  # two bodies at once
    first_start: datetime | None = None
    last_start: datetime | None = None

    @property
    def claim_window_s(self) -> float:
        if self.first_start is None or self.last_start is None:
            return 0.0
        return (self.last_start - self.first_start).total_seconds()


def audit_claims(probe: SyncEngine, job_ids: Sequence[str], ledger: Ledger) -> ClaimAudit:
    """A job started while an earlier attempt of it was still open (no completion,
    failure, release or lease expiry in between) is a double claim; so is a step body
    that began on one pid while another pid's body of the same job had not ended."""
    wanted = set(job_ids)
    audit = ClaimAudit()
    with probe.connect() as conn:
        rows = conn.execute(
            select(events.c.job_id, events.c.type, events.c.created_at)
            .where(events.c.job_id.is_not(None))
            .order_by(events.c.id)
        ).all()
    open_attempt: dict[str, bool] = {}
    for job_id, kind, created_at in rows:
        if job_id not in wanted:
            continue
        if kind in _OPENS:
            audit.started_events += 1
            if open_attempt.get(job_id):
                audit.double_claims.append(job_id)
            open_attempt[job_id] = True
            if audit.first_start is None or created_at < audit.first_start:
                audit.first_start = created_at
            if audit.last_start is None or created_at > audit.last_start:
                audit.last_start = created_at
        elif kind in _CLOSES:
            open_attempt[job_id] = False
    spans: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    starts: dict[tuple[str, int, int], float] = {}
    for row in ledger.executions:
        if row.job_id not in wanted:
            continue
        if row.phase == "start":
            starts[(row.job_id, row.attempt, row.pid)] = row.mono
        else:
            begun = starts.pop((row.job_id, row.attempt, row.pid), row.mono)
            spans[row.job_id].append((begun, row.mono, row.pid))
    for (job_id, _, pid), begun in starts.items():  # never ended (killed mid-step)
        spans[job_id].append((begun, begun, pid))
    for job_id, runs in spans.items():
        for (a0, a1, pa), (b0, b1, pb) in itertools.combinations(sorted(runs), 2):
            if pa != pb and a0 < b1 and b0 < a1:
                audit.overlapping_runs.append(job_id)
    return audit


# -- logs ------------------------------------------------------------------------------------

BUSY_RE = re.compile(r"SQLite \S+: (\d+) busy retries \(([\d.]+)s waited\) over (\d+) transactions")


@dataclass(frozen=True, slots=True)
class BusyTotals:
    retries: int
    waited_s: float
    transactions: int

    @property
    def per_1k(self) -> float:
        return 1000.0 * self.retries / self.transactions if self.transactions else 0.0


def busy_totals(*logs: str) -> BusyTotals:
    """The busy-retry totals SqliteDatabase logs when it is closed, summed."""
    found = [m.groups() for log in logs for m in BUSY_RE.finditer(log)]
    return BusyTotals(
        sum(int(r) for r, _, _ in found),
        round(sum(float(w) for _, w, _ in found), 3),
        sum(int(t) for _, _, t in found),
    )


def count_lines(text_: str, *needles: str) -> Counter[str]:
    found: Counter[str] = Counter()
    for line in text_.splitlines():
        for needle in needles:
            if needle in line:
                found[needle] += 1
    return found
