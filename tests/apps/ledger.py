"""A Conveyor app for acceptance tests: tasks that leave a trace outside Conveyor.

``record`` (async) and ``record_sync`` (runs in a worker thread) append a ``start`` row
to a ledger, sleep ``sleep_s`` seconds, then append an ``end`` row. The ledger is a SQLite
file named by the ``LEDGER_PATH`` environment variable (stdlib :mod:`sqlite3`, so it works
whatever backend Conveyor itself uses). A test kills or stops the worker while a task
sleeps and then reads the ledger to see which attempts ran, where, and how far.

``add`` is a plain task for CLI tests. Run a worker with
``conveyor worker --app tests.apps.ledger:app`` from the repository root.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from conveyor import Context, Conveyor, NonRetryableError

app = Conveyor("ledger")

LEDGER_ENV = "LEDGER_PATH"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    phase TEXT NOT NULL CHECK (phase IN ('start', 'end')),
    key TEXT NOT NULL,
    at REAL NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class LedgerRow:
    id: int
    job_id: str
    attempt: int
    pid: int
    phase: str
    key: str
    at: float


def _connect(path: str) -> sqlite3.Connection:
    # several worker processes and the test write/read at once: wait for the lock
    return sqlite3.connect(path, timeout=30.0, isolation_level=None)


def init_ledger(path: str) -> None:
    """Create the ledger file and table (call once, before starting workers)."""
    with contextlib.closing(_connect(path)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(_SCHEMA)


def append(path: str, job_id: str, attempt: int, phase: str, key: str) -> None:
    """Append one row, committed before returning."""
    with contextlib.closing(_connect(path)) as conn:
        conn.execute(
            "INSERT INTO ledger (job_id, attempt, pid, phase, key, at) VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, attempt, os.getpid(), phase, key, time.time()),
        )


def read_ledger(path: str) -> list[LedgerRow]:
    """Every row, in insertion order."""
    with contextlib.closing(_connect(path)) as conn:
        rows = conn.execute(
            "SELECT id, job_id, attempt, pid, phase, key, at FROM ledger ORDER BY id"
        ).fetchall()
    return [LedgerRow(*row) for row in rows]


def _ledger_path() -> str:
    path = os.environ.get(LEDGER_ENV)
    if not path:
        raise NonRetryableError(f"set {LEDGER_ENV} to the ledger's SQLite file")
    return path


def _result(ctx: Context, key: str) -> dict[str, Any]:
    return {"job_id": ctx.job_id, "attempt": ctx.attempt, "pid": os.getpid(), "key": key}


@app.task(retries=3)
async def record(ctx: Context, sleep_s: float = 0.0, key: str = "") -> dict[str, Any]:
    """Ledger ``start``, sleep ``sleep_s`` (cancellable), ledger ``end``."""
    path = _ledger_path()
    await asyncio.to_thread(append, path, ctx.job_id, ctx.attempt, "start", key)
    await asyncio.sleep(sleep_s)
    await asyncio.to_thread(append, path, ctx.job_id, ctx.attempt, "end", key)
    return _result(ctx, key)


@app.task(retries=3)
def record_sync(ctx: Context, sleep_s: float = 0.0, key: str = "") -> dict[str, Any]:
    """Like ``record`` but blocking, in a worker thread (cannot be interrupted)."""
    path = _ledger_path()
    append(path, ctx.job_id, ctx.attempt, "start", key)
    time.sleep(sleep_s)
    append(path, ctx.job_id, ctx.attempt, "end", key)
    return _result(ctx, key)


@app.task
def add(a: int, b: int) -> int:
    """a + b."""
    return a + b


# A chain whose steps leave ledger rows keyed by step id: a crash test kills the worker
# in the middle and checks that completed steps never run again.
from conveyor.domain.graph import Step  # noqa: E402
from conveyor.workflows import Workflow  # noqa: E402

CHAIN = ("s1", "s2", "s3", "s4")
app.add_workflow(
    Workflow(
        "ledger_chain",
        [
            Step(step_id, "record", [CHAIN[i - 1]] if i else [], input={"key": step_id})
            for i, step_id in enumerate(CHAIN)
        ],
        description="Four recording steps in a row.",
    )
)
