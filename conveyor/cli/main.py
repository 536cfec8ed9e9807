"""``conveyor``: run workers, submit and inspect jobs, manage queues and the database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer

from conveyor.cli import server_cmd
from conveyor.cli.common import (
    console,
    fail,
    load_app,
    parse_json,
    print_json,
    print_page,
    run,
    settings_from,
    with_engine,
)
from conveyor.cli.ops import LocalOps, Ops, RemoteOps
from conveyor.cli.render import (
    costs_table,
    documents_table,
    executions_table,
    jobs_table,
    queues_table,
    status_text,
    steps_table,
    workers_table,
    workflows_table,
)
from conveyor.client.aio import AsyncClient
from conveyor.domain.states import TERMINAL_JOB_STATES
from conveyor.settings import Settings

T = TypeVar("T")

app = typer.Typer(
    name="conveyor",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
jobs_app = typer.Typer(help="Inspect and steer jobs.", no_args_is_help=True)
queues_app = typer.Typer(help="Queue statistics, pause/resume, clean-up.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
workers_app = typer.Typer(help="Registered workers.", no_args_is_help=True)
executions_app = typer.Typer(help="Inspect and steer workflow executions.", no_args_is_help=True)
workflows_app = typer.Typer(help="The app's workflows.", no_args_is_help=True)
documents_app = typer.Typer(help="Documents steps saved (reports and such).", no_args_is_help=True)
app.add_typer(documents_app, name="documents")
app.add_typer(executions_app, name="executions")
app.add_typer(workflows_app, name="workflows")
app.add_typer(jobs_app, name="jobs")
app.add_typer(server_cmd.users_app, name="users")
app.command("serve")(server_cmd.serve)
app.command("token")(server_cmd.token)
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


@dataclass
class _Remote:
    server: str | None = None
    token: str | None = None


_remote = _Remote()


@app.callback()
def _root(
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            "-s",
            envvar="CONVEYOR_SERVER",
            help="Talk to a Conveyor server at this URL instead of the database.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="CONVEYOR_TOKEN",
            help="Bearer token for --server.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Conveyor: durable jobs and workflows for AI-agent pipelines."""
    _remote.server = server
    _remote.token = token


def _ops(settings: Settings, app_spec: str | None, body: Callable[[Ops], Awaitable[T]]) -> T:
    """Run ``body`` against the server given by --server, else the local database."""
    if _remote.server:
        if not _remote.token:
            fail("--server needs a token: --token or CONVEYOR_TOKEN (see `conveyor token`)", 6)

        async def remote() -> T:
            async with AsyncClient(_remote.server or "", token=_remote.token) as client:
                return await body(RemoteOps(client))

        return run(remote())
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
    print_page(page, jobs_table, as_json)


@jobs_app.command("show")
def jobs_show(
    job_id: str,
    events: Annotated[bool, typer.Option("--events", help="Also list its events.")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Live progress.")] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Show one job (JSON), or follow it live until it finishes."""
    settings = settings_from(database_url)
    if follow:
        from conveyor.cli.follow import follow_job

        raise typer.Exit(_ops(settings, None, lambda ops: follow_job(ops, job_id)))

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


# -- workflows and executions ----------------------------------------------------------


@workflows_app.command("list")
def workflows_list(app_spec: AppOpt = None, as_json: JsonOpt = False) -> None:
    """The workflows your app defines."""
    settings = settings_from(None, app_spec)
    items = _ops(settings, settings.app or "", lambda ops: ops.list_workflows())
    if as_json:
        print_json(items)
        return
    table = workflows_table(items)
    console.print(table)


@workflows_app.command("show")
def workflows_show(name: str, app_spec: AppOpt = None) -> None:
    """One workflow's steps and dependencies (JSON)."""
    settings = settings_from(None, app_spec)
    print_json(_ops(settings, settings.app or "", lambda ops: ops.get_workflow(name)))


@app.command("run")
def run_workflow(
    workflow: Annotated[str, typer.Argument(help="Name of a workflow of the app.")],
    input_json: Annotated[
        str | None, typer.Option("--input", "-i", help="Input JSON object (or @file.json).")
    ] = None,
    mode: Annotated[str, typer.Option(help="auto, or manual to run stage by stage.")] = "auto",
    parallelism: Annotated[int | None, typer.Option(help="Max steps active at once.")] = None,
    priority: Annotated[str | None, typer.Option(help="critical, high, medium, low.")] = None,
    scope_type: Annotated[str | None, typer.Option(help="What the run is about.")] = None,
    scope_id: Annotated[str | None, typer.Option(help="Which one.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Start at most once.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Watch it live; exit with its status.")
    ] = False,
    app_spec: AppOpt = None,
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start an execution of WORKFLOW."""
    settings = settings_from(database_url, app_spec)
    data = parse_json(input_json)
    if data is not None and not isinstance(data, dict):
        fail("input must be a JSON object", 2)
    body: dict[str, Any] = {"workflow": workflow, "input": data, "mode": mode}
    for key, value in (
        ("parallelism", parallelism),
        ("priority", priority),
        ("scope_type", scope_type),
        ("scope_id", scope_id),
    ):
        if value is not None:
            body[key] = value

    async def go(ops: Ops) -> tuple[dict[str, Any], int]:
        execution = await ops.start_execution(body, idempotency_key)
        if not follow:
            return execution, 0
        from conveyor.cli.follow import follow_execution

        return execution, await follow_execution(ops, execution["id"])

    execution, code = _ops(settings, settings.app, go)
    if not follow:
        if as_json:
            print_json(execution)
        else:
            console.print(
                f"started execution [bold]{execution['id']}[/] of {workflow} "
                f"({execution['status']}, {execution['progress']['total']} steps)"
            )
    raise typer.Exit(code)


@executions_app.command("list")
def executions_list(
    status: Annotated[str | None, typer.Option(help="Filter by status.")] = None,
    workflow: Annotated[str | None, typer.Option(help="Filter by workflow.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    cursor: Annotated[str | None, typer.Option(help="From a previous page.")] = None,
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List executions, newest first."""
    settings = settings_from(database_url)
    filters = {"status": status, "workflow": workflow}
    page = _ops(settings, None, lambda ops: ops.list_executions(filters, limit, cursor))
    print_page(page, executions_table, as_json)


@executions_app.command("show")
def executions_show(
    execution_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Watch it live; exit with its status.")
    ] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Show one execution (JSON), or follow it live."""
    settings = settings_from(database_url)
    if follow:
        from conveyor.cli.follow import follow_execution

        raise typer.Exit(_ops(settings, None, lambda ops: follow_execution(ops, execution_id)))
    print_json(_ops(settings, None, lambda ops: ops.get_execution(execution_id)))


@executions_app.command("steps")
def executions_steps(
    execution_id: str, database_url: DatabaseOpt = None, as_json: JsonOpt = False
) -> None:
    """The steps of an execution with their status, attempts and results."""
    settings = settings_from(database_url)
    steps = _ops(settings, None, lambda ops: ops.execution_steps(execution_id))
    if as_json:
        print_json(steps)
    else:
        console.print(steps_table(steps))


@executions_app.command("cancel")
def executions_cancel(execution_id: str, database_url: DatabaseOpt = None) -> None:
    """Cancel an execution: waiting steps stop now, active ones are asked to stop."""
    settings = settings_from(database_url)
    execution = _ops(settings, None, lambda ops: ops.cancel_execution(execution_id))
    console.print(f"execution {execution['id']}: {status_text(execution['status'])}")


@executions_app.command("retry")
def executions_retry(execution_id: str, database_url: DatabaseOpt = None) -> None:
    """Re-run the steps of a failed or cancelled execution that did not complete."""
    settings = settings_from(database_url)
    execution = _ops(settings, None, lambda ops: ops.retry_execution(execution_id))
    console.print(f"execution {execution['id']}: {status_text(execution['status'])}")


@executions_app.command("run-step")
def executions_run_step(
    execution_id: str,
    step_id: str,
    input_json: Annotated[
        str | None, typer.Option("--input", "-i", help="Extra input JSON for this step.")
    ] = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Manual mode: run one step now (refused until its dependencies completed)."""
    settings = settings_from(database_url)
    data = parse_json(input_json)
    if data is not None and not isinstance(data, dict):
        fail("input must be a JSON object", 2)
    job = _ops(settings, None, lambda ops: ops.run_step(execution_id, step_id, data))
    console.print(f"step {step_id} queued as job [bold]{job['id']}[/]")


@app.command("answer")
def answer(
    execution_id: str,
    step_id: str,
    answers_json: Annotated[
        str, typer.Option("--answers", help="JSON object {question_id: answer} (or @file).")
    ],
    database_url: DatabaseOpt = None,
) -> None:
    """Answer the questions a step asked; the step then resumes."""
    settings = settings_from(database_url)
    answers = parse_json(answers_json, "answers")
    if not isinstance(answers, dict):
        fail("answers must be a JSON object keyed by question id", 2)
    result = _ops(settings, None, lambda ops: ops.answer(execution_id, step_id, answers))
    console.print(f"answered: step {step_id} resumes ({result['status']})")


@app.command("clarifications")
def clarifications_list(
    status: Annotated[str, typer.Option(help="pending, answered, expired, cancelled.")] = "pending",
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Questions steps asked (pending ones by default)."""
    settings = settings_from(database_url)
    items = _ops(settings, None, lambda ops: ops.list_clarifications(status))
    if as_json:
        print_json(items)
        return
    for item in items:
        console.print(f"[bold]{item['execution_id']}[/] step {item['step_id']} ({item['status']})")
        for question in item["questions"]:
            console.print(f"  {question['id']}: {question['text']}")


@app.command("costs")
def costs(
    start: Annotated[str | None, typer.Option("--from", help="ISO date or date-time.")] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="ISO date or date-time (excluded).")
    ] = None,
    by: Annotated[str, typer.Option(help="workflow, model or day.")] = "workflow",
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """LLM usage and cost, totalled and broken down by workflow, model or day."""
    if by not in ("workflow", "model", "day"):
        fail("--by must be workflow, model or day", 2)
    settings = settings_from(database_url)
    summary = _ops(settings, None, lambda ops: ops.usage_summary(start, end))
    if as_json:
        print_json(summary)
        return
    console.print(costs_table(summary, by))


# -- documents ---------------------------------------------------------------------------


@documents_app.command("list")
def documents_list(
    execution: Annotated[
        str | None, typer.Option(help="Only documents this execution wrote.")
    ] = None,
    scope_type: Annotated[str | None, typer.Option(help="Filter by scope type.")] = None,
    scope_id: Annotated[str | None, typer.Option(help="Filter by scope id.")] = None,
    doc_type: Annotated[str | None, typer.Option("--type", help="Filter by type.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    cursor: Annotated[str | None, typer.Option(help="From a previous page.")] = None,
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Documents, newest first."""
    settings = settings_from(database_url)
    filters = {
        "scope_type": scope_type,
        "scope_id": scope_id,
        "type": doc_type,
        "execution_id": execution,
    }
    page = _ops(settings, None, lambda ops: ops.list_documents(filters, limit, cursor))
    print_page(page, documents_table, as_json)


@documents_app.command("show")
def documents_show(
    document_id: str,
    version: Annotated[
        int | None, typer.Option(min=1, help="An earlier version (default: the current one).")
    ] = None,
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a document: text as Markdown, JSON content as JSON."""
    settings = settings_from(database_url)
    doc = _ops(settings, None, lambda ops: ops.get_document(document_id, version))
    if as_json:
        print_json(doc)
        return
    console.print(f"[bold]{doc['title']}[/] (version {doc['version']})", highlight=False)
    if isinstance(doc["content"], str):
        from rich.markdown import Markdown

        console.print(Markdown(doc["content"]))
    else:
        print_json(doc["content"])


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
