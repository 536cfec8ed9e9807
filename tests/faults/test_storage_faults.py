"""R10, R12, R13 and R14: the storage under the workers (RELIABILITY.md section 3.2).

R10 (PostgreSQL)  the workers' backends and their LISTEN backend are terminated
    server-side (``pg_terminate_backend``), repeatedly, while jobs flow and while the
    workers idle. No job is lost, no error reaches a user, the workers keep going without
    a restart, and wake-ups come back by notification within one reconnect (measured:
    kill -> LISTEN back, kill -> first job picked up at notification speed).
R12 (PostgreSQL)  clock skew: one worker runs 300 s ahead and one 300 s behind (libfaketime,
    monotonic clock left alone), and an API replica runs 300 s ahead. Lease, rescue and
    due-time decisions use the database clock: no premature rescue, delayed jobs start by
    database time, tokens from a skewed issuer beyond the leeway get 401.
    On SQLite there is no database clock of its own: ``julianday('now')`` is evaluated
    inside whichever process runs the statement, so a skewed process *is* a skewed
    database clock (``test_r12_sqlite_clock_is_the_process_clock`` pins that down). A
    SQLite deployment is one machine, whose processes share one system clock, so the
    scenario (two workers with different clocks) cannot arise there except through a
    per-process fake like libfaketime; R12 proper therefore runs on PostgreSQL only.
R13 (SQLite)  disk full: the API server runs in a private mount namespace whose tiny tmpfs
    holds the SQLite file and a filler file. Submissions until the disk is full are
    refused with a clear 503/507 problem (never a 500), nothing half-written, every
    accepted job intact, ``PRAGMA integrity_check`` ok; deleting the filler lets the
    same server (no restart) accept work again.
R14 (SQLite)  writer contention: the API and three worker processes write one WAL file
    (2,000 jobs over HTTP). No "database is locked" reaches a user or stops a worker, no
    job is claimed twice; busy retries per 1,000 transactions (logged by SqliteDatabase
    on close) and claim throughput are reported.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from sqlalchemy import Engine as SyncEngine
from sqlalchemy import func, select

from conveyor.engine.core import Engine
from conveyor.store.schema import events, jobs
from tests.acceptance.conftest import REPO_ROOT, process_env
from tests.faults import oracle
from tests.faults.harness import (
    FAULTS_APP,
    ClientLog,
    FenceLog,
    Fleet,
    distribution,
    report,
    rng_for,
    sync_engine,
    wait_for,
    wait_terminal,
)
from tests.faults.ledger import read_ledger
from tests.faults.storage_tools import (
    Answer,
    HttpSubmitter,
    audit_claims,
    busy_totals,
    clock_skews,
    count_lines,
    db_clock,
    deskewed,
    faketime_env,
    inside,
    inspect_sqlite,
    pg_backends,
    require_faketime,
    require_unshare,
    server_log,
    start_api,
    terminate_backends,
    tmpfs_prefix,
)
from tests.servers import ADMIN_PASSWORD, JWT_SECRET, Server, login, stop_server

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
postgres_only = pytest.mark.parametrize(
    "db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)

API_APP = "tests.apps.api_app:app"
#: how ``conveyor serve`` ends after SIGTERM (uvicorn re-raises the signal once it has
#: shut down cleanly)
STOPPED_OK = (0, -signal.SIGTERM)
TRACE_MARKERS = ("Traceback", "unhandled error", "Internal server error")


# -- R13 ------------------------------------------------------------------------------------

TMPFS_SIZE = "4m"
FILLER_BYTES = 1024 * 1024
#: submissions before giving up on filling the disk (a few hundred are enough)
MAX_SUBMITS = 1500
#: disk-full answers in a row that mean "full" (not a passing hiccup)
FULL_STREAK = 5
DISK_FULL_STATUSES = (503, 507)


def _body(i: int, size: int) -> dict[str, Any]:
    return {"task": "echo", "input": {"text": f"r13 job {i:05d} " + "x" * size}}


def _is_disk_full(answer: Answer) -> bool:
    detail = str(answer.body.get("detail", "")).lower()
    return answer.status in DISK_FULL_STATUSES and "full" in detail


def test_r13_sqlite_disk_full(sqlite_template: Path, tmp_path: Path, client_log: ClientLog) -> None:
    require_unshare()
    rng = rng_for("R13")
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    database = mountpoint / "conveyor.db"
    filler = mountpoint / "filler"
    setup = f'cp "{sqlite_template}" "{database}" && head -c {FILLER_BYTES} /dev/zero > "{filler}"'
    server = start_api(
        f"sqlite:///{database}",
        tmp_path / "r13-server.log",
        app=API_APP,
        workers=1,
        prefix=tmpfs_prefix(mountpoint, TMPFS_SIZE, setup),
    )
    pid = server.process.pid
    seen_db = inside(pid, database)  # for stat() only: SQLite opens it via nsenter
    submitter: HttpSubmitter | None = None
    try:
        assert seen_db.exists(), "the server does not see its database in the tmpfs"
        assert not database.exists(), "the tmpfs leaked out of the private namespace"
        owner, token = server.new_user()
        submitter = HttpSubmitter(server, token, owner, client_log)

        # 1. submit until the disk is full -------------------------------------------------
        answers: list[tuple[int, Answer, dict[str, Any]]] = []
        streak = 0
        first_full: int | None = None
        for i in range(MAX_SUBMITS):
            body = _body(i, rng.randint(6000, 10000))
            answer = submitter.submit(body, f"r13-key-{i:05d}", note="filling")
            answers.append((i, answer, body))
            if answer.status in (200, 202):
                streak = 0
                continue
            if first_full is None:
                first_full = i
            streak += 1
            if streak >= FULL_STREAK:
                break
        assert first_full is not None, f"{MAX_SUBMITS} submissions never filled {TMPFS_SIZE}"
        wal = inside(pid, mountpoint / "conveyor.db-wal")
        sizes = {
            "db": seen_db.stat().st_size,
            "wal": wal.stat().st_size if wal.exists() else 0,
        }
        accepted = [a for _, a, _ in answers if a.job_id is not None]
        refused = [(i, a, b) for i, a, b in answers if a.job_id is None]
        statuses = Counter(a.status for _, a, _ in answers)
        assert accepted, "nothing was accepted before the disk filled"
        bad = [
            (a.status, a.headers.get("content-type"), a.body)
            for _, a, _ in refused
            if not _is_disk_full(a) or a.headers.get("content-type") != "application/problem+json"
        ]
        assert not bad, f"a refused submission is not a clear disk-full problem: {bad[:3]}"
        assert all("traceback" not in str(a.body).lower() for _, a, _ in refused)

        # reads keep working while the disk is full
        with server.client(token) as reader:
            got = reader.get(f"/api/v1/jobs/{accepted[0].job_id}")
        read_while_full = got.status_code

        # 2. what is on disk: intact, nothing half-written ----------------------------------
        at_full = inspect_sqlite(pid, database)
        accepted_ids = [a.job_id for a in accepted if a.job_id is not None]
        missing = [job_id for job_id in accepted_ids if job_id not in at_full.keys]
        refused_keys = {a.key for _, a, _ in refused}
        half_written = sorted(
            {job_id for job_id, key in at_full.keys.items() if key in refused_keys}
            | {job_id for job_id in at_full.keys if at_full.queued_events.get(job_id) != 1}
        )

        # 3. free space: the same server takes work again -----------------------------------
        inside(pid, filler).unlink()
        freed = time.monotonic()
        retried: list[Answer] = []
        recovered_s: float | None = None
        for i, _, body in refused[:3]:
            deadline = time.monotonic() + 20
            while True:
                answer = submitter.submit(body, f"r13-key-{i:05d}", note="after freeing")
                if answer.job_id is not None:
                    break
                assert _is_disk_full(answer), answer
                assert time.monotonic() < deadline, "no recovery 20 s after freeing space"
                time.sleep(0.05)
            if recovered_s is None:
                recovered_s = time.monotonic() - freed
            retried.append(answer)
        assert recovered_s is not None

        # every accepted job runs to the end on the embedded worker (it kept going)
        all_ids = accepted_ids + [a.job_id for a in retried if a.job_id is not None]
        deadline = time.monotonic() + 30
        while True:
            after = inspect_sqlite(pid, database)
            done = Counter(after.statuses.get(job_id, "missing") for job_id in all_ids)
            if done["completed"] == len(all_ids):
                break
            assert time.monotonic() < deadline, f"accepted jobs did not finish: {done}"
            time.sleep(0.3)
        assert server.process.poll() is None, "the server died"
    finally:
        if submitter is not None:
            submitter.close()
        code = stop_server(server)
    log = server_log(server)

    report(
        "R13",
        "sqlite",
        f"{TMPFS_SIZE} tmpfs (+{FILLER_BYTES // 1024} KiB filler): {len(accepted)} accepted, "
        f"disk full after {first_full} submissions (db {sizes['db']} B, WAL {sizes['wal']} B); "
        f"refused with {dict(statuses)}; reads while full {read_while_full}; integrity "
        f"{at_full.integrity!r} while full, {after.integrity!r} after; accepted-but-missing "
        f"{len(missing)}, half-written {len(half_written)}; recovered "
        f"{recovered_s:.3f}s after freeing space, without a restart",
        tmpfs=TMPFS_SIZE,
        accepted=len(accepted),
        first_full_at=first_full,
        statuses={str(k): v for k, v in statuses.items()},
        sizes_at_full=sizes,
        read_while_full=read_while_full,
        integrity_while_full=at_full.integrity,
        integrity_after=after.integrity,
        accepted_but_missing=len(missing),
        half_written=len(half_written),
        time_to_recover_s=round(recovered_s, 3),
        retried_after_freeing=[a.status for a in retried],
        server_exit=code,
    )
    assert at_full.integrity == "ok"
    assert after.integrity == "ok"
    assert not missing, missing
    assert not half_written, half_written
    assert read_while_full == 200
    assert [a.status for a in retried] == [202] * len(retried), "a refused key was stored"
    assert all(after.queued_events.get(job_id) == 1 for job_id in after.keys)
    assert not any(marker in log for marker in TRACE_MARKERS), log[-4000:]
    assert code in STOPPED_OK, log[-4000:]


# -- R14 ------------------------------------------------------------------------------------

R14_JOBS = 2000
R14_WORKERS = 3
R14_CLIENTS = 4
#: WAL with synchronous=NORMAL (commits without an fsync each): the scenario is lock
#: contention, and shorter transactions make the writers collide more often, not less
R14_SETTINGS = {"CONVEYOR_SQLITE_SYNCHRONOUS": "NORMAL"}
LOCK_MARKERS = (
    "database is locked",
    "stayed locked",
    "database unavailable",
    "Traceback",
    "crashed",
)


def _submit_all(
    server: Server, token: str, owner: str, log: ClientLog, bodies: list[dict[str, Any]]
) -> list[Answer]:
    """Submit every body over ``R14_CLIENTS`` concurrent keep-alive clients."""

    def run(part: int) -> list[Answer]:
        submitter = HttpSubmitter(server, token, owner, log)
        try:
            return [
                submitter.submit(bodies[i], f"r14-key-{i:05d}")
                for i in range(part, len(bodies), R14_CLIENTS)
            ]
        finally:
            submitter.close()

    with ThreadPoolExecutor(R14_CLIENTS) as pool:
        parts = list(pool.map(run, range(R14_CLIENTS)))
    return [answer for part in parts for answer in part]


def _terminal_count(probe: Any, ids: list[str]) -> int:
    with probe.connect() as conn:
        stmt = select(func.count()).where(
            jobs.c.id.in_(ids), jobs.c.status.in_(sorted(oracle.TERMINAL))
        )
        return int(conn.execute(stmt).scalar_one())


@sqlite_only
async def test_r14_sqlite_writer_contention(
    db_url: str, tmp_path: Path, fengine: Engine, fleet: Fleet, client_log: ClientLog
) -> None:
    rng = rng_for("R14")
    # the workers boot while the API does
    workers = [
        fleet.spawn(f"r14-w{i}", concurrency=4, settings=R14_SETTINGS) for i in range(R14_WORKERS)
    ]
    api = start_api(
        db_url,
        tmp_path / "r14-api.log",
        app=FAULTS_APP,
        workers=0,
        env={"LEDGER_PATH": str(fleet.ledger), **R14_SETTINGS},
    )
    probe = sync_engine(db_url)
    try:
        await fleet.ready(fengine, *workers)
        owner, token = api.new_user()
        bodies = [
            {
                "task": "db_only_step",
                "input": {"step": "r14", "value": i, "sleep_s": rng.choice([0.0, 0.0, 0.005])},
            }
            for i in range(R14_JOBS)
        ]
        started = time.monotonic()
        answers = await asyncio.to_thread(_submit_all, api, token, owner, client_log, bodies)
        submitted_s = time.monotonic() - started
        statuses = Counter(a.status for a in answers)
        ids = client_log.accepted_ids()
        deadline = time.monotonic() + 60
        while _terminal_count(probe, ids) < len(ids):
            assert time.monotonic() < deadline, f"jobs not drained\n{fleet.diagnostics()}"
            assert all(w.alive() for w in workers), fleet.diagnostics()
            await asyncio.sleep(0.2)
        drained_s = time.monotonic() - started
        alive_at_end = [w.alive() for w in workers]
        for worker in workers:
            worker.send(signal.SIGTERM)
        exits = [await worker.wait_exit(30) for worker in workers]
        with probe.connect() as conn:
            attempts = Counter(
                int(n)
                for n in conn.execute(select(jobs.c.attempts).where(jobs.c.id.in_(ids))).scalars()
            )
    finally:
        probe.dispose()
        api_exit = stop_server(api)
    api_log = server_log(api)
    worker_logs = [w.stderr() for w in workers]

    ledger = read_ledger(fleet.ledger)
    found = oracle.check(db_url, ids, ledger)
    audit_probe = sync_engine(db_url)
    try:
        audit = audit_claims(audit_probe, ids, ledger)
    finally:
        audit_probe.dispose()
    busy = busy_totals(api_log, *worker_logs)
    per_process = {
        name: busy_totals(text).per_1k
        for name, text in [("api", api_log)]
        + [(f"worker{i}", text) for i, text in enumerate(worker_logs)]
    }
    lock_lines = Counter[str]()
    for text in [api_log, *worker_logs]:
        lock_lines.update(count_lines(text, *LOCK_MARKERS))
    http_5xx = sum(n for status, n in statuses.items() if status >= 500 or status == 0)
    claim_rate = audit.started_events / audit.claim_window_s if audit.claim_window_s else 0.0
    report(
        "R14",
        "sqlite",
        f"API + {R14_WORKERS} workers on one WAL file, {len(ids)} jobs over HTTP "
        f"({R14_CLIENTS} clients, {submitted_s:.1f}s, drained in {drained_s:.1f}s): HTTP "
        f"{dict(statuses)}; busy retries {busy.retries} over {busy.transactions} "
        f"transactions = {busy.per_1k:.1f} per 1k ({busy.waited_s:.2f}s waited); claims "
        f"{claim_rate:.0f}/s; double claims {len(audit.double_claims)}, overlapping runs "
        f"{len(audit.overlapping_runs)}; lock errors in logs {sum(lock_lines.values())}",
        jobs=len(ids),
        http_statuses={str(k): v for k, v in statuses.items()},
        http_5xx=http_5xx,
        submit_s=round(submitted_s, 2),
        drain_s=round(drained_s, 2),
        submit_rate_per_s=round(len(ids) / submitted_s, 1),
        claim_rate_per_s=round(claim_rate, 1),
        busy_retries=busy.retries,
        busy_waited_s=busy.waited_s,
        transactions=busy.transactions,
        busy_retries_per_1k_ops=round(busy.per_1k, 2),
        busy_per_1k_by_process={k: round(v, 2) for k, v in per_process.items()},
        double_claims=len(audit.double_claims),
        overlapping_runs=len(audit.overlapping_runs),
        attempts=dict(attempts),
        lock_errors_logged=dict(lock_lines),
        **found.figures(),
    )
    assert statuses == {202: R14_JOBS}, statuses
    assert all(alive_at_end), "a worker died under contention"
    assert exits == [0] * R14_WORKERS, fleet.diagnostics()
    assert api_exit in STOPPED_OK, api_log[-4000:]
    assert not lock_lines, lock_lines
    found.assert_ok(fleet.diagnostics())
    assert found.statuses == {"completed": R14_JOBS}, found.statuses
    assert not audit.double_claims, audit.double_claims[:10]
    assert not audit.overlapping_runs, audit.overlapping_runs[:10]
    assert audit.started_events == R14_JOBS
    assert busy.transactions > 0, "SqliteDatabase logged no totals on close"


# -- R12 ------------------------------------------------------------------------------------

SKEW_S = 300
AHEAD, BEHIND = f"+{SKEW_S}s", f"-{SKEW_S}s"
#: R12's workers: a roomier lease than FAST (a process under libfaketime starts and
#: warms up slower); sweeps and polls as fast as ever
R12_TTL_S = 4.0
R12_LEASES = {"CONVEYOR_LEASE_TTL_S": str(R12_TTL_S), "CONVEYOR_HEARTBEAT_INTERVAL_S": "0.5"}
#: long enough for several renewals and sweeps by both workers while it runs; if either
#: worker stamped or judged a lease with its own clock, it would be rescued at once
LONG_SLEEP_S = 2.5
#: the first execution of the killed worker's steps: still running when it is killed
KILLED_STEP_S = 60.0
DELAYED_JOBS = 8
#: generous: a start later than this after its due time would be a hang, not jitter
START_BOUND_S = 5.0
#: the rescue of a SIGKILLed worker's job by the worker 300 s behind must still come
#: within the lease TTL plus a few sweeps (300 s late would mean its own clock decided)
RESCUE_BOUND_S = R12_TTL_S + 3.0

_SQLITE_CLOCK = """
import asyncio, sys, time
from sqlalchemy import select
from conveyor.store.factory import open_database
from conveyor.store.sql import db_now

async def main():
    db = open_database(sys.argv[1])
    try:
        now = await db.read(lambda conn: conn.execute(select(db_now())).scalar_one())
    finally:
        await db.close()
    print(now.timestamp(), time.time())

asyncio.run(main())
"""


@sqlite_only
def test_r12_sqlite_clock_is_the_process_clock(db_url: str) -> None:
    """On SQLite the "database clock" is ``julianday('now')``, evaluated by the SQLite
    library inside the process that runs the statement: a process with a skewed clock
    stamps and compares leases with its skewed clock. SQLite's processes share one
    machine and so one system clock, which is why R12 proper runs on PostgreSQL only;
    this test pins down the reason (if it ever fails, SQLite got a shared clock and R12
    should run on it too)."""
    require_faketime()
    before = time.time()
    done = subprocess.run(
        [sys.executable, "-c", _SQLITE_CLOCK, db_url],
        cwd=REPO_ROOT,
        env=process_env(faketime_env(AHEAD)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    after = time.time()
    assert done.returncode == 0, done.stderr
    db_now_s, process_now_s = (float(v) for v in done.stdout.split())
    process_skew = process_now_s - after
    low, high = before + SKEW_S - 1.0, after + SKEW_S + 1.0
    report(
        "R12",
        "sqlite",
        f"a process under faketime {AHEAD} sees time.time() {process_skew:+.1f}s off and "
        f"SQLite's db_now() {db_now_s - after:+.1f}s off: on SQLite the database clock is "
        "each process's own clock (R12 runs on PostgreSQL)",
        process_skew_s=round(process_skew, 1),
        db_clock_skew_s=round(db_now_s - after, 1),
    )
    assert low <= process_now_s <= high, "libfaketime did not skew the child's clock"
    assert low <= db_now_s <= high, "SQLite's clock no longer follows the process clock"


def _jwt(subject: str, *, iat: float, exp: float, nbf: float | None) -> str:
    """An HS256 token with the API's secret, as an issuer with a skewed clock makes it."""
    claims: dict[str, Any] = {
        "sub": subject,
        "name": "r12",
        "roles": ["user"],
        "iss": "conveyor",
        "aud": "conveyor",
        "iat": int(iat),
        "exp": int(exp),
    }
    if nbf is not None:
        claims["nbf"] = int(nbf)
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def _token_statuses(server: Server, subject: str, skewed_issuer_token: str) -> dict[str, int]:
    """``GET /api/v1/jobs`` with tokens from issuers whose clocks are off."""
    now = time.time()
    tokens = {
        # beyond the 30 s leeway: refused
        "api_replica_ahead_300s": skewed_issuer_token,
        "issuer_ahead_300s": _jwt(subject, iat=now + 300, exp=now + 1200, nbf=now + 300),
        "issuer_ahead_300s_no_nbf": _jwt(subject, iat=now + 300, exp=now + 1200, nbf=None),
        "issuer_behind_300s_expired_60s_ago": _jwt(
            subject, iat=now - 300, exp=now - 60, nbf=now - 300
        ),
        # controls: within the leeway, or simply an older token still in its lifetime
        "issuer_ahead_20s": _jwt(subject, iat=now + 20, exp=now + 900, nbf=now + 20),
        "issuer_behind_300s_1h_lifetime": _jwt(
            subject, iat=now - 300, exp=now + 3300, nbf=now - 300
        ),
    }
    answers = {}
    for case, token in tokens.items():
        with server.client(token) as client:
            answers[case] = client.get("/api/v1/jobs", params={"limit": 1}).status_code
    return answers


EXPECTED_TOKEN_STATUSES = {
    "api_replica_ahead_300s": 401,
    "issuer_ahead_300s": 401,
    "issuer_ahead_300s_no_nbf": 401,
    "issuer_behind_300s_expired_60s_ago": 401,
    "issuer_ahead_20s": 200,
    "issuer_behind_300s_1h_lifetime": 200,
}


@postgres_only
async def test_r12_clock_skew(
    db_url: str, tmp_path: Path, fengine: Engine, fleet: Fleet, client_log: ClientLog
) -> None:
    require_faketime()
    rng = rng_for("R12")
    ahead = fleet.spawn(
        "r12-ahead",
        concurrency=4,
        queues=["ahead", "default"],
        settings={**R12_LEASES, **faketime_env(AHEAD)},
    )
    behind = fleet.spawn(
        "r12-behind",
        concurrency=4,
        queues=["behind", "default"],
        settings={**R12_LEASES, **faketime_env(BEHIND)},
    )
    api = start_api(db_url, tmp_path / "r12-api.log", app=FAULTS_APP)
    api_ahead: Server | None = None
    probe = sync_engine(db_url)
    submitters: list[HttpSubmitter] = []
    try:
        api_ahead = start_api(
            db_url, tmp_path / "r12-api-ahead.log", app=FAULTS_APP, env=faketime_env(AHEAD)
        )
        ahead_id, behind_id = await fleet.ready(fengine, ahead, behind)
        owner, token = api.new_user()
        real = HttpSubmitter(api, token, owner, client_log)
        # the skewed replica accepts the real-clock token: to it, it is just 300 s old
        skewed = HttpSubmitter(api_ahead, token, owner, client_log)
        submitters += [real, skewed]
        # warm both workers up (first claim, first step, lazy imports) before timing
        warm = [
            real.submit({"task": "db_only_step", "queue": q, "input": {"step": "warm-up"}}, None)
            for q in ("ahead", "behind")
        ]
        await wait_terminal(fengine, [a.job_id for a in warm if a.job_id], timeout=60, fleet=fleet)

        # long steps held by each worker: the other one's sweep must leave them alone
        long_ids = []
        for queue in ("ahead", "ahead", "behind", "behind"):
            # the worker ahead is killed mid-step: its first execution outlasts the test;
            # the re-run after the rescue is short
            first = KILLED_STEP_S if queue == "ahead" else None
            body = {
                "task": "effect_step",
                "queue": queue,
                "input": {"step": "r12-long", "sleep_s": LONG_SLEEP_S, "first_sleep_s": first},
            }
            answer = real.submit(body, None, note=f"long on {queue}")
            assert answer.job_id is not None, answer
            long_ids.append(answer.job_id)
        # delayed jobs: half with delay_s through the replica 300 s ahead, half with an
        # absolute run_at (database time) through the real-clock API
        delayed_ids: list[str] = []
        shown: dict[str, str] = {}
        for i in range(DELAYED_JOBS):
            delay = round(rng.uniform(0.5, 2.5), 3)
            base: dict[str, Any] = {"task": "db_only_step", "input": {"step": "r12-delayed"}}
            if i % 2 == 0:
                answer = skewed.submit({**base, "delay_s": delay}, None, note="delay_s")
                shown.setdefault("delay_s_via_replica_ahead", str(answer.body.get("status")))
            else:
                run_at = db_clock(probe) + timedelta(seconds=delay)
                answer = real.submit({**base, "run_at": run_at.isoformat()}, None, note="run_at")
                shown.setdefault("run_at_via_real_api", str(answer.body.get("status")))
            assert answer.job_id is not None, answer
            delayed_ids.append(answer.job_id)

        # both workers hold their long steps (their sweeps run every 0.3 s meanwhile)
        def holders() -> Counter[str]:
            with probe.connect() as conn:
                rows = conn.execute(
                    select(jobs.c.worker_id).where(
                        jobs.c.id.in_(long_ids), jobs.c.status == "active"
                    )
                ).scalars()
                return Counter(str(r) for r in rows)

        await wait_for(
            lambda: holders() == {ahead_id: 2, behind_id: 2},
            timeout=30,
            what="each worker holds two long steps",
            fleet=fleet,
        )
        await asyncio.sleep(1.0)  # both alive, sweeping and renewing
        # then the worker 300 s ahead dies mid-step: the one 300 s behind must rescue its
        # steps in time by the database clock
        assert holders()[ahead_id] == 2, "the worker ahead let go of its steps"
        ahead.stop()
        killed_at = db_clock(probe)
        # the rescued steps wait in the "ahead" queue for a worker that serves it again
        successor = fleet.spawn(
            "r12-successor", concurrency=2, queues=["ahead"], settings=R12_LEASES
        )
        # a token the replica 300 s ahead issues now, and tokens of other skewed issuers
        fresh = await asyncio.to_thread(login, api_ahead.base, "admin", ADMIN_PASSWORD)
        replica_skew = float(jwt.decode(fresh, options={"verify_signature": False})["iat"])
        replica_skew -= time.time()
        token_statuses = await asyncio.to_thread(_token_statuses, api, owner, fresh)
        ids = client_log.accepted_ids()
        await wait_terminal(fengine, ids, timeout=40, fleet=fleet)
        with probe.connect() as conn:
            rows = {
                r.id: r
                for r in conn.execute(
                    select(jobs.c.id, jobs.c.run_at, jobs.c.attempts).where(jobs.c.id.in_(ids))
                )
            }
            history = conn.execute(
                select(events.c.job_id, events.c.type, events.c.data, events.c.created_at)
                .where(events.c.job_id.in_(ids))
                .order_by(events.c.id)
            ).all()
        for draining in (behind, successor):
            draining.send(signal.SIGTERM)
        for draining in (behind, successor):
            assert await draining.wait_exit(30) == 0, fleet.diagnostics()
    finally:
        for submitter in submitters:
            submitter.close()
        probe.dispose()
        for server in (api, api_ahead):
            if server is not None:
                stop_server(server)

    ledger = read_ledger(fleet.ledger)
    skews = clock_skews(ledger)
    found = oracle.check(db_url, ids, deskewed(ledger))
    expiries = [(job_id, data) for job_id, kind, data, _ in history if kind == "job.lease_expired"]
    premature = [job_id for job_id, data in expiries if data.get("worker_id") != ahead_id]
    rescued = {job_id for job_id, data in expiries if data.get("worker_id") == ahead_id}
    rescue_s = [
        (created_at - killed_at).total_seconds()
        for job_id, kind, _, created_at in history
        if kind == "job.lease_expired" and job_id in rescued
    ]
    first_start = {}
    ran_on = {}
    for job_id, kind, data, created_at in history:
        if kind == "job.started" and job_id not in first_start:
            first_start[job_id] = created_at
            ran_on[job_id] = "ahead" if (data or {}).get("worker_id") == ahead_id else "behind"
    start_error = {
        job_id: (first_start[job_id] - rows[job_id].run_at).total_seconds()
        for job_id in delayed_ids
    }
    fence = FenceLog.parse(behind.stderr())
    by_skew = {
        side: distribution(err for job_id, err in start_error.items() if ran_on[job_id] == side)
        for side in ("ahead", "behind")
    }
    report(
        "R12",
        "postgres",
        f"workers at {AHEAD} / {BEHIND} (ledger shows {skews.get(ahead.pid, float('nan')):+.1f}s"
        f" / {skews.get(behind.pid, float('nan')):+.1f}s), API replica at "
        f"{replica_skew:+.0f}s: premature rescues {len(premature)}; the dead {AHEAD} "
        f"worker's {len(rescued)} jobs rescued by the {BEHIND} one "
        f"{distribution(rescue_s).get('max')}s after the kill (bound {RESCUE_BOUND_S}s); "
        f"delayed start error vs DB due time {distribution(start_error.values())}; tokens "
        f"{token_statuses}; status shown at submit {shown}",
        worker_skew_s={
            "ahead": round(skews.get(ahead.pid, 0.0), 1),
            "behind": round(skews.get(behind.pid, 0.0), 1),
        },
        api_replica_skew_s=round(replica_skew, 1),
        premature_rescues=len(premature),
        rescued_after_kill=len(rescued),
        rescue_after_kill_s=distribution(rescue_s),
        start_error_s=distribution(start_error.values()),
        start_error_by_worker_s=by_skew,
        min_start_error_s=round(min(start_error.values()), 3),
        token_statuses=token_statuses,
        status_shown_at_submit=shown,
        self_fenced_behind=len(fence.self_fenced),
        **found.figures(),
    )
    assert abs(skews[ahead.pid] - SKEW_S) < 5, skews
    assert abs(skews[behind.pid] + SKEW_S) < 5, skews
    assert abs(replica_skew - SKEW_S) < 5, replica_skew
    found.assert_ok(fleet.diagnostics())
    assert not premature, premature
    assert set(long_ids[:2]) <= rescued, "the dead worker's long steps were not rescued"
    assert all(0 <= s <= RESCUE_BOUND_S for s in rescue_s), rescue_s
    assert all(0 <= e <= START_BOUND_S for e in start_error.values()), start_error
    assert {rows[j].attempts for j in long_ids[2:]} == {1}, "a live worker's step re-ran"
    assert not fence.noticed(), fence
    assert token_statuses == EXPECTED_TOKEN_STATUSES, token_statuses


# -- R10 ------------------------------------------------------------------------------------

R10_ROUNDS = 3
R10_WORKERS = 2
#: application_name of the workers' backends (libpq's PGAPPNAME), the kill pattern
R10_APP = "conveyor-r10-worker-"
R10_FLOW_JOBS = 20
#: polling backs off up to this, so a wake-up that comes by polling is slow to see
R10_POLL_MAX_S = 3.0
#: idle time before an idle kill: the workers' polling has backed off by then
R10_IDLE_S = 2.0
R10_PROBE_EVERY_S = 0.1
#: probes keep coming until this many were sent after LISTEN was back (at most MAX)
R10_PROBES_AFTER = 5
R10_PROBES_MAX = 60
#: a pickup faster than this came from a notification (a poll after R10_IDLE_S of
#: idling comes about a second or more after the submission)
NOTIFY_LEVEL_S = 0.3
#: generous bound on kill -> notification-driven pickup again (a hang detector)
RESUME_BOUND_S = 5.0


def _flow(submitter: HttpSubmitter, rng: random.Random, count: int) -> list[Answer]:
    """A steady trickle of short jobs (one every ~25 ms)."""
    answers = []
    for i in range(count):
        body = {
            "task": "db_only_step",
            "input": {"step": "r10-flow", "value": i, "sleep_s": round(rng.uniform(0, 0.05), 3)},
        }
        answers.append(submitter.submit(body, None, note="flow"))
        time.sleep(0.025)
    return answers


def _probes(submitter: HttpSubmitter, relistened: threading.Event) -> list[Answer]:
    """One no-op job every R10_PROBE_EVERY_S seconds, until R10_PROBES_AFTER more were
    sent once ``relistened`` is set (at most R10_PROBES_MAX); their pickup latency is the
    measure."""
    answers: list[Answer] = []
    after = 0
    while len(answers) < R10_PROBES_MAX and after < R10_PROBES_AFTER:
        after += relistened.is_set()
        body = {"task": "db_only_step", "input": {"step": "r10-probe", "value": len(answers)}}
        answers.append(submitter.submit(body, None, note="probe"))
        time.sleep(R10_PROBE_EVERY_S)
    return answers


def _listeners(probe: SyncEngine, killed: set[int]) -> dict[str, int]:
    """Each worker's LISTEN backend (by application_name) that was not just killed."""
    return {
        b.application_name: b.pid
        for b in pg_backends(probe, R10_APP + "%")
        if b.listener and b.pid not in killed
    }


def _wait_listeners(probe: SyncEngine, killed: set[int], timeout: float) -> datetime:
    """Wait until every worker LISTENs again on a new backend; the database time then."""
    deadline = time.monotonic() + timeout
    while len(_listeners(probe, killed)) < R10_WORKERS:
        if time.monotonic() > deadline:
            raise AssertionError(f"LISTEN not re-established within {timeout}s")
        time.sleep(0.01)
    return db_clock(probe)


def _pickups(probe: SyncEngine, ids: list[str]) -> dict[str, tuple[datetime, datetime]]:
    """created_at and started_at (database clock) of each job."""
    with probe.connect() as conn:
        rows = conn.execute(
            select(jobs.c.id, jobs.c.created_at, jobs.c.started_at).where(jobs.c.id.in_(ids))
        ).all()
    return {str(r[0]): (r[1], r[2]) for r in rows}


@postgres_only
async def test_r10_connections_killed_server_side(
    db_url: str, tmp_path: Path, fengine: Engine, fleet: Fleet, client_log: ClientLog
) -> None:
    workers = [
        fleet.spawn(
            f"r10-w{i}",
            concurrency=2,
            settings={"PGAPPNAME": f"{R10_APP}{i}", "CONVEYOR_POLL_MAX_S": str(R10_POLL_MAX_S)},
        )
        for i in range(R10_WORKERS)
    ]
    # the API's backends are not killed (its own application_name): it is the users' side
    api = start_api(
        db_url, tmp_path / "r10-api.log", app=FAULTS_APP, env={"PGAPPNAME": "conveyor-r10-api"}
    )
    probe = sync_engine(db_url)
    submitters: list[HttpSubmitter] = []
    kills: list[dict[str, Any]] = []
    relisten_s: list[float] = []
    resume_s: list[float] = []
    notify_latency: list[float] = []
    missed_latency: list[float] = []
    try:
        ids_before = await fleet.ready(fengine, *workers)
        owner, token = api.new_user()
        flow_submitter = HttpSubmitter(api, token, owner, client_log)
        probe_submitter = HttpSubmitter(api, token, owner, client_log)
        submitters += [flow_submitter, probe_submitter]
        await asyncio.to_thread(_wait_listeners, probe, set(), 30.0)

        def kill(phase: str) -> tuple[set[int], datetime]:
            killed, at = terminate_backends(probe, R10_APP + "%")
            kills.append(
                {
                    "phase": phase,
                    "backends": len(killed),
                    "listeners": sum(b.listener for b in killed),
                }
            )
            return {b.pid for b in killed}, at

        for round_ in range(R10_ROUNDS):
            rng = rng_for("R10", round_)
            # A. kill every backend of the workers while jobs flow
            flow = asyncio.create_task(asyncio.to_thread(_flow, flow_submitter, rng, R10_FLOW_JOBS))
            await asyncio.sleep(rng.uniform(0.1, 0.4))
            killed, _ = await asyncio.to_thread(kill, "flow")
            answers = await flow
            flow_ids = [a.job_id for a in answers if a.job_id is not None]
            await wait_terminal(fengine, flow_ids, timeout=30, fleet=fleet)
            await asyncio.to_thread(_wait_listeners, probe, killed, 30.0)

            # B. kill them again while idle; then one probe every 100 ms
            await asyncio.sleep(R10_IDLE_S)
            killed, killed_at = await asyncio.to_thread(kill, "idle")
            relistened = threading.Event()
            probing = asyncio.create_task(asyncio.to_thread(_probes, probe_submitter, relistened))
            try:
                back_at = await asyncio.to_thread(_wait_listeners, probe, killed, 30.0)
            finally:
                relistened.set()
            probe_ids = [a.job_id for a in await probing if a.job_id is not None]
            await wait_terminal(fengine, probe_ids, timeout=30, fleet=fleet)
            relisten_s.append((back_at - killed_at).total_seconds())
            picked = _pickups(probe, probe_ids)
            resumed: float | None = None
            for job_id in sorted(probe_ids, key=lambda j: picked[j][0]):
                created, started = picked[job_id]
                latency = (started - created).total_seconds()
                if created < back_at:
                    missed_latency.append(latency)  # sent while nobody listened
                    continue
                notify_latency.append(latency)
                if resumed is None and latency < NOTIFY_LEVEL_S:
                    resumed = (started - killed_at).total_seconds()
            assert resumed is not None, f"no notification-driven pickup after kill {round_}"
            resume_s.append(resumed)

        alive = [w.alive() for w in workers]
        ids_after = [w.id for w in await fengine.list_workers() if w.pid in fleet.worker_ids]
        for worker in workers:
            worker.send(signal.SIGTERM)
        exits = [await worker.wait_exit(30) for worker in workers]
    finally:
        for submitter in submitters:
            submitter.close()
        probe.dispose()
        stop_server(api)

    ids = client_log.accepted_ids()
    found = oracle.check(db_url, ids, read_ledger(fleet.ledger))
    statuses = Counter(entry.status for entry in client_log.entries)
    logs = "\n".join(w.stderr() for w in workers)
    absorbed = count_lines(
        logs, "LISTEN connection lost", "database unavailable", "heartbeat failed", "Traceback"
    )
    user_errors = sum(n for status, n in statuses.items() if status not in (200, 202))
    failed = found.statuses.get("failed", 0)
    report(
        "R10",
        "postgres",
        f"{len(kills)} kills ({sum(k['backends'] for k in kills)} backends, "
        f"{sum(k['listeners'] for k in kills)} of them LISTEN) over {len(ids)} jobs: lost "
        f"{len(found.lost)}, errors surfaced to users {user_errors} (HTTP {dict(statuses)}), "
        f"failed jobs {failed}; kill -> LISTEN back {distribution(relisten_s)}; kill -> "
        f"first notification-driven pickup {distribution(resume_s)}; pickup after re-LISTEN "
        f"{distribution(notify_latency)}, of jobs sent while nobody listened "
        f"{distribution(missed_latency)} (polling up to {R10_POLL_MAX_S}s); absorbed by the "
        f"workers {dict(absorbed)}",
        kills=len(kills),
        backends_killed=sum(k["backends"] for k in kills),
        listeners_killed=sum(k["listeners"] for k in kills),
        relisten_s=distribution(relisten_s),
        resume_notify_pickup_s=distribution(resume_s),
        notify_pickup_latency_s=distribution(notify_latency),
        missed_notify_pickup_latency_s=distribution(missed_latency),
        user_errors=user_errors,
        failed_jobs=failed,
        worker_log_lines=dict(absorbed),
        **found.figures(),
    )
    assert all(alive), "a worker died"
    assert sorted(ids_after) == sorted(ids_before), "a worker re-registered (restarted)"
    assert exits == [0] * R10_WORKERS, fleet.diagnostics()
    assert all(k["listeners"] == R10_WORKERS for k in kills), kills
    found.assert_ok(fleet.diagnostics())
    assert found.statuses == {"completed": len(ids)}, found.statuses
    assert user_errors == 0, statuses
    assert absorbed["Traceback"] == 0, logs[-4000:]
    assert absorbed["LISTEN connection lost"] >= len(kills) * R10_WORKERS
    assert all(s <= RESUME_BOUND_S for s in resume_s), resume_s
