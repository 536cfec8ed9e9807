"""``--follow``: a live view of an execution or a job until it finishes.

Follows the event log (SSE from a server, the events table locally) from the last id
it has seen, so nothing is missed or shown twice; redraws a Rich view with one progress
bar per active step; and, on a terminal, prompts for the answers when a step asks a
clarification.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.prompt import Prompt
from rich.table import Table
from rich.text import Text

from conveyor.cli.common import console, err_console
from conveyor.cli.ops import Ops
from conveyor.cli.render import status_text
from conveyor.errors import AnswerValidationError, ConflictError

#: exit codes of ``--follow`` (the execution's or job's final status)
EXIT_BY_STATUS = {"completed": 0, "failed": 1, "cancelled": 8}
TERMINAL = frozenset(EXIT_BY_STATUS)
REFRESH_S = 0.25


@dataclass
class _View:
    status: str = "queued"
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    percent: float = 0.0
    asked: set[str] = field(default_factory=set)

    def render(self, title: str) -> Group:
        header = Text.from_markup(f"[bold]{title}[/]  {status_text(self.status)}")
        overall = Progress(
            TextColumn("overall"), BarColumn(), TextColumn("{task.percentage:>5.1f}%")
        )
        overall.add_task("overall", total=100, completed=round(self.percent))
        table = Table(box=None, show_header=True, pad_edge=False)
        for column in ("step", "status", "progress", "message"):
            table.add_column(column)
        for step_id, step in self.steps.items():
            bar = ""
            if step["status"] in ("active", "awaiting_input") or 0 < step["progress"] < 100:
                filled = round(step["progress"] / 5)
                bar = "█" * filled + "░" * (20 - filled) + f" {step['progress']:>3}%"
            elif step["status"] == "completed":
                bar = "█" * 20 + " 100%"
            table.add_row(
                step_id,
                status_text(step["status"]),
                bar,
                step.get("message") or "",
            )
        return Group(header, overall, table)


async def follow_execution(ops: Ops, execution_id: str, *, interactive: bool | None = None) -> int:
    """Show the execution live; return the exit code for its final status."""
    interactive = sys.stdin.isatty() if interactive is None else interactive
    view = _View()
    await _refresh(ops, execution_id, view)
    refreshed = time.monotonic()
    with Live(view.render(execution_id), console=console, refresh_per_second=8) as live:
        await _ask_waiting(ops, execution_id, view, interactive, live)
        if view.status not in TERMINAL:
            async for event in ops.follow("execution", execution_id, 0):
                _apply(view, event)
                state_changed = not event["type"].endswith(".progress")
                if state_changed or time.monotonic() - refreshed > REFRESH_S:
                    await _refresh(ops, execution_id, view)
                    refreshed = time.monotonic()
                live.update(view.render(execution_id))
                if event["type"] == "clarification.requested":
                    await _ask_waiting(ops, execution_id, view, interactive, live)
        await _refresh(ops, execution_id, view)
        live.update(view.render(execution_id))
    final = await ops.get_execution(execution_id)
    if final["status"] == "completed":
        console.print_json(data=final["output"])
    elif final.get("error"):
        err_console.print(f"[red]{final['status']}:[/] {final['error'].get('message', '')}")
    return EXIT_BY_STATUS.get(final["status"], 1)


async def _ask_waiting(
    ops: Ops, execution_id: str, view: _View, interactive: bool, live: Live
) -> None:
    for step_id, step in list(view.steps.items()):
        if step["status"] != "awaiting_input" or step_id in view.asked:
            continue
        view.asked.add(step_id)
        live.stop()
        try:
            await _answer(ops, execution_id, step_id, interactive)
        finally:
            live.start()


async def follow_job(ops: Ops, job_id: str) -> int:
    """Show one job's progress live; return the exit code for its final status."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[status]} {task.fields[message]}"),
        console=console,
    )
    job = await ops.get_job(job_id)
    bar = progress.add_task(job["task"], total=100, status=job["status"], message="")
    with progress:
        if job["status"] not in TERMINAL:
            async for event in ops.follow("job", job_id, 0):
                data = event.get("data") or {}
                if event["type"] == "job.progress":
                    progress.update(
                        bar, completed=data.get("progress", 0), message=data.get("message") or ""
                    )
                else:
                    progress.update(bar, status=event["type"].removeprefix("job."))
        job = await ops.get_job(job_id)
        progress.update(bar, completed=job["progress"], status=job["status"])
    if job["status"] == "completed":
        console.print_json(data=job["result"])
    elif job.get("error"):
        err_console.print(f"[red]{job['status']}:[/] {job['error'].get('message', '')}")
    return EXIT_BY_STATUS.get(job["status"], 1)


def _apply(view: _View, event: dict[str, Any]) -> None:
    step_id = event.get("step_id")
    data = event.get("data") or {}
    if step_id and event["type"] == "job.progress":
        step = view.steps.setdefault(step_id, {"status": "active", "progress": 0})
        step["progress"] = data.get("progress", step["progress"])
        step["message"] = data.get("message")


async def _refresh(ops: Ops, execution_id: str, view: _View) -> None:
    execution = await ops.get_execution(execution_id)
    view.status = execution["status"]
    view.percent = execution["progress"]["percent"]
    for step in await ops.execution_steps(execution_id):
        current = view.steps.setdefault(step["step_id"], {})
        current.update(
            status=step["status"],
            progress=step["progress"],
            message=step.get("progress_message") or current.get("message"),
        )
        if step["status"] != "awaiting_input":
            view.asked.discard(step["step_id"])


async def _answer(ops: Ops, execution_id: str, step_id: str, interactive: bool) -> None:
    steps = {s["step_id"]: s for s in await ops.execution_steps(execution_id)}
    clarification = steps[step_id].get("clarification")
    if not clarification or clarification["status"] != "pending":
        return
    if not interactive:
        err_console.print(
            f"step [bold]{step_id}[/] asks a question; answer with:\n"
            f"  conveyor answer {execution_id} {step_id} --answers '{{...}}'"
        )
        for question in clarification["questions"]:
            err_console.print(f"  - {question['id']}: {question['text']}")
        return
    console.print(f"\n[bold yellow]Step {step_id} asks:[/]")
    while True:
        answers: dict[str, Any] = {}
        for question in clarification["questions"]:
            answers[question["id"]] = _prompt(question)
        try:
            await ops.answer(execution_id, step_id, answers)
            return
        except AnswerValidationError as exc:
            for detail in exc.details:
                err_console.print(f"[red]{'.'.join(detail['loc'])}: {detail['msg']}[/]")
        except ConflictError:
            return  # answered elsewhere meanwhile


def _prompt(question: dict[str, Any]) -> Any:
    schema = question.get("schema") or {}
    default = question.get("default")
    choices = schema.get("enum")
    kind = schema.get("type")
    text = Prompt.ask(
        question["text"],
        choices=[str(c) for c in choices] if choices else None,
        default=None if default is None else str(default),
        console=console,
    )
    if text is None:
        return None
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            return text
    if kind == "number":
        try:
            return float(text)
        except ValueError:
            return text
    if kind == "boolean":
        return str(text).strip().lower() in ("y", "yes", "true", "1")
    return text
