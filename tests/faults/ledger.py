"""The two ledgers the fault tests read: executions and effects, in one SQLite file.

Worker processes running :mod:`tests.faults.app` append to the file named by
``LEDGER_PATH`` (stdlib :mod:`sqlite3`, so it works whatever backend Conveyor uses):

* ``executions``: one ``start`` row when a step body begins and one ``end`` row when it
  returns (job, step, attempt, lease token when known, pid, ``time.monotonic()`` and
  ``time.time()``). Raw re-executions show up here. ``CLOCK_MONOTONIC`` is system-wide on
  Linux, so monotonic times of different processes (and of the test) compare directly.
* ``effects``: the side effect itself, unique on ``(job_id, step, idem_key)`` and
  written with ``INSERT ... ON CONFLICT DO NOTHING``, the way a real idempotent-keyed
  side effect (a payment with an idempotency key, an upsert) is written.
* ``effect_writes``: every attempt to write an effect, with whether it inserted a row or
  hit the unique key (``absorbed``), and whether the row already there carries the same
  payload. A key hit with a different payload is a real conflict.

A *keyed* step uses a stable key (``job:step``), so a re-execution is absorbed; an
*unkeyed* step uses a key per attempt (what a naive side effect does), so a re-execution
is a user-visible duplicate: a second effect row for the same job and step.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEDGER_ENV = "LEDGER_PATH"

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS executions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        step TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        token TEXT,
        phase TEXT NOT NULL CHECK (phase IN ('start', 'end')),
        pid INTEGER NOT NULL,
        mono REAL NOT NULL,
        wall REAL NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS effects (
        job_id TEXT NOT NULL,
        step TEXT NOT NULL,
        idem_key TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        pid INTEGER NOT NULL,
        payload TEXT NOT NULL,
        mono REAL NOT NULL,
        wall REAL NOT NULL,
        UNIQUE (job_id, step, idem_key)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS effect_writes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        step TEXT NOT NULL,
        idem_key TEXT NOT NULL,
        keyed INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        pid INTEGER NOT NULL,
        inserted INTEGER NOT NULL,
        same_payload INTEGER NOT NULL,
        mono REAL NOT NULL,
        wall REAL NOT NULL
    )
    """,
)


@dataclass(frozen=True, slots=True)
class Execution:
    id: int
    job_id: str
    step: str
    attempt: int
    token: str | None
    phase: str
    pid: int
    mono: float
    wall: float


@dataclass(frozen=True, slots=True)
class Effect:
    job_id: str
    step: str
    idem_key: str
    attempt: int
    pid: int
    payload: str
    mono: float
    wall: float


@dataclass(frozen=True, slots=True)
class EffectWrite:
    id: int
    job_id: str
    step: str
    idem_key: str
    keyed: bool
    attempt: int
    pid: int
    inserted: bool
    same_payload: bool
    mono: float
    wall: float


@dataclass(frozen=True, slots=True)
class Ledger:
    """A snapshot of the whole ledger file."""

    executions: list[Execution]
    effects: list[Effect]
    writes: list[EffectWrite]

    def starts(self, job_id: str | None = None) -> list[Execution]:
        return [
            e
            for e in self.executions
            if e.phase == "start" and (job_id is None or e.job_id == job_id)
        ]

    def ends(self, job_id: str | None = None) -> list[Execution]:
        return [
            e
            for e in self.executions
            if e.phase == "end" and (job_id is None or e.job_id == job_id)
        ]

    def effects_of(self, job_id: str) -> list[Effect]:
        return [e for e in self.effects if e.job_id == job_id]

    def writes_of(self, job_id: str) -> list[EffectWrite]:
        return [w for w in self.writes if w.job_id == job_id]


def _connect(path: str | Path) -> sqlite3.Connection:
    # several worker processes and the test write and read at once: wait for the lock
    return sqlite3.connect(str(path), timeout=30.0, isolation_level=None)


def init_ledger(path: str | Path) -> Path:
    """Create the ledger file and its tables (once, before starting workers)."""
    with contextlib.closing(_connect(path)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        for statement in _SCHEMA:
            conn.execute(statement)
    return Path(path)


def ledger_path() -> str:
    path = os.environ.get(LEDGER_ENV)
    if not path:
        raise RuntimeError(f"set {LEDGER_ENV} to the ledger's SQLite file")
    return path


def append_execution(
    path: str, job_id: str, step: str, attempt: int, token: str | None, phase: str
) -> None:
    """Append one execution row, committed before returning."""
    with contextlib.closing(_connect(path)) as conn:
        conn.execute(
            "INSERT INTO executions (job_id, step, attempt, token, phase, pid, mono, wall) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, step, attempt, token, phase, os.getpid(), time.monotonic(), time.time()),
        )


def executed_before(path: str, job_id: str, step: str) -> bool:
    """Whether an earlier execution of this step already started (any attempt, any pid)."""
    with contextlib.closing(_connect(path)) as conn:
        row = conn.execute(
            "SELECT 1 FROM executions WHERE job_id = ? AND step = ? AND phase = 'start' LIMIT 1",
            (job_id, step),
        ).fetchone()
    return row is not None


def write_effect(
    path: str, job_id: str, step: str, attempt: int, *, keyed: bool, payload: Any
) -> bool:
    """The side effect: insert once per idempotency key. True if a row was inserted."""
    idem_key = f"{job_id}:{step}" if keyed else f"{job_id}:{step}:attempt-{attempt}"
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    with contextlib.closing(_connect(path)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            now_mono, now_wall = time.monotonic(), time.time()
            inserted = (
                conn.execute(
                    "INSERT INTO effects "
                    "(job_id, step, idem_key, attempt, pid, payload, mono, wall) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (job_id, step, idem_key) DO NOTHING",
                    (job_id, step, idem_key, attempt, os.getpid(), body, now_mono, now_wall),
                ).rowcount
                == 1
            )
            stored = conn.execute(
                "SELECT payload FROM effects WHERE job_id = ? AND step = ? AND idem_key = ?",
                (job_id, step, idem_key),
            ).fetchone()
            conn.execute(
                "INSERT INTO effect_writes (job_id, step, idem_key, keyed, attempt, pid, "
                "inserted, same_payload, mono, wall) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    step,
                    idem_key,
                    int(keyed),
                    attempt,
                    os.getpid(),
                    int(inserted),
                    int(stored is not None and stored[0] == body),
                    now_mono,
                    now_wall,
                ),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return inserted


def read_ledger(path: str | Path) -> Ledger:
    """Every row of every table, in insertion order."""
    with contextlib.closing(_connect(path)) as conn:
        executions = [
            Execution(*row)
            for row in conn.execute(
                "SELECT id, job_id, step, attempt, token, phase, pid, mono, wall "
                "FROM executions ORDER BY id"
            )
        ]
        effects = [
            Effect(*row)
            for row in conn.execute(
                "SELECT job_id, step, idem_key, attempt, pid, payload, mono, wall "
                "FROM effects ORDER BY rowid"
            )
        ]
        writes = [
            EffectWrite(
                row[0],
                row[1],
                row[2],
                row[3],
                bool(row[4]),
                row[5],
                row[6],
                bool(row[7]),
                bool(row[8]),
                row[9],
                row[10],
            )
            for row in conn.execute(
                "SELECT id, job_id, step, idem_key, keyed, attempt, pid, inserted, "
                "same_payload, mono, wall FROM effect_writes ORDER BY id"
            )
        ]
    return Ledger(executions, effects, writes)
