"""``conveyor``: run workers, submit and inspect jobs, manage queues and the database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from conveyor.cli.common import (
    console,
    fail,
    load_app,
    parse_json,
    print_json,
    run,
    settings_from,
    with_engine,
)
from conveyor.cli.ops import LocalOps, Ops
from conveyor.cli.render import jobs_table, queues_table, status_text, workers_table
from conveyor.domain.states import TERMINAL_JOB_STATES
from conveyor.settings import Settings

T = TypeVar("T")

app = typer.Typer(
    name="conveyor",
    help="Conveyor: durable jobs and workflows for AI-agent pipelines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
jobs_app = typer.Typer(help="Inspect and steer jobs.", no_args_is_help=True)
queues_app = typer.Typer(help="Queue statistics, pause/resume, clean-up.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
workers_app = typer.Typer(help="Registered workers.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(queues_app, name="queues")
app.add_typer(db_app, name="db")
app.add_typer(workers_app, name="workers")

DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url", "-d", help="Database URL (env CONVEYOR_DATABASE_URL).", show_default=False
    ),
]
AppOpt = Annotated[
    str | None,
    typer.Option("--app", "-a", help="module:attribute of your Conveyor app (env CONVEYOR_APP)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _ops(settings: Settings, app_spec: str | None, body: Callable[[Ops], Awaitable[T]]) -> T:
    conveyor_app = load_app(app_spec) if app_spec else None

    async def go(engine: Any) -> T:
        return await body(LocalOps(engine, settings.owner))

    return run(with_engine(settings, conveyor_app, go))


# -- worker ------------------------------------------------------------------------------


@app.command()
def worker(
    app_spec: AppOpt = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, max=10_000)] = 4,
    queues: Annotated[
        str | None, typer.Option("--queues", "-q", help="Comma-separated queues (default: all).")
    ] = None,
    database_url: DatabaseOpt = None,
    worker_id: Annotated[str | None, typer.Option("--id", help="Worker id.")] = None,
) -> None:
    """Run a worker: claim jobs of the app's tasks and run them until SIGTERM/SIGINT."""
    from conveyor.cli.worker_cmd import run_worker

    settings = settings_from(database_url, app_spec)
    conveyor_app = load_app(settings.app)
    queue_list = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    run_worker(conveyor_app, settings, concurrency, queue_list, worker_id)


# -- submit ------------------------------------------------------------------------------


@app.command()
def submit(
    task: Annotated[str, typer.Argument(help="Name of a registered task.")],
    input_json: Annotated[
        str | None, typer.Option("--input", "-i", help="Input JSON object (or @file.json).")
    ] = None,
    queue: Annotated[str | None, typer.Option(help="Queue (default: the task's).")] = None,
    priority: Annotated[str | None, typer.Option(help="critical, high, medium or low.")] = None,
    delay: Annotated[float | None, typer.Option(help="Seconds before it may start.")] = None,
    max_attempts: Annotated[int | None, typer.Option(help="Attempts before it fails.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds one attempt may take.")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Submit at most once per key.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result.")] = False,
    wait_timeout: Annotated[float, typer.Option(help="Give up waiting after seconds.")] = 300.0,
    app_spec: AppOpt = None,
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue one run of TASK. With --wait, exit 0 only if it completed."""
    settings = settings_from(database_url, app_spec)
    data = parse_json(input_json)
    if data is not None and not isinstance(data, dict):
        fail("input must be a JSON object", 2)
    body: dict[str, Any] = {"task": task, "input": data}
    for key, value in (
        ("queue", queue),
        ("priority", priority),
        ("delay_s", delay),
        ("max_attempts", max_attempts),
        ("timeout_s", timeout),
    ):
        if value is not None:
            body[key] = value

    async def go(ops: Ops) -> dict[str, Any]:
        job = await ops.submit(body, idempotency_key)
        if wait:
            job = await _wait_for_job(ops, job["id"], wait_timeout)
        return job

    job = _ops(settings, settings.app, go)
    if as_json or wait:
        print_json(job)
    else:
        console.print(f"queued job [bold]{job['id']}[/] ({job['task']}, {job['status']})")
    if wait and job["status"] != "completed":
        raise typer.Exit(1)


async def _wait_for_job(ops: Ops, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        job = await ops.get_job(job_id)
        if job["status"] in TERMINAL_JOB_STATES:
            return job
        if time.monotonic() > deadline:
            fail(f"job {job_id} is still {job['status']} after {timeout:.0f}s", 1)
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)


# -- jobs --------------------------------------------------------------------------------


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(help="Filter by status.")] = None,
    task: Annotated[str | None, typer.Option(help="Filter by task.")] = None,
    queue: Annotated[str | None, typer.Option(help="Filter by queue.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    cursor: Annotated[str | None, typer.Option(help="From a previous page.")] = None,
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    settings = settings_from(database_url)
    filters = {"status": status, "task": task, "queue": queue}
    page = _ops(settings, None, lambda ops: ops.list_jobs(filters, limit, cursor))
    if as_json:
        print_json(page)
        return
    console.print(jobs_table(page["items"]))
    if page["next_cursor"]:
        console.print(f"next page: --cursor {page['next_cursor']}", style="dim")


@jobs_app.command("show")
def jobs_show(
    job_id: str,
    events: Annotated[bool, typer.Option("--events", help="Also list its events.")] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Show one job (JSON)."""
    settings = settings_from(database_url)

    async def go(ops: Ops) -> dict[str, Any]:
        job = await ops.get_job(job_id)
        if events:
            job["events"] = await ops.job_events(job_id, 0)
        return job

    print_json(_ops(settings, None, go))


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, database_url: DatabaseOpt = None) -> None:
    """Cancel a job (an active one is asked to stop; its task sees ctx.cancelled)."""
    settings = settings_from(database_url)
    job = _ops(settings, None, lambda ops: ops.cancel_job(job_id))
    note = " (cancel requested; the worker stops it)" if job["status"] == "active" else ""
    console.print(f"job {job['id']}: {status_text(job['status'])}{note}")


@jobs_app.command("retry")
def jobs_retry(job_id: str, database_url: DatabaseOpt = None) -> None:
    """Run a failed or cancelled job again."""
    settings = settings_from(database_url)
    job = _ops(settings, None, lambda ops: ops.retry_job(job_id))
    console.print(f"job {job['id']}: {status_text(job['status'])}")


# -- queues ------------------------------------------------------------------------------


@queues_app.command("list")
def queues_list(database_url: DatabaseOpt = None, as_json: JsonOpt = False) -> None:
    """Statistics of every queue."""
    settings = settings_from(database_url)
    items = _ops(settings, None, lambda ops: ops.list_queues())
    if as_json:
        print_json(items)
    else:
        console.print(queues_table(items))


@queues_app.command("pause")
def queues_pause(name: str, database_url: DatabaseOpt = None) -> None:
    """Stop workers from claiming jobs of a queue."""
    settings = settings_from(database_url)
    _ops(settings, None, lambda ops: ops.pause_queue(name))
    console.print(f"queue {name} paused")


@queues_app.command("resume")
def queues_resume(name: str, database_url: DatabaseOpt = None) -> None:
    """Let workers claim jobs of a paused queue again."""
    settings = settings_from(database_url)
    _ops(settings, None, lambda ops: ops.resume_queue(name))
    console.print(f"queue {name} resumed")


@queues_app.command("clean")
def queues_clean(
    name: str,
    status: Annotated[str, typer.Option(help="completed, failed or cancelled.")] = "completed",
    older_than: Annotated[
        float, typer.Option(help="Only jobs finished this many seconds ago.")
    ] = 86_400.0,
    database_url: DatabaseOpt = None,
) -> None:
    """Delete old finished jobs of a queue (and their events)."""
    settings = settings_from(database_url)
    deleted = _ops(settings, None, lambda ops: ops.clean_queue(name, status, older_than))
    console.print(f"deleted {deleted} {status} job(s) from {name}")


# -- workers -----------------------------------------------------------------------------


@workers_app.command("list")
def workers_list(database_url: DatabaseOpt = None, as_json: JsonOpt = False) -> None:
    """Registered workers and their health."""
    settings = settings_from(database_url)
    items = _ops(settings, None, lambda ops: ops.list_workers())
    if as_json:
        print_json(items)
    else:
        console.print(workers_table(items))


# -- db ----------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseOpt = None) -> None:
    """Apply pending migrations."""
    from conveyor.runtime import upgrade_database
    from conveyor.store.url import backend_of, redact

    settings = settings_from(database_url)

    async def go() -> None:
        backend_of(settings.database_url)
        await asyncio.to_thread(upgrade_database, settings.database_url)

    run(go())
    console.print(f"database {redact(settings.database_url)} is up to date")


@db_app.command("current")
def db_current(database_url: DatabaseOpt = None) -> None:
    """Show the migration revision of the database."""
    from conveyor.store import migrate

    settings = settings_from(database_url)

    async def go() -> str | None:
        return await asyncio.to_thread(migrate.current_revision, settings.database_url)

    revision = run(go())
    head = migrate.HEAD
    state = "up to date" if revision == head else f"behind (head is {head})"
    console.print(f"revision {revision or 'none'}: {state}")


def main() -> None:
    app()
