"""LLM usage rows and the telemetry computed from them.

Each model call records provider, model, raw token counts (so costs can be recomputed
when prices change), its cost when the price is known, latency, and where it happened
(owner, execution, step). Reports are plain aggregates over these rows.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, func, select

from conveyor.domain.events import EventType
from conveyor.domain.ids import new_id
from conveyor.engine.jobs import check_id
from conveyor.errors import InvalidInputError, NotFoundError
from conveyor.store.database import Tx
from conveyor.store.schema import executions, usage
from conveyor.store.sql import db_now, seconds_between

MAX_DURATIONS = 10_000  # executions sampled for duration percentiles


@dataclass(frozen=True, slots=True)
class UsageRecord:
    owner: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: float | None
    price_source: str | None
    latency_ms: float
    job_id: str | None = None
    execution_id: str | None = None
    step_id: str | None = None
    workflow: str | None = None
    attempt: int | None = None


def record_tx(tx: Tx, record: UsageRecord) -> str:
    usage_id = new_id()
    workflow = record.workflow
    if workflow is None and record.execution_id is not None:
        workflow = tx.conn.execute(
            select(executions.c.workflow).where(executions.c.id == record.execution_id)
        ).scalar()
    tx.conn.execute(
        usage.insert().values(
            id=usage_id,
            owner=record.owner,
            provider=record.provider,
            model=record.model,
            input_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
            cached_tokens=record.cached_tokens,
            cost_usd=record.cost_usd,
            price_source=record.price_source,
            latency_ms=record.latency_ms,
            job_id=record.job_id,
            execution_id=record.execution_id,
            step_id=record.step_id,
            workflow=workflow,
            attempt=record.attempt,
            created_at=db_now(),
        )
    )
    tx.emit(
        EventType.USAGE_RECORDED,
        owner=record.owner,
        job_id=record.job_id,
        execution_id=record.execution_id,
        step_id=record.step_id,
        data={
            "provider": record.provider,
            "model": record.model,
            "input_tokens": record.input_tokens,
            "output_tokens": record.output_tokens,
            "cached_tokens": record.cached_tokens,
            "cost_usd": record.cost_usd,
        },
    )
    return usage_id


def spend(conn: Connection, execution_id: str) -> float:
    total = conn.execute(
        select(func.coalesce(func.sum(usage.c.cost_usd), 0.0)).where(
            usage.c.execution_id == execution_id
        )
    ).scalar_one()
    return float(total)


def costs_of(conn: Connection, execution_ids: list[str]) -> dict[str, float | None]:
    """Total cost per execution (``None`` where nothing was recorded)."""
    if not execution_ids:
        return {}
    rows = conn.execute(
        select(usage.c.execution_id, func.sum(usage.c.cost_usd))
        .where(usage.c.execution_id.in_(execution_ids))
        .group_by(usage.c.execution_id)
    ).all()
    found = {execution_id: total for execution_id, total in rows}
    return {i: (None if found.get(i) is None else round(float(found[i]), 8)) for i in execution_ids}


# -- reports -----------------------------------------------------------------------------------


def _window(owner: str | None, start: datetime | None, end: datetime | None) -> Any:
    for bound in (start, end):
        if bound is not None and bound.tzinfo is None:
            raise InvalidInputError("from and to need a time zone (ISO 8601 with offset or Z)")
    if start is not None and end is not None and start > end:
        raise InvalidInputError("from must not be after to")
    conditions = []
    if owner is not None:
        conditions.append(usage.c.owner == owner)
    if start is not None:
        conditions.append(usage.c.created_at >= start)
    if end is not None:
        conditions.append(usage.c.created_at < end)
    return and_(*conditions) if conditions else None


def _totals(conn: Connection, where: Any, group: list[Any]) -> list[dict[str, Any]]:
    columns = [
        *group,
        func.count().label("calls"),
        func.coalesce(func.sum(usage.c.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(usage.c.output_tokens), 0).label("output_tokens"),
        func.coalesce(func.sum(usage.c.cached_tokens), 0).label("cached_tokens"),
        func.sum(usage.c.cost_usd).label("cost_usd"),
        func.avg(usage.c.latency_ms).label("avg_latency_ms"),
        func.count(func.distinct(usage.c.execution_id)).label("executions"),
    ]
    stmt = select(*columns)
    if where is not None:
        stmt = stmt.where(where)
    if group:
        # NULLs first on both backends (PostgreSQL would sort them last)
        stmt = stmt.group_by(*group).order_by(*(g.is_not(None) for g in group), *group)
    result = []
    for row in conn.execute(stmt).all():
        data = dict(row._mapping)
        for key in ("calls", "input_tokens", "output_tokens", "cached_tokens", "executions"):
            data[key] = int(data[key] or 0)
        data["cost_usd"] = None if data["cost_usd"] is None else round(float(data["cost_usd"]), 8)
        latency = data["avg_latency_ms"]
        data["avg_latency_ms"] = None if latency is None else round(float(latency), 3)
        result.append(data)
    return result


def summary(
    conn: Connection, owner: str | None, start: datetime | None, end: datetime | None
) -> dict[str, Any]:
    """Totals, averages, and breakdowns by workflow and by model, over a time window."""
    where = _window(owner, start, end)
    (totals,) = _totals(conn, where, [])
    cost = totals["cost_usd"]
    calls = totals["calls"]
    runs = totals["executions"]
    return {
        "from": None if start is None else start.isoformat(),
        "to": None if end is None else end.isoformat(),
        **totals,
        "avg_cost_per_call_usd": None if cost is None or not calls else round(cost / calls, 8),
        "avg_cost_per_execution_usd": None if cost is None or not runs else round(cost / runs, 8),
        "by_workflow": _totals(conn, where, [usage.c.workflow]),
        "by_model": _totals(conn, where, [usage.c.provider, usage.c.model]),
        "by_day": _by_day(conn, where),
    }


def _by_day(conn: Connection, where: Any) -> list[dict[str, Any]]:
    """Per-day totals (UTC days; grouped in Python so both backends agree)."""
    stmt = select(usage.c.created_at, usage.c.cost_usd, usage.c.input_tokens, usage.c.output_tokens)
    if where is not None:
        stmt = stmt.where(where)
    days: dict[str, dict[str, Any]] = {}
    for created_at, cost, input_tokens, output_tokens in conn.execute(stmt):
        day = days.setdefault(
            created_at.date().isoformat(),
            {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": None},
        )
        day["calls"] += 1
        day["input_tokens"] += input_tokens
        day["output_tokens"] += output_tokens
        if cost is not None:
            day["cost_usd"] = round((day["cost_usd"] or 0.0) + float(cost), 8)
    return [{"day": d, **v} for d, v in sorted(days.items())]


def execution_costs(conn: Connection, execution_id: str, owner: str | None) -> dict[str, Any]:
    stmt = select(executions.c.id).where(executions.c.id == check_id(execution_id, "execution"))
    if owner is not None:
        stmt = stmt.where(executions.c.owner == owner)
    if conn.execute(stmt).first() is None:
        raise NotFoundError(f"execution {execution_id!r} not found")
    where = usage.c.execution_id == execution_id
    steps = _totals(conn, where, [usage.c.step_id, usage.c.provider, usage.c.model])
    (totals,) = _totals(conn, where, [])
    return {"execution_id": execution_id, **totals, "steps": steps}


def workflow_stats(conn: Connection, name: str, owner: str | None) -> dict[str, Any]:
    """Runs, success rate, duration percentiles and cost of one workflow's executions."""
    base = executions.c.workflow == name
    if owner is not None:
        base = and_(base, executions.c.owner == owner)
    counts: dict[str, int] = dict(
        conn.execute(
            select(executions.c.status, func.count()).where(base).group_by(executions.c.status)
        ).all()
    )
    durations = [
        float(d)
        for (d,) in conn.execute(
            select(seconds_between(executions.c.finished_at, executions.c.started_at))
            .where(
                base,
                executions.c.status == "completed",
                executions.c.started_at.isnot(None),
            )
            .order_by(executions.c.finished_at.desc())
            .limit(MAX_DURATIONS)
        )
        if d is not None
    ]
    where = usage.c.workflow == name
    if owner is not None:
        where = and_(where, usage.c.owner == owner)
    (cost,) = _totals(conn, where, [])
    runs = sum(counts.values())
    finished = int(counts.get("completed", 0)) + int(counts.get("failed", 0))
    return {
        "workflow": name,
        "runs": runs,
        "by_status": {k: int(v) for k, v in sorted(counts.items())},
        "success_rate": None if not finished else round(counts.get("completed", 0) / finished, 4),
        "duration_p50_s": _percentile(durations, 50),
        "duration_p95_s": _percentile(durations, 95),
        "cost_usd": cost["cost_usd"],
        "avg_cost_per_run_usd": None
        if cost["cost_usd"] is None or not runs
        else round(cost["cost_usd"] / runs, 8),
        "calls": cost["calls"],
    }


def _percentile(values: list[float], pct: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 4)
    return round(statistics.quantiles(values, n=100, method="inclusive")[pct - 1], 4)
