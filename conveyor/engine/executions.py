"""Executions: runs of workflows, advanced in the transactions that change their steps.

A step is a job with ``execution_id`` and ``step_id``. Starting an execution inserts one
job per step (``pending`` with a count of unfinished dependencies); when a step
completes, the same transaction decrements its dependents' counts and queues those that
reached zero (respecting the execution's parallelism), applies the failure policy, and
recomputes the execution's status. There is no scheduler process and no polling loop.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update

from conveyor.domain.events import EventType
from conveyor.domain.graph import (
    Graph,
    Step,
    WorkflowSpec,
    build_graph,
    check_failure_policy,
    check_parallelism,
)
from conveyor.domain.ids import new_id
from conveyor.domain.priority import Priority
from conveyor.domain.states import ExecutionStatus, JobStatus
from conveyor.engine.jobs import CANCEL_CHANNEL, JOBS_CHANNEL, Limits, check_id, seal_secrets
from conveyor.engine.models import (
    Execution,
    ExecutionProgress,
    ExecutionSpec,
    StepChange,
    TaskCatalog,
    TaskDefaults,
)
from conveyor.engine.paging import check_limit, decode_cursor, encode_cursor
from conveyor.engine.sealing import Sealer
from conveyor.engine.usage import costs_of
from conveyor.errors import (
    ConflictError,
    DependenciesNotMetError,
    IdempotencyMismatchError,
    InvalidInputError,
    NotFoundError,
    UnknownTaskError,
    WorkflowDefinitionError,
)
from conveyor.store.database import Tx
from conveyor.store.schema import clarifications, executions, jobs
from conveyor.store.sql import db_now, dialect_insert
from conveyor.store.types import dumps

_J = JobStatus
_E = ExecutionStatus
MODES = ("auto", "manual")
_SCOPE_MAX = {"scope_type": 100, "scope_id": 200}


# -- preparing a start ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreparedExecution:
    row: dict[str, Any]
    graph: Graph
    step_defaults: dict[str, TaskDefaults]


def prepare_execution(
    spec: ExecutionSpec,
    *,
    owner: str,
    catalog: TaskCatalog | None,
    limits: Limits,
    max_steps: int,
    sealer: Sealer | None = None,
) -> PreparedExecution:
    """Validate a start request against the registered workflows and tasks (no I/O)."""
    if (spec.workflow is None) == (spec.steps is None):
        raise InvalidInputError("give either a workflow name or a list of steps")
    workflow: WorkflowSpec | None = None
    if spec.workflow is not None:
        workflow = catalog.workflow_spec(spec.workflow) if catalog is not None else None
        if workflow is None:
            raise NotFoundError(f"workflow {spec.workflow!r} not found")
        graph = workflow.graph
    else:
        steps = [s if isinstance(s, Step) else Step.from_json(s) for s in spec.steps or []]
        try:
            graph = build_graph(steps, max_steps=max_steps)
        except WorkflowDefinitionError as exc:
            raise InvalidInputError(exc.message) from None
    defaults: dict[str, TaskDefaults] = {}
    for step in graph.steps:
        found = catalog.task_defaults(step.task) if catalog is not None else TaskDefaults()
        if found is None:
            raise UnknownTaskError(f"step {step.id!r} uses unknown task {step.task!r}")
        defaults[step.id] = found
    data = spec.input if spec.input is not None else {}
    if not isinstance(data, dict):
        raise InvalidInputError("input must be a JSON object")
    if len(dumps(data).encode()) > limits.max_payload_bytes:
        raise InvalidInputError(f"input is larger than {limits.max_payload_bytes} bytes")
    if spec.mode not in MODES:
        raise InvalidInputError("mode must be auto or manual")
    try:
        policy = check_failure_policy(
            spec.failure_policy or (workflow.failure_policy if workflow else "fail_fast")
        )
        parallelism = (
            spec.parallelism
            if spec.parallelism is not None
            else (workflow.parallelism if workflow else None)
        )
        check_parallelism(parallelism)
    except WorkflowDefinitionError as exc:
        raise InvalidInputError(exc.message) from None
    for field_name, longest in _SCOPE_MAX.items():
        value = getattr(spec, field_name)
        if value is not None and not 1 <= len(value) <= longest:
            raise InvalidInputError(f"{field_name} must be 1-{longest} characters")
    from conveyor.engine.jobs import _KEY_RE, _json_size

    if spec.idempotency_key is not None and not _KEY_RE.match(spec.idempotency_key):
        raise InvalidInputError(
            "idempotency key must be 8-200 characters of letters, digits, _ . : -"
        )
    if spec.metadata is not None and _json_size(spec.metadata) > limits.max_metadata_bytes:
        raise InvalidInputError(f"metadata is larger than {limits.max_metadata_bytes} bytes")
    if catalog is not None:
        if spec.mode == "auto":
            # refuse now what would only fail later in a step; a manual run gives each
            # step its input when it is run
            for step in graph.steps:
                step_input = {**data, **dict(step.input or {})}
                try:
                    catalog.validate_step_input(step.task, step_input, step.depends_on)
                except InvalidInputError as exc:
                    raise InvalidInputError(
                        f"invalid input for step {step.id!r}: {exc.message}", details=exc.details
                    ) from None
        secret = {f for step in graph.steps for f in catalog.secret_fields(step.task)}
        data = seal_secrets(data, secret, sealer)
        if spec.steps is not None:
            graph = _seal_step_inputs(graph, catalog, sealer, max_steps)
    priority = Priority.parse(spec.priority)
    if spec.budget_usd is not None and not 0 < spec.budget_usd <= 1_000_000:
        raise InvalidInputError("budget_usd must be > 0 and <= 1000000")
    row = {
        "id": new_id(),
        "workflow": workflow.name if workflow else None,
        "workflow_version": workflow.version if workflow else None,
        "status": _E.QUEUED.value,
        "mode": spec.mode,
        "failure_policy": policy,
        "parallelism": parallelism,
        "priority": int(priority),
        "steps": graph.to_json(),
        "input": data,
        "scope_type": spec.scope_type,
        "scope_id": spec.scope_id,
        "owner": owner,
        "idempotency_key": spec.idempotency_key,
        "request_hash": _request_hash(spec) if spec.idempotency_key else None,
        "metadata": spec.metadata,
        "budget_usd": spec.budget_usd,
    }
    return PreparedExecution(row, graph, defaults)


def _seal_step_inputs(
    graph: Graph, catalog: TaskCatalog, sealer: Sealer | None, max_steps: int
) -> Graph:
    """An ad-hoc DAG's per-step inputs are client data like the execution's input: their
    secret fields are sealed before the graph is stored."""
    sealed = [
        Step(
            step.id,
            step.task,
            step.depends_on,
            seal_secrets(dict(step.input), catalog.secret_fields(step.task), sealer),
        )
        if step.input
        else step
        for step in graph.steps
    ]
    return build_graph(sealed, max_steps=max_steps)


def _request_hash(spec: ExecutionSpec) -> str:
    body = {
        "workflow": spec.workflow,
        "steps": [s.to_json() if isinstance(s, Step) else s for s in spec.steps or []],
        "input": spec.input,
        "scope": [spec.scope_type, spec.scope_id],
        "priority": spec.priority,
        "parallelism": spec.parallelism,
        "mode": spec.mode,
        "failure_policy": spec.failure_policy,
        "metadata": spec.metadata,
        "budget_usd": spec.budget_usd,
    }
    raw = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


# -- the graph of a running execution ---------------------------------------------------------

_GRAPHS: OrderedDict[str, Graph] = OrderedDict()
_GRAPH_CACHE_SIZE = 512


def graph_of(conn: Connection, execution_id: str) -> Graph:
    """The execution's graph (read and parsed once per process: executions never change
    theirs, and its JSON is the largest part of the row)."""
    graph = _GRAPHS.get(execution_id)
    if graph is None:
        steps_json = conn.execute(
            select(executions.c.steps).where(executions.c.id == execution_id)
        ).scalar_one()
        graph = build_graph([Step.from_json(s) for s in steps_json], max_steps=1_000_000)
        _GRAPHS[execution_id] = graph
        if len(_GRAPHS) > _GRAPH_CACHE_SIZE:
            _GRAPHS.popitem(last=False)
    else:
        _GRAPHS.move_to_end(execution_id)
    return graph


#: executions known to have left ``queued`` (they never return to it): no UPDATE needed
_STARTED: OrderedDict[str, None] = OrderedDict()


# -- start -------------------------------------------------------------------------------------


def start_tx(tx: Tx, prepared: PreparedExecution) -> tuple[str, bool]:
    """Insert the execution and one job per step; queue the roots (auto mode)."""
    row = prepared.row
    if row["idempotency_key"] is not None:
        existing = tx.conn.execute(
            select(executions.c.id, executions.c.request_hash).where(
                executions.c.owner == row["owner"],
                executions.c.idempotency_key == row["idempotency_key"],
            )
        ).first()
        if existing is not None:
            if existing.request_hash != row["request_hash"]:
                raise IdempotencyMismatchError(
                    "this idempotency key was already used for a different request"
                )
            return existing.id, False
    stmt = dialect_insert(tx.dialect, executions).values(**row, created_at=db_now())
    if row["idempotency_key"] is not None:
        stmt = stmt.on_conflict_do_nothing(
            index_elements=["owner", "idempotency_key"],
            index_where=executions.c.idempotency_key.isnot(None),
        )
    inserted = tx.conn.execute(stmt.returning(executions.c.id)).first()
    if inserted is None:  # a concurrent twin committed first
        twin = tx.conn.execute(
            select(executions.c.id).where(
                executions.c.owner == row["owner"],
                executions.c.idempotency_key == row["idempotency_key"],
            )
        ).scalar_one()
        return str(twin), False

    execution_id = row["id"]
    step_rows = []
    for step in prepared.graph.steps:
        d = prepared.step_defaults[step.id]
        step_rows.append(
            {
                "id": new_id(),
                "task": step.task,
                "queue": d.queue,
                "status": _J.PENDING.value,
                "priority": row["priority"],
                "max_attempts": d.max_attempts,
                "backoff": d.backoff.to_json(),
                "timeout_s": d.timeout_s,
                "input": {**row["input"], **dict(step.input or {})},
                "owner": row["owner"],
                "execution_id": execution_id,
                "step_id": step.id,
                "depends_on": list(step.depends_on) or None,
                "deps_pending": len(step.depends_on),
            }
        )
    tx.conn.execute(
        insert(jobs).values(run_at=db_now(), created_at=db_now()),
        step_rows,
    )
    tx.emit(
        "execution.queued",
        owner=row["owner"],
        execution_id=execution_id,
        data={"workflow": row["workflow"], "steps": len(step_rows), "mode": row["mode"]},
    )
    if row["mode"] == "auto":
        ex = _lock(tx, execution_id)
        promote_ready_tx(tx, ex)
    return execution_id, True


# -- advancing ---------------------------------------------------------------------------------


# what advancing needs of an execution (not its input, output or step definitions)
_STATE = (
    executions.c.id,
    executions.c.status,
    executions.c.mode,
    executions.c.failure_policy,
    executions.c.parallelism,
    executions.c.owner,
)


def _lock(tx: Tx, execution_id: str) -> Any:
    return tx.conn.execute(
        select(*_STATE).where(executions.c.id == execution_id).with_for_update()
    ).first()


_decrement = (
    update(jobs)
    .where(
        jobs.c.execution_id == bindparam("b_execution"),
        jobs.c.step_id == bindparam("b_step"),
        jobs.c.status == _J.PENDING.value,
    )
    .values(deps_pending=jobs.c.deps_pending - bindparam("b_count"))
)


def advance_tx(tx: Tx, changes: list[StepChange]) -> None:
    """The step hook: run after step jobs changed state, inside the same transaction."""
    grouped: dict[str, list[StepChange]] = {}
    for change in changes:
        grouped.setdefault(change.execution_id, []).append(change)
    for execution_id in sorted(grouped):  # one lock order everywhere: no deadlocks
        ex = _lock(tx, execution_id)
        if ex is None:
            continue
        graph = graph_of(tx.conn, ex.id)
        group = grouped[execution_id]
        done = Counter(
            dependent
            for c in group
            if c.status == _J.COMPLETED
            for dependent in graph.dependents.get(c.step_id, ())
        )
        if done:
            tx.conn.execute(
                _decrement,
                [
                    {"b_execution": ex.id, "b_step": step_id, "b_count": count}
                    for step_id, count in sorted(done.items())
                ],
            )
        status = _E(ex.status)
        if not status.is_terminal and ex.mode == "auto":
            failed = [c.step_id for c in group if c.status == _J.FAILED]
            stopped = [c.step_id for c in group if c.status == _J.CANCELLED]
            if failed and ex.failure_policy == "fail_fast":
                _fail_fast_tx(tx, ex, failed)
            elif failed or stopped:
                _cancel_downstream_tx(tx, ex, graph, failed + stopped)
            promote_ready_tx(tx, ex)
        sinks = set(graph.sinks)
        routine = status == _E.RUNNING and all(
            c.status == _J.COMPLETED and c.step_id not in sinks for c in group
        )
        # a running execution whose non-final steps complete stays running: nothing to derive
        if not routine:
            refresh_status_tx(tx, ex.id)


def promote_ready_tx(tx: Tx, ex: Any) -> list[str]:
    """Queue pending steps whose dependencies completed, within the parallelism limit."""
    limit: int | None = None
    if ex.parallelism:
        in_flight = tx.conn.execute(
            select(func.count()).where(
                jobs.c.execution_id == ex.id,
                jobs.c.status.in_([_J.QUEUED.value, _J.ACTIVE.value]),
            )
        ).scalar_one()
        limit = ex.parallelism - in_flight
        if limit <= 0:
            return []
    ready_stmt = (
        select(jobs.c.id, jobs.c.step_id, jobs.c.queue)
        .where(
            jobs.c.execution_id == ex.id,
            jobs.c.status == _J.PENDING.value,
            jobs.c.deps_pending <= 0,
        )
        .order_by(jobs.c.id)
    )
    if limit is not None:
        ready_stmt = ready_stmt.limit(limit)
    ready = tx.conn.execute(ready_stmt).all()
    if not ready:
        return []
    tx.conn.execute(
        update(jobs)
        .where(jobs.c.id.in_([r.id for r in ready]), jobs.c.status == _J.PENDING.value)
        .values(status=_J.QUEUED.value, run_at=db_now())
    )
    for r in ready:
        tx.emit(
            EventType.JOB_QUEUED,
            owner=ex.owner,
            job_id=r.id,
            execution_id=ex.id,
            step_id=r.step_id,
            queue=r.queue,
            data={"attempt": 1},
        )
    for queue in {r.queue for r in ready}:
        tx.notify(JOBS_CHANNEL, queue)
    return [r.step_id for r in ready]


def _stop_steps_tx(tx: Tx, ex: Any, step_ids: Sequence[str] | None, reason: str) -> None:
    """Cancel not-yet-finished steps: waiting ones at once, active ones cooperatively."""
    stmt = select(jobs.c.id, jobs.c.step_id, jobs.c.status, jobs.c.queue).where(
        jobs.c.execution_id == ex.id,
        jobs.c.status.in_(
            [_J.PENDING.value, _J.QUEUED.value, _J.ACTIVE.value, _J.AWAITING_INPUT.value]
        ),
    )
    if step_ids is not None:
        stmt = stmt.where(jobs.c.step_id.in_(list(step_ids)))
    rows = tx.conn.execute(stmt.order_by(jobs.c.id)).all()
    waiting = [r for r in rows if r.status != _J.ACTIVE]
    active = [r for r in rows if r.status == _J.ACTIVE]
    if waiting:
        tx.conn.execute(
            update(jobs)
            .where(
                jobs.c.id.in_([r.id for r in waiting]),
                jobs.c.status.in_([_J.PENDING.value, _J.QUEUED.value, _J.AWAITING_INPUT.value]),
            )
            .values(
                status=_J.CANCELLED.value,
                finished_at=db_now(),
                error={"type": "Cancelled", "message": reason, "reason": reason},
            )
        )
        tx.conn.execute(
            update(clarifications)
            .where(
                clarifications.c.job_id.in_([r.id for r in waiting]),
                clarifications.c.status == "pending",
            )
            .values(status="cancelled")
        )
    for r in waiting:
        tx.emit(
            EventType.JOB_CANCELLED,
            owner=ex.owner,
            job_id=r.id,
            execution_id=ex.id,
            step_id=r.step_id,
            queue=r.queue,
            data={"reason": reason},
        )
    if active:
        tx.conn.execute(
            update(jobs)
            .where(jobs.c.id.in_([r.id for r in active]), jobs.c.status == _J.ACTIVE.value)
            .values(cancel_requested=True)
        )
    for r in active:
        tx.emit(
            EventType.JOB_CANCEL_REQUESTED,
            owner=ex.owner,
            job_id=r.id,
            execution_id=ex.id,
            step_id=r.step_id,
            queue=r.queue,
            data={"reason": reason},
        )
        tx.notify(CANCEL_CHANNEL, r.id)


def _fail_fast_tx(tx: Tx, ex: Any, failed: list[str]) -> None:
    reason = f"step {failed[0]!r} failed (fail-fast)"
    _stop_steps_tx(tx, ex, None, reason)
    error = {"type": "StepFailed", "message": reason, "failed_steps": failed}
    error["reason"] = _failure_reason(tx, ex.id)
    _set_status_tx(tx, ex, _E.FAILED, error=error)


def _failure_reason(tx: Tx, execution_id: str) -> str:
    """``budget_exceeded`` when a step failed on the budget, else ``step_failed``."""
    errors = tx.conn.execute(
        select(jobs.c.error).where(
            jobs.c.execution_id == execution_id, jobs.c.status == _J.FAILED.value
        )
    ).scalars()
    for error in errors:
        if isinstance(error, dict) and error.get("type") == "BudgetExceededError":
            return "budget_exceeded"
    return "step_failed"


def _cancel_downstream_tx(tx: Tx, ex: Any, graph: Graph, stopped: list[str]) -> None:
    downstream = graph.downstream(stopped)
    if downstream:
        reason = f"upstream step {stopped[0]!r} did not complete"
        _stop_steps_tx(tx, ex, sorted(downstream), reason)


def step_counts(conn: Connection, execution_id: str) -> dict[str, int]:
    rows = conn.execute(
        select(jobs.c.status, func.count())
        .where(jobs.c.execution_id == execution_id)
        .group_by(jobs.c.status)
    ).all()
    return {status: int(count) for status, count in rows}


def refresh_status_tx(tx: Tx, execution_id: str) -> None:
    """Derive the execution's status from its steps; write it (and an event) if it moved."""
    ex = tx.conn.execute(select(*_STATE).where(executions.c.id == execution_id)).one()
    current = _E(ex.status)
    if current.is_terminal:
        return
    counts = step_counts(tx.conn, ex.id)
    total = sum(counts.values())
    unfinished = sum(
        counts.get(s.value, 0) for s in (_J.PENDING, _J.QUEUED, _J.ACTIVE, _J.AWAITING_INPUT)
    )
    if counts.get(_J.COMPLETED.value, 0) == total:
        graph = graph_of(tx.conn, ex.id)
        results = tx.conn.execute(
            select(jobs.c.step_id, jobs.c.result).where(
                jobs.c.execution_id == ex.id, jobs.c.step_id.in_(list(graph.sinks))
            )
        ).all()
        _set_status_tx(tx, ex, _E.COMPLETED, output={s: r for s, r in results})
    elif unfinished == 0:
        failed = counts.get(_J.FAILED.value, 0)
        target = _E.FAILED if failed else _E.CANCELLED
        error = {
            "type": "StepFailed" if failed else "StepCancelled",
            "message": f"{failed} step(s) failed" if failed else "steps were cancelled",
            "reason": _failure_reason(tx, ex.id) if failed else "cancelled",
        }
        _set_status_tx(tx, ex, target, error=error)
    elif counts.get(_J.AWAITING_INPUT.value, 0):
        _set_status_tx(tx, ex, _E.AWAITING_INPUT)
    elif current == _E.AWAITING_INPUT:
        _set_status_tx(tx, ex, _E.RUNNING)


_STATUS_EVENTS = {
    _E.RUNNING: EventType.EXECUTION_RUNNING,
    _E.AWAITING_INPUT: EventType.EXECUTION_AWAITING_INPUT,
    _E.COMPLETED: EventType.EXECUTION_COMPLETED,
    _E.FAILED: EventType.EXECUTION_FAILED,
    _E.CANCELLED: EventType.EXECUTION_CANCELLED,
}


def _set_status_tx(
    tx: Tx,
    ex: Any,
    target: ExecutionStatus,
    *,
    output: Any = None,
    error: dict[str, Any] | None = None,
) -> None:
    values: dict[str, Any] = {"status": target.value}
    if target.is_terminal:
        values["finished_at"] = db_now()
    if target == _E.COMPLETED:
        values["output"] = output
    if error is not None:
        values["error"] = error
    tx.conn.execute(update(executions).where(executions.c.id == ex.id).values(values))
    data: dict[str, Any] = {"status": target.value}
    if error is not None:
        data["error"] = {k: v for k, v in error.items() if k in ("type", "message")}
    tx.emit(_STATUS_EVENTS[target], owner=ex.owner, execution_id=ex.id, data=data)


def mark_started_tx(tx: Tx, execution_ids: set[str]) -> None:
    """A step of these executions was claimed: queued executions are now running."""
    unknown = sorted(i for i in execution_ids if i not in _STARTED)
    if not unknown:
        return
    rows = tx.conn.execute(
        update(executions)
        .where(executions.c.id.in_(unknown), executions.c.status == _E.QUEUED.value)
        .values(status=_E.RUNNING.value, started_at=db_now())
        .returning(executions.c.id, executions.c.owner)
    ).all()
    for execution_id, owner in rows:
        tx.emit(EventType.EXECUTION_STARTED, owner=owner, execution_id=execution_id)
    # remembered only after this transaction commits (a rollback must not leave a trace)
    tx.after_commit(lambda: _remember_started(unknown))


def _remember_started(execution_ids: list[str]) -> None:
    for execution_id in execution_ids:
        _STARTED[execution_id] = None
    while len(_STARTED) > 10_000:
        _STARTED.popitem(last=False)


# -- requests from clients ------------------------------------------------------------------


def locked_execution(tx: Tx, execution_id: str, owner: str | None) -> Any:
    stmt = select(executions).where(executions.c.id == check_id(execution_id, "execution"))
    if owner is not None:
        stmt = stmt.where(executions.c.owner == owner)
    row = tx.conn.execute(stmt.with_for_update()).first()
    if row is None:
        raise NotFoundError(f"execution {execution_id!r} not found")
    return row


def cancel_tx(tx: Tx, execution_id: str, owner: str | None) -> None:
    ex = locked_execution(tx, execution_id, owner)
    status = _E(ex.status)
    if status == _E.CANCELLED:
        return
    if status in (_E.COMPLETED, _E.FAILED):
        raise ConflictError(f"execution {execution_id} is already {status.value}")
    _stop_steps_tx(tx, ex, None, "execution cancelled")
    _set_status_tx(
        tx, ex, _E.CANCELLED, error={"type": "Cancelled", "message": "cancelled by request"}
    )


def retry_tx(tx: Tx, execution_id: str, owner: str | None) -> None:
    """Re-run the steps of a failed or cancelled execution that did not complete."""
    ex = locked_execution(tx, execution_id, owner)
    status = _E(ex.status)
    if status not in (_E.FAILED, _E.CANCELLED):
        raise ConflictError(
            f"only failed or cancelled executions can be retried; this one is {status.value}"
        )
    still_active = tx.conn.execute(
        select(func.count()).where(jobs.c.execution_id == ex.id, jobs.c.status == _J.ACTIVE.value)
    ).scalar_one()
    if still_active:
        raise ConflictError(
            f"{still_active} step(s) of this execution are still stopping; retry when they stopped"
        )
    rows = tx.conn.execute(
        select(jobs.c.id, jobs.c.step_id, jobs.c.status).where(jobs.c.execution_id == ex.id)
    ).all()
    completed = {r.step_id for r in rows if r.status == _J.COMPLETED}
    graph = graph_of(tx.conn, ex.id)
    rerun = [r for r in rows if r.status in (_J.FAILED, _J.CANCELLED)]
    for r in rerun:
        pending_deps = sum(1 for dep in graph.by_id[r.step_id].depends_on if dep not in completed)
        tx.conn.execute(
            update(jobs)
            .where(jobs.c.id == r.id, jobs.c.status.in_([_J.FAILED.value, _J.CANCELLED.value]))
            .values(
                status=_J.PENDING.value,
                deps_pending=pending_deps,
                attempts=0,
                result=None,
                error=None,
                progress=0,
                progress_message=None,
                cancel_requested=False,
                worker_id=None,
                started_at=None,
                finished_at=None,
            )
        )
    tx.conn.execute(
        update(executions)
        .where(executions.c.id == ex.id)
        .values(status=_E.RUNNING.value, error=None, output=None, finished_at=None)
    )
    tx.emit(
        EventType.EXECUTION_RETRYING,
        owner=ex.owner,
        execution_id=ex.id,
        data={"steps": sorted(r.step_id for r in rerun)},
    )
    fresh = _lock(tx, ex.id)
    if fresh.mode == "auto":
        promote_ready_tx(tx, fresh)
    refresh_status_tx(tx, ex.id)


def run_step_tx(
    tx: Tx, execution_id: str, step_id: str, extra_input: dict[str, Any] | None, owner: str | None
) -> str:
    """Manual mode: queue one step now. Returns its job id."""
    ex = locked_execution(tx, execution_id, owner)
    status = _E(ex.status)
    if ex.mode != "manual":
        raise ConflictError("this execution runs its steps automatically (mode auto)")
    if status in (_E.COMPLETED, _E.CANCELLED):
        raise ConflictError(f"execution {execution_id} is {status.value}")
    step = tx.conn.execute(
        select(jobs)
        .where(jobs.c.execution_id == ex.id, jobs.c.step_id == step_id)
        .with_for_update()
    ).first()
    if step is None:
        raise NotFoundError(f"execution {execution_id} has no step {step_id!r}")
    if step.status in (_J.QUEUED, _J.ACTIVE, _J.AWAITING_INPUT):
        raise ConflictError(f"step {step_id!r} is already {step.status}")
    if step.status == _J.COMPLETED:
        raise ConflictError(f"step {step_id!r} already completed; it never runs twice")
    deps = list(step.depends_on or [])
    if deps:
        done = set(
            tx.conn.execute(
                select(jobs.c.step_id).where(
                    jobs.c.execution_id == ex.id,
                    jobs.c.step_id.in_(deps),
                    jobs.c.status == _J.COMPLETED.value,
                )
            ).scalars()
        )
        missing = [d for d in deps if d not in done]
        if missing:
            raise DependenciesNotMetError(
                f"step {step_id!r} depends on steps that have not completed: {', '.join(missing)}"
            )
    if extra_input is not None and not isinstance(extra_input, dict):
        raise InvalidInputError("input must be a JSON object")
    merged = {**(step.input or {}), **(extra_input or {})}
    tx.conn.execute(
        update(jobs)
        .where(jobs.c.id == step.id)
        .values(
            status=_J.QUEUED.value,
            input=merged,
            run_at=db_now(),
            attempts=0,
            error=None,
            progress=0,
            progress_message=None,
            cancel_requested=False,
            finished_at=None,
        )
    )
    tx.emit(
        EventType.JOB_QUEUED,
        owner=ex.owner,
        job_id=step.id,
        execution_id=ex.id,
        step_id=step_id,
        queue=step.queue,
        data={"attempt": 1, "manual": True},
    )
    tx.notify(JOBS_CHANNEL, step.queue)
    if status == _E.FAILED:
        tx.conn.execute(
            update(executions)
            .where(executions.c.id == ex.id)
            .values(status=_E.RUNNING.value, finished_at=None, error=None)
        )
    return str(step.id)


# -- reading -----------------------------------------------------------------------------------


def _progress(counts: dict[str, int], active_progress: int) -> ExecutionProgress:
    total = sum(counts.values())
    completed = counts.get(_J.COMPLETED.value, 0)
    percent = 0.0 if total == 0 else (completed * 100 + active_progress) / total
    return ExecutionProgress(
        total=total,
        completed=completed,
        failed=counts.get(_J.FAILED.value, 0),
        running=counts.get(_J.ACTIVE.value, 0),
        awaiting_input=counts.get(_J.AWAITING_INPUT.value, 0),
        cancelled=counts.get(_J.CANCELLED.value, 0),
        percent=round(min(percent, 100.0), 1),
    )


def _progress_of(conn: Connection, ids: list[str]) -> dict[str, ExecutionProgress]:
    if not ids:
        return {}
    rows = conn.execute(
        select(jobs.c.execution_id, jobs.c.status, func.count(), func.sum(jobs.c.progress))
        .where(jobs.c.execution_id.in_(ids))
        .group_by(jobs.c.execution_id, jobs.c.status)
    ).all()
    counts: dict[str, dict[str, int]] = {i: {} for i in ids}
    moving: dict[str, int] = dict.fromkeys(ids, 0)
    for execution_id, status, count, progress_sum in rows:
        counts[execution_id][status] = int(count)
        if status in (_J.ACTIVE, _J.AWAITING_INPUT):
            moving[execution_id] += int(progress_sum or 0)
    return {i: _progress(counts[i], moving[i]) for i in ids}


def _execution(row: Any, progress: ExecutionProgress, cost: float | None) -> Execution:
    return Execution(
        id=row.id,
        workflow=row.workflow,
        workflow_version=row.workflow_version,
        status=row.status,
        mode=row.mode,
        failure_policy=row.failure_policy,
        parallelism=row.parallelism,
        priority=Priority(row.priority),
        input=row.input,
        output=row.output,
        error=row.error,
        scope_type=row.scope_type,
        scope_id=row.scope_id,
        owner=row.owner,
        idempotency_key=row.idempotency_key,
        metadata=row.metadata,
        steps=row.steps,
        progress=progress,
        budget_usd=row.budget_usd,
        cost_usd=cost,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def get_execution(conn: Connection, execution_id: str, owner: str | None) -> Execution:
    stmt = select(executions).where(executions.c.id == check_id(execution_id, "execution"))
    if owner is not None:
        stmt = stmt.where(executions.c.owner == owner)
    row = conn.execute(stmt).first()
    if row is None:
        raise NotFoundError(f"execution {execution_id!r} not found")
    return _execution(row, _progress_of(conn, [row.id])[row.id], costs_of(conn, [row.id])[row.id])


@dataclass(frozen=True, slots=True)
class ExecutionFilters:
    status: str | None = None
    workflow: str | None = None
    scope_type: str | None = None
    scope_id: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


def list_executions(
    conn: Connection,
    filters: ExecutionFilters,
    owner: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Execution], str | None]:
    check_limit(limit)
    stmt = select(executions)
    if owner is not None:
        stmt = stmt.where(executions.c.owner == owner)
    if filters.status is not None:
        if filters.status not in {s.value for s in ExecutionStatus}:
            raise InvalidInputError(
                f"unknown status {filters.status!r}; use one of "
                f"{', '.join(s.value for s in ExecutionStatus)}"
            )
        stmt = stmt.where(executions.c.status == filters.status)
    for column in ("workflow", "scope_type", "scope_id"):
        value = getattr(filters, column)
        if value is not None:
            stmt = stmt.where(executions.c[column] == value)
    for bound in (filters.created_after, filters.created_before):
        if bound is not None and bound.tzinfo is None:
            raise InvalidInputError("timestamps need a time zone (ISO 8601 with offset or Z)")
    if filters.created_after is not None:
        stmt = stmt.where(executions.c.created_at >= filters.created_after)
    if filters.created_before is not None:
        stmt = stmt.where(executions.c.created_at < filters.created_before)
    if cursor is not None:
        stmt = stmt.where(executions.c.id < decode_cursor(cursor))
    rows = conn.execute(stmt.order_by(executions.c.id.desc()).limit(limit + 1)).all()
    page = rows[:limit]
    ids = [r.id for r in page]
    progress = _progress_of(conn, ids)
    costs = costs_of(conn, ids)
    items = [_execution(r, progress[r.id], costs[r.id]) for r in page]
    return items, encode_cursor(items[-1].id) if len(rows) > limit else None


class ExecutionCoordinator:
    """The engine's :class:`StepCoordinator`: executions advance with their steps."""

    def advance(self, tx: Tx, changes: list[StepChange]) -> None:
        advance_tx(tx, changes)

    def started(self, tx: Tx, execution_ids: set[str]) -> None:
        mark_started_tx(tx, execution_ids)
