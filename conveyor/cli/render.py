"""Rich tables for the CLI's lists."""

from __future__ import annotations

from typing import Any

from rich.table import Table

STATUS_STYLES = {
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
    "active": "cyan",
    "running": "cyan",
    "queued": "white",
    "delayed": "yellow",
    "pending": "dim",
    "awaiting_input": "bold yellow",
}


def status_text(status: str) -> str:
    style = STATUS_STYLES.get(status, "white")
    return f"[{style}]{status}[/]"


def short_time(value: str | None) -> str:
    if not value:
        return "-"
    return value.replace("T", " ")[:19]


def jobs_table(items: list[dict[str, Any]]) -> Table:
    table = Table(show_lines=False)
    for column in ("id", "task", "queue", "status", "priority", "attempts", "created"):
        table.add_column(column)
    for job in items:
        table.add_row(
            job["id"],
            job["task"],
            job["queue"],
            status_text(job["status"]),
            job["priority"],
            f"{job['attempts']}/{job['max_attempts']}",
            short_time(job["created_at"]),
        )
    return table


def queues_table(items: list[dict[str, Any]]) -> Table:
    table = Table()
    columns = (
        "queue",
        "paused",
        "queued",
        "delayed",
        "active",
        "waiting",
        "completed",
        "failed",
        "cancelled",
        "avg ms",
        "success",
    )
    for column in columns:
        table.add_column(column)
    for q in items:
        c = q["counts"]
        table.add_row(
            q["name"],
            "[yellow]yes[/]" if q["paused"] else "no",
            str(c["queued"]),
            str(c["delayed"]),
            str(c["active"]),
            str(c["awaiting_input"]),
            str(c["completed"]),
            str(c["failed"]),
            str(c["cancelled"]),
            "-" if q["avg_run_ms"] is None else f"{q['avg_run_ms']:.1f}",
            "-" if q["success_rate"] is None else f"{q['success_rate'] * 100:.1f}%",
        )
    return table


def workers_table(items: list[dict[str, Any]]) -> Table:
    table = Table()
    for column in ("worker", "kind", "host", "pid", "status", "load", "queues", "last heartbeat"):
        table.add_column(column)
    for w in items:
        table.add_row(
            w["worker_id"],
            w.get("kind", "-"),
            w["hostname"],
            str(w.get("pid") or "-"),
            status_text(w["status"]),
            f"{w['current_load']}/{w['max_concurrency']}",
            ",".join(w["queues"] or ["*"]),
            short_time(w["last_heartbeat"]),
        )
    return table


def executions_table(items: list[dict[str, Any]]) -> Table:
    table = Table()
    for column in ("id", "workflow", "status", "mode", "progress", "created"):
        table.add_column(column)
    for ex in items:
        p = ex["progress"]
        table.add_row(
            ex["id"],
            ex["workflow"] or "(ad hoc)",
            status_text(ex["status"]),
            ex["mode"],
            f"{p['completed']}/{p['total']} ({p['percent']:.0f}%)",
            short_time(ex["created_at"]),
        )
    return table


def steps_table(items: list[dict[str, Any]]) -> Table:
    table = Table()
    for column in ("step", "task", "status", "attempts", "depends on", "progress"):
        table.add_column(column)
    for step in items:
        table.add_row(
            step["step_id"],
            step["task"],
            status_text(step["status"]),
            f"{step['attempts']}/{step['max_attempts']}",
            ", ".join(step["depends_on"]) or "-",
            f"{step['progress']}%",
        )
    return table


def workflows_table(items: list[dict[str, Any]]) -> Table:
    table = Table()
    for column in ("workflow", "version", "steps", "policy", "description"):
        table.add_column(column)
    for wf in items:
        table.add_row(
            wf["name"],
            wf["version"],
            " → ".join(s["id"] for s in wf["steps"])
            if len(wf["steps"]) <= 4
            else f"{len(wf['steps'])} steps",
            wf["failure_policy"],
            (wf["description"] or "").strip().split("\n")[0][:60],
        )
    return table


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.6f}"


def costs_table(summary: dict[str, Any], by: str) -> Table:
    """Usage rows for ``by`` (workflow, model or day) and a total line."""
    window = f"{summary.get('from') or 'start'} .. {summary.get('to') or 'now'}"
    table = Table(title=f"LLM usage by {by} ({window})")
    first = {"workflow": "workflow", "model": "model", "day": "day"}[by]
    for column in (first, "calls", "input tokens", "output tokens", "cost"):
        table.add_column(column, justify="left" if column == first else "right")
    rows = summary[{"workflow": "by_workflow", "model": "by_model", "day": "by_day"}[by]]
    for row in rows:
        label = {
            "workflow": row.get("workflow") or "(standalone jobs)",
            "model": f"{row.get('provider')}/{row.get('model')}",
            "day": row.get("day"),
        }[by]
        table.add_row(
            str(label),
            str(row["calls"]),
            f"{row['input_tokens']:,}",
            f"{row['output_tokens']:,}",
            _money(row["cost_usd"]),
        )
    table.add_section()
    table.add_row(
        "total",
        str(summary["calls"]),
        f"{summary['input_tokens']:,}",
        f"{summary['output_tokens']:,}",
        _money(summary["cost_usd"]),
        style="bold",
    )
    return table


def documents_table(items: list[dict[str, Any]]) -> Table:
    table = Table("id", "type", "title", "scope", "version", "updated")
    for item in items:
        table.add_row(
            item["id"],
            item["type"],
            item["title"],
            f"{item['scope_type']}:{item['scope_id']}",
            str(item["version"]),
            short_time(item.get("updated_at")),
        )
    return table
