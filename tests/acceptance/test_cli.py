"""The ``conveyor`` command line, run as a real process.

Most commands run against a temporary SQLite database; ``test_commands_on_postgres`` runs
some against PostgreSQL. Errors must be one clear message on stderr, never a
traceback, with the documented exit code (``conveyor.cli.common.EXIT_CODES``).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from conveyor.domain.ids import is_valid_id, new_id
from conveyor.engine.core import Engine
from conveyor.engine.models import ClaimRequest, Completed, JobSpec
from conveyor.store import migrate
from conveyor.store.factory import open_database
from tests.acceptance.conftest import (
    LEDGER_APP,
    CliCall,
    CliResult,
    Processes,
    run_cli,
    run_cli_many,
)

ADD_INPUT = '{"a":1,"b":2}'


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated, empty SQLite database for one test."""
    target = tmp_path / "cli.db"
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


def job_of(result: CliResult) -> dict[str, Any]:
    data = result.ok().json()
    assert isinstance(data, dict), result.describe()
    return data


def queue_named(result: CliResult, name: str) -> dict[str, Any]:
    items = result.ok().json()
    assert isinstance(items, list), result.describe()
    found = [q for q in items if q["name"] == name]
    assert len(found) == 1, result.describe()
    queue: dict[str, Any] = found[0]
    return queue


# -- happy paths -------------------------------------------------------------------------


def test_db_upgrade_then_current(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh' / 'new.db'}"
    upgraded = run_cli("db", "upgrade", database_url=url).ok()
    assert "up to date" in upgraded.flat_stdout, upgraded.describe()
    current = run_cli("db", "current", database_url=url).ok()
    assert f"revision {migrate.HEAD}: up to date" in current.flat_stdout, current.describe()


def test_submit_json_then_list_cancel_retry(sqlite_url: str) -> None:
    job = job_of(
        run_cli(
            "submit",
            "add",
            "--input",
            ADD_INPUT,
            "--app",
            LEDGER_APP,
            "--json",
            database_url=sqlite_url,
        )
    )
    assert is_valid_id(job["id"]), job
    assert (job["task"], job["queue"], job["status"], job["input"]) == (
        "add",
        "default",
        "queued",
        {"a": 1, "b": 2},
    )
    assert (job["attempts"], job["max_attempts"], job["result"]) == (0, 3, None)
    job_id = job["id"]

    # listing and cancelling do not depend on each other: run them side by side
    both = run_cli_many(
        {
            "list": CliCall(("jobs", "list", "--json"), sqlite_url),
            "cancel": CliCall(("jobs", "cancel", job_id), sqlite_url),
        }
    )
    page = both["list"].ok().json()
    assert [j["id"] for j in page["items"]] == [job_id], page
    assert page["next_cursor"] is None
    cancelled = both["cancel"].ok()
    assert f"job {job_id}: cancelled" in cancelled.flat_stdout, cancelled.describe()

    retried = run_cli("jobs", "retry", job_id, database_url=sqlite_url).ok()
    assert f"job {job_id}: queued" in retried.flat_stdout, retried.describe()

    shown = job_of(run_cli("jobs", "show", job_id, "--events", database_url=sqlite_url))
    assert (shown["id"], shown["status"], shown["attempts"]) == (job_id, "queued", 0), shown
    types = [e["type"] for e in shown["events"]]
    assert types == ["job.queued", "job.cancelled", "job.queued"], types


def test_worker_process_with_submit_wait_queues_and_workers(
    sqlite_url: str, procs: Processes
) -> None:
    worker = procs.worker(sqlite_url, concurrency=2)

    # --wait returns once the worker process ran it (the worker may still be starting)
    waited = run_cli(
        "submit",
        "add",
        "--input",
        ADD_INPUT,
        "--app",
        LEDGER_APP,
        "--wait",
        "--wait-timeout",
        "60",
        database_url=sqlite_url,
        timeout=90,
    ).ok()
    job = waited.json()
    assert (job["status"], job["result"], job["attempts"]) == ("completed", 3, 1), job
    assert worker.alive(), worker.diagnostics()

    # independent commands run side by side (process start-up dominates their time)
    first = run_cli_many(
        {
            "workers": CliCall(("workers", "list", "--json"), sqlite_url),
            "pause": CliCall(("queues", "pause", "default"), sqlite_url),
        }
    )
    workers = first["workers"].ok().json()
    mine = [w for w in workers if w["pid"] == worker.pid]
    assert len(mine) == 1, workers
    assert mine[0]["worker_id"] == job["worker_id"]
    assert mine[0]["kind"] == "process" and mine[0]["max_concurrency"] == 2, mine
    assert sorted(mine[0]["capabilities"]) == ["add", "record", "record_sync"], mine
    assert "queue default paused" in first["pause"].ok().flat_stdout, first["pause"].describe()

    queue = queue_named(run_cli("queues", "list", "--json", database_url=sqlite_url), "default")
    assert queue["paused"] is True, queue
    assert queue["counts"]["completed"] == 1, queue

    clean = ("queues", "clean", "default", "--status", "completed", "--older-than", "0")
    second = run_cli_many(
        {
            "resume": CliCall(("queues", "resume", "default"), sqlite_url),
            "clean": CliCall(clean, sqlite_url),
        }
    )
    resumed, cleaned = second["resume"].ok(), second["clean"].ok()
    assert "queue default resumed" in resumed.flat_stdout, resumed.describe()
    assert "deleted 1 completed job(s) from default" in cleaned.flat_stdout, cleaned.describe()
    queue = queue_named(run_cli("queues", "list", "--json", database_url=sqlite_url), "default")
    assert queue["paused"] is False, queue
    assert queue["counts"]["completed"] == 0, queue

    worker.send(signal.SIGTERM)
    assert asyncio.run(worker.wait_exit(30)) == 0, worker.diagnostics()
    after = run_cli("workers", "list", "--json", database_url=sqlite_url).ok().json()
    assert [w for w in after if w["pid"] == worker.pid] == [], after


@pytest.mark.postgres
def test_commands_on_postgres(pg_url: str) -> None:
    """Submit and inspect on PostgreSQL, with --database-url instead of the environment."""
    job = job_of(
        run_cli(
            "submit",
            "add",
            "--input",
            ADD_INPUT,
            "--app",
            LEDGER_APP,
            "--json",
            "--priority",
            "high",
            "--database-url",
            pg_url,
        )
    )
    assert (job["task"], job["status"], job["priority"]) == ("add", "queued", "high"), job
    listing = ("jobs", "list", "--task", "add", "--status", "queued", "--limit", "100", "--json")
    results = run_cli_many(
        {
            "show": CliCall(("jobs", "show", job["id"], "--database-url", pg_url)),
            "list": CliCall((*listing, "-d", pg_url)),
            "current": CliCall(("db", "current", "-d", pg_url)),
        }
    )
    shown = job_of(results["show"])
    assert {k: shown[k] for k in ("id", "task", "status", "input")} == {
        k: job[k] for k in ("id", "task", "status", "input")
    }
    assert job["id"] in [j["id"] for j in results["list"].ok().json()["items"]]
    current = results["current"].ok()
    assert f"revision {migrate.HEAD}: up to date" in current.flat_stdout, current.describe()


# -- errors ------------------------------------------------------------------------------


async def _completed_job(url: str) -> str:
    """A job completed through the engine itself (no worker process needed)."""
    db = open_database(url)
    try:
        engine = Engine(db)
        job = (await engine.enqueue(JobSpec("add", {"a": 1, "b": 2}), owner="test")).job
        (claimed,) = await engine.claim(ClaimRequest("cli-test", 1, None, None, 30.0))
        settled = await engine.settle([Completed(job.id, claimed.lease_token, 3)])
        assert not settled.lost
        assert (await engine.get_job(job.id)).status == "completed"
        return job.id
    finally:
        await db.close()


# name: (args, expected exit code, words expected on stderr)
ERROR_CASES: dict[str, tuple[tuple[str, ...], int, tuple[str, ...]]] = {
    "invalid_json": (
        ("submit", "add", "--input", '{"a": 1,', "--app", LEDGER_APP),
        2,
        ("not valid JSON",),
    ),
    "unknown_task": (
        ("submit", "no_such_task", "--input", "{}", "--app", LEDGER_APP),
        2,
        ("unknown task", "no_such_task"),
    ),
    "input_fails_validation": (
        ("submit", "add", "--input", '{"a": "one"}', "--app", LEDGER_APP),
        2,
        ("invalid input", "a:", "b:"),
    ),
    "app_not_importable": (
        ("submit", "add", "--input", ADD_INPUT, "--app", "tests.apps.no_such_module:app"),
        2,
        ("cannot import",),
    ),
    "unknown_job_show": (("jobs", "show", "<unknown>"), 3, ("not found",)),
    "cancel_completed": (("jobs", "cancel", "<completed>"), 4, ("already completed",)),
    "unreachable_database": (
        ("jobs", "list", "-d", "postgresql://postgres@127.0.0.1:1/x"),
        5,
        ("cannot", "127.0.0.1"),
    ),
    "unsupported_url": (("jobs", "list", "-d", "mysql://user@localhost/db"), 7, ("mysql",)),
    "bad_setting": (("queues", "list"), 7, ("bad settings", "lease_ttl_s")),
}


@pytest.fixture(scope="module")
def error_results(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> dict[str, CliResult]:
    """Run every error case at once, against one SQLite database."""
    path = tmp_path_factory.mktemp("cli-errors") / "errors.db"
    shutil.copy(sqlite_template, path)
    url = f"sqlite:///{path}"
    names = {"<unknown>": new_id(), "<completed>": asyncio.run(_completed_job(url))}
    calls = {}
    for name, (args, _, _) in ERROR_CASES.items():
        env = {"CONVEYOR_LEASE_TTL_S": "not-a-number"} if name == "bad_setting" else None
        filled = tuple(names.get(a, a) for a in args)
        calls[name] = CliCall(filled, database_url=url, env=env)
    return run_cli_many(calls)


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_requests_fail_cleanly(error_results: dict[str, CliResult], case: str) -> None:
    _, code, words = ERROR_CASES[case]
    result = error_results[case]
    assert result.returncode == code, result.describe()
    assert "Traceback" not in result.output, result.describe()
    assert result.flat_stderr.startswith("error:"), result.describe()
    for word in words:
        assert word in result.flat_stderr, (word, result.describe())
    assert result.stdout == "", result.describe()
