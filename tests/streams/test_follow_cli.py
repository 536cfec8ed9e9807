"""``conveyor --server URL --token T ... --follow``: the CLI follows a job or an
execution over SSE until it finishes and exits with its final status (0 completed,
1 failed, 8 cancelled; ``EXIT_BY_STATUS`` in ``conveyor.cli.follow``)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.acceptance.conftest import (
    CONVEYOR_BIN,
    REPO_ROOT,
    CliCall,
    CliResult,
    process_env,
    run_cli,
    run_cli_many,
)
from tests.servers import Server
from tests.streams.conftest import API, async_client, event_log, submit_job

# the exit codes are part of the CLI's contract: spelled out here, not imported
COMPLETED, FAILED, CANCELLED = 0, 1, 8


# The SQLite server only: the CLI talks HTTP, so what it does does not depend on the
# server's database (the streams themselves are tested on both backends).
pytestmark = pytest.mark.parametrize("server", ["sqlite"], indirect=True)


@pytest.fixture
def cli_server(server: Server) -> Server:
    return server


def remote(server: Server, token: str, *args: str) -> tuple[str, ...]:
    return ("--server", server.base, "--token", token, *args)


def newest_execution(server: Server, token: str, timeout: float = 20.0) -> str:
    """The id of the user's newest execution, once there is one."""
    deadline = time.monotonic() + timeout
    with server.client(token) as client:
        while True:
            items = client.get(f"{API}/executions", params={"limit": 1}).json()["items"]
            if items:
                found: str = items[0]["id"]
                return found
            assert time.monotonic() < deadline, "no execution was started"
            time.sleep(0.05)


@pytest.fixture
def cli_dir(tmp_path: Path) -> Path:
    return tmp_path


class Follower:
    """A ``--follow`` command running in the background (killed at the end if needed)."""

    def __init__(self, args: Sequence[str], directory: Path) -> None:
        self.args = tuple(args)
        self.out = directory / f"follow-{time.monotonic_ns()}.out"
        self.err = self.out.with_suffix(".err")
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.popen = subprocess.Popen(
                [str(CONVEYOR_BIN), *self.args],
                cwd=REPO_ROOT,
                env=process_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    def wait(self, timeout: float) -> CliResult:
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(
                f"conveyor {' '.join(self.args)} still running after {timeout}s\n"
                f"{self.out.read_text()}\n{self.err.read_text()}"
            ) from None
        return CliResult(self.args, code, self.out.read_text(), self.err.read_text())

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


@pytest.fixture
def followers(cli_dir: Path) -> Iterator[list[Follower]]:
    started: list[Follower] = []
    yield started
    for follower in started:
        follower.stop()


def let_start(followers: Sequence[Follower], seconds: float = 3.0) -> None:
    """Give the followers time to start and open their streams (a process start and two
    requests), failing early if one exits meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for follower in followers:
            assert follower.popen.poll() is None, follower.wait(1).describe()
        time.sleep(0.1)


def submit_then_follow(server: Server, token: str, task: str) -> tuple[CliResult, CliResult]:
    """``conveyor submit TASK --json``, then ``conveyor jobs show ID --follow``."""
    submitted = run_cli(*remote(server, token, "submit", task, "--json"), timeout=60)
    assert submitted.returncode == 0, submitted.describe()
    job_id = str(submitted.json()["id"])
    return submitted, run_cli(*remote(server, token, "jobs", "show", job_id, "--follow"))


def test_follow_exits_0_when_completed_and_1_when_failed(cli_server: Server) -> None:
    """A workflow and a job each way, all at once (each CLI call is a process start)."""
    server = cli_server
    _, token = server.new_user()
    with server.client(token) as client:
        ticker = client.post(
            f"{API}/jobs", json={"task": "ticker", "input": {"count": 20, "interval": 0.05}}
        ).json()["id"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        boom = pool.submit(submit_then_follow, server, token, "boom")
        others = pool.submit(
            run_cli_many,
            {
                "run ok": CliCall(remote(server, token, "run", "ticking", "--follow")),
                "run failed": CliCall(remote(server, token, "run", "doomed", "--follow")),
                "job ok": CliCall(remote(server, token, "jobs", "show", ticker, "--follow")),
            },
            60,
        )
        submitted, followed = boom.result()
        results = {**others.result(), "job failed": followed}
    for name, result in results.items():
        assert "Traceback" not in result.output, f"{name}\n{result.describe()}"
    assert results["run ok"].returncode == COMPLETED, results["run ok"].describe()
    assert results["run failed"].returncode == FAILED, results["run failed"].describe()
    assert results["job failed"].returncode == FAILED, results["job failed"].describe()
    assert results["job ok"].returncode == COMPLETED, results["job ok"].describe()
    assert "boom" in results["job failed"].flat_stderr, results["job failed"].describe()
    assert "20" in results["job ok"].stdout  # the ticker's result, printed as JSON

    with server.client(token) as client:
        executions = client.get(f"{API}/executions", params={"limit": 10}).json()["items"]
        by_workflow = {e["workflow"]: e["status"] for e in executions}
        assert by_workflow == {"ticking": "completed", "doomed": "failed"}
        boom_id = submitted.json()["id"]
        assert client.get(f"{API}/jobs/{boom_id}").json()["status"] == "failed"
        assert client.get(f"{API}/jobs/{ticker}").json()["status"] == "completed"


async def cancel_when_active(client: httpx.AsyncClient, path: str) -> None:
    deadline = time.monotonic() + 20
    while (await client.get(path)).json()["status"] not in ("active", "running"):
        assert time.monotonic() < deadline, f"{path} never became active"
        await asyncio.sleep(0.05)
    response = await client.post(f"{path}/cancel")
    assert response.status_code == 200, response.text


async def test_following_work_that_is_cancelled_exits_8(
    cli_server: Server, followers: list[Follower], cli_dir: Path
) -> None:
    server = cli_server
    _, token = server.new_user()
    async with async_client(server, token) as client:
        job = await submit_job(client, "sleepy", input={"seconds": 30})
        job_follower = Follower(remote(server, token, "jobs", "show", job, "--follow"), cli_dir)
        run_follower = Follower(remote(server, token, "run", "waiting", "--follow"), cli_dir)
        followers += [job_follower, run_follower]
        # the followers are up and streaming before anything is cancelled
        await asyncio.to_thread(let_start, [job_follower, run_follower])
        execution = await asyncio.to_thread(newest_execution, server, token)
        await cancel_when_active(client, f"{API}/jobs/{job}")
        await cancel_when_active(client, f"{API}/executions/{execution}")
        job_result = await asyncio.to_thread(job_follower.wait, 30)
        run_result = await asyncio.to_thread(run_follower.wait, 30)
        job_log = await event_log(client, "job", job)
        final = (await client.get(f"{API}/executions/{execution}")).json()
    assert job_result.returncode == CANCELLED, job_result.describe()
    assert run_result.returncode == CANCELLED, run_result.describe()
    assert job_log[-1]["type"] == "job.cancelled"
    assert final["status"] == "cancelled"
