"""The oracle: what must hold once the system has quiesced after a fault.

Call :func:`check` with the database URL, the accepted job ids (from the client log) and
the ledger file, then ``report.assert_ok()``. It checks, against Conveyor's database and
the ledgers:

1. every accepted job exists (lost = 0) and is terminal, or (``allow_active``) active
   with a live lease; no active row whose lease expired longer ago than the recovery
   bound (the sweep should have taken it), no active row without a lease;
2. exactly one recorded result per step: at most one ``job.completed`` event per job,
   exactly one for a completed job, one terminal event per terminal job; a completed job
   whose task writes the ledger has an ``end`` row for the completing attempt and no
   execution started after it completed ("never both completed and re-run");
3. for keyed (idempotent) effects: one effect row per job and step, and no key hit with a
   different payload; re-executions absorbed by the key are counted (``absorbed``), not
   errors. Extra effect rows of unkeyed steps are user-visible duplicates
   (``unkeyed_duplicates``), an error unless ``allow_unkeyed_duplicates``;
4. event ids are 1, 2, 3, ... without gaps, and the counter agrees with the last id;
5. failed jobs carry a reason (``error.reason`` or ``error.type``).
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from conveyor.store.schema import event_counter, events, jobs
from conveyor.store.sql import db_now
from tests.faults.harness import POLL_MAX_S, SWEEP_MAX_S, sync_engine
from tests.faults.ledger import Ledger, read_ledger

TERMINAL = frozenset({"completed", "failed", "cancelled"})
TERMINAL_EVENTS = frozenset({"job.completed", "job.failed", "job.cancelled"})
#: clock slack when comparing a worker's time.time() with the database clock
CLOCK_SLACK_S = 0.05


@dataclass
class OracleReport:
    accepted: int = 0
    lost: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    raw_executions: int = 0  # ledger start rows of accepted jobs
    re_executions: int = 0  # start rows beyond the first per job and step
    effect_rows: int = 0
    absorbed: int = 0  # keyed effect writes that hit the key with the same payload
    payload_conflicts: int = 0  # keyed effect writes that hit the key with another payload
    keyed_duplicates: int = 0  # effect rows beyond one per job and step (keyed steps)
    unkeyed_duplicates: int = 0  # the same for unkeyed steps: user-visible duplicates
    completed_events: int = 0
    lease_expiries: int = 0
    releases: int = 0
    events: int = 0
    last_event_id: int = 0

    @property
    def duplicates(self) -> int:
        """Effective (user-visible) duplicates: effect rows beyond one per job and step of
        keyed steps (extra recorded results are violations of their own)."""
        return self.keyed_duplicates

    def violate(self, message: str) -> None:
        self.violations.append(message)

    def assert_ok(self, context: str = "") -> None:
        if self.violations:
            shown = "\n  ".join(self.violations[:40])
            more = len(self.violations) - 40
            extra = f"\n  ... and {more} more" if more > 0 else ""
            raise AssertionError(
                f"oracle: {len(self.violations)} violation(s)\n  {shown}{extra}\n{context}"
            )

    def figures(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "lost": len(self.lost),
            "statuses": dict(self.statuses),
            "raw_executions": self.raw_executions,
            "re_executions": self.re_executions,
            "effect_rows": self.effect_rows,
            "absorbed": self.absorbed,
            "duplicates": self.duplicates,
            "unkeyed_duplicates": self.unkeyed_duplicates,
            "payload_conflicts": self.payload_conflicts,
            "lease_expiries": self.lease_expiries,
            "releases": self.releases,
            "events": self.events,
            "violations": len(self.violations),
        }


def check(
    database_url: str,
    accepted: Iterable[str],
    ledger: Path | Ledger | None = None,
    *,
    allow_active: bool = False,
    allow_unkeyed_duplicates: bool = False,
    stale_after_s: float = SWEEP_MAX_S + POLL_MAX_S + 1.0,
) -> OracleReport:
    """Check the invariants; see the module docstring. ``stale_after_s``: how long an
    active row may sit with an expired lease before that is a violation (a sweep every
    ``SWEEP_S`` should take it well within that)."""
    ids = list(dict.fromkeys(accepted))
    snapshot = ledger if isinstance(ledger, Ledger) or ledger is None else read_ledger(ledger)
    engine = sync_engine(database_url)
    try:
        with engine.connect() as conn:
            now = conn.execute(select(db_now())).scalar_one()
            rows = {r.id: r for r in conn.execute(select(jobs).where(jobs.c.id.in_(ids)))}
            all_events = conn.execute(
                select(events.c.id, events.c.type, events.c.job_id, events.c.data).order_by(
                    events.c.id
                )
            ).all()
            counter = conn.execute(select(event_counter.c.last_id)).scalar()
    finally:
        engine.dispose()

    report = OracleReport(accepted=len(ids))
    by_job: dict[str, list[Any]] = defaultdict(list)
    for event in all_events:
        if event.job_id is not None:
            by_job[event.job_id].append(event)

    # 1. accepted jobs: present, terminal or legitimately active -----------------------
    for job_id in ids:
        row = rows.get(job_id)
        if row is None:
            report.lost.append(job_id)
            report.violate(f"lost: accepted job {job_id} is not in the database")
            continue
        report.statuses[row.status] += 1
        if row.status in TERMINAL:
            if row.lease_token is not None:
                report.violate(f"job {job_id} is {row.status} but still holds a lease")
            continue
        if row.status == "active":
            if row.lease_token is None or row.lease_expires_at is None:
                report.violate(f"job {job_id} is active without a lease")
                continue
            expired_for = (now - row.lease_expires_at).total_seconds()
            if expired_for > stale_after_s:
                report.violate(
                    f"job {job_id} is active with a lease that expired {expired_for:.2f}s ago "
                    f"(> {stale_after_s:.2f}s: the sweep did not recover it)"
                )
            elif not allow_active:
                report.violate(f"job {job_id} is still active (not quiescent)")
            continue
        report.violate(f"job {job_id} is {row.status}, not terminal")

    # 2. one recorded result per job ----------------------------------------------------
    for job_id in ids:
        row = rows.get(job_id)
        if row is None:
            continue
        history = by_job.get(job_id, [])
        kinds = Counter(e.type for e in history)
        report.completed_events += kinds["job.completed"]
        report.lease_expiries += kinds["job.lease_expired"]
        report.releases += kinds["job.released"]
        if kinds["job.completed"] > 1:
            report.violate(f"job {job_id} has {kinds['job.completed']} job.completed events")
        if (row.status == "completed") != (kinds["job.completed"] == 1):
            report.violate(
                f"job {job_id} is {row.status} with {kinds['job.completed']} job.completed events"
            )
        terminal = sum(kinds[k] for k in TERMINAL_EVENTS)
        if row.status in TERMINAL and terminal != 1:
            report.violate(f"job {job_id} is {row.status} with {terminal} terminal events")
        if row.status not in TERMINAL and terminal:
            report.violate(f"job {job_id} is {row.status} but has a terminal event")
        if row.status == "failed":
            error = row.error if isinstance(row.error, dict) else {}
            if not (error.get("reason") or error.get("type")):
                report.violate(f"failed job {job_id} carries no reason: {row.error!r}")
        if snapshot is not None:
            _check_ledger(report, snapshot, job_id, row, history)

    if snapshot is not None:
        _check_effects(report, snapshot, set(ids), rows, allow_unkeyed_duplicates)

    # 4. event ids gap-free -------------------------------------------------------------
    event_ids = [e.id for e in all_events]
    report.events = len(event_ids)
    report.last_event_id = event_ids[-1] if event_ids else 0
    if event_ids and event_ids[0] != 1:
        report.violate(f"event ids start at {event_ids[0]}, not 1")
    gaps = [(a, b) for a, b in itertools.pairwise(event_ids) if b != a + 1]
    if gaps:
        report.violate(f"event ids not consecutive: {gaps[:10]}")
    if (counter or 0) != report.last_event_id:
        report.violate(
            f"event counter at {counter} but the last event id is {report.last_event_id}"
        )
    return report


def _check_ledger(
    report: OracleReport, ledger: Ledger, job_id: str, row: Any, history: list[Any]
) -> None:
    starts = ledger.starts(job_id)
    if not starts:
        return
    report.raw_executions += len(starts)
    per_step = Counter(s.step for s in starts)
    report.re_executions += sum(n - 1 for n in per_step.values())
    if row.status != "completed":
        return
    completed = [e for e in history if e.type == "job.completed"]
    attempt = completed[0].data.get("attempt") if completed and completed[0].data else None
    ends = ledger.ends(job_id)
    if attempt is not None and not any(e.attempt == attempt for e in ends):
        report.violate(
            f"job {job_id} completed by attempt {attempt}, which never reached its end row"
        )
    if row.finished_at is not None:
        done = row.finished_at.timestamp()
        late = [s for s in starts if s.wall > done + CLOCK_SLACK_S]
        if late:
            report.violate(
                f"job {job_id} completed, then ran again: "
                f"{[(s.attempt, s.pid, round(s.wall - done, 3)) for s in late]}"
            )


def _check_effects(
    report: OracleReport,
    ledger: Ledger,
    ids: set[str],
    rows: dict[str, Any],
    allow_unkeyed_duplicates: bool,
) -> None:
    keyed_steps = {(w.job_id, w.step) for w in ledger.writes if w.keyed}
    per_step = Counter((e.job_id, e.step) for e in ledger.effects if e.job_id in ids)
    report.effect_rows = sum(per_step.values())
    for write in ledger.writes:
        if write.job_id not in ids or not write.keyed or write.inserted:
            continue
        if write.same_payload:
            report.absorbed += 1
        else:
            report.payload_conflicts += 1
            report.violate(
                f"job {write.job_id} step {write.step}: key {write.idem_key} hit with a "
                "different payload"
            )
    for (job_id, step), count in per_step.items():
        extra = count - 1
        if (job_id, step) in keyed_steps:
            report.keyed_duplicates += extra
            if extra:
                report.violate(f"job {job_id} step {step}: {count} effects for one stable key")
        else:
            report.unkeyed_duplicates += extra
            if extra and not allow_unkeyed_duplicates:
                report.violate(f"job {job_id} step {step}: {count} effects (unkeyed duplicate)")
    for job_id in ids:
        row = rows.get(job_id)
        if row is None or row.status != "completed":
            continue
        wrote = {w.step for w in ledger.writes if w.job_id == job_id}
        for step in wrote:
            if per_step[(job_id, step)] == 0:
                report.violate(f"completed job {job_id} step {step} has no effect row")
