"""Helpers for acceptance tests that run Conveyor as real processes.

Every process is started from the repository root (so ``tests.apps.ledger`` is
importable), with its stdout and stderr written to files under the test's ``tmp_path``
for diagnostics, and is killed when the test ends if it is still running. Only processes
started here are ever signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conveyor.domain.states import TERMINAL_JOB_STATES
from conveyor.engine.core import Engine
from conveyor.engine.models import Job

REPO_ROOT = Path(__file__).resolve().parents[2]
#: the console script installed next to this interpreter (conveyor.cli.main has no
#: ``if __name__ == "__main__"``, so ``python -m`` would not run it)
CONVEYOR_BIN = Path(sys.executable).parent / "conveyor"
LEDGER_APP = "tests.apps.ledger:app"

#: short leases and fast polling, so crash recovery happens within seconds
FAST_SETTINGS: dict[str, str] = {
    "CONVEYOR_LEASE_TTL_S": "2",
    "CONVEYOR_HEARTBEAT_INTERVAL_S": "0.3",
    "CONVEYOR_SWEEP_INTERVAL_S": "0.3",
    "CONVEYOR_POLL_MAX_S": "0.2",
}


def process_env(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without any CONVEYOR_* variable, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.pop("LEDGER_PATH", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides or {})
    return env


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no output file>"
    return text if len(text) <= limit else "...\n" + text[-limit:]


@dataclass
class Proc:
    """One process started by a test."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, signum: signal.Signals) -> None:
        """Signal this process (which we started); refuse if it already exited."""
        if not self.alive():
            raise AssertionError(
                f"{self.name} (pid {self.pid}) already exited with "
                f"{self.popen.returncode}\n{self.diagnostics()}"
            )
        self.popen.send_signal(signum)

    async def wait_exit(self, timeout: float) -> int:
        """The exit code; fails (with the process's output) if still running after it."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.popen.poll()
            if code is not None:
                return code
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} (pid {self.pid}) still running after {timeout}s\n"
                    f"{self.diagnostics()}"
                )
            await asyncio.sleep(0.02)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def diagnostics(self) -> str:
        return (
            f"--- {self.name} (pid {self.pid}) stdout ---\n{_tail(self.stdout_path)}\n"
            f"--- {self.name} (pid {self.pid}) stderr ---\n{_tail(self.stderr_path)}"
        )

    def stop(self) -> None:
        """SIGKILL if still running, and reap."""
        if self.popen.poll() is None:
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)


@dataclass
class Processes:
    """Starts processes for one test and kills whatever is left at the end."""

    directory: Path
    started: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> Proc:
        index = len(self.started)
        stdout_path = self.directory / f"{index:02d}-{name}.out"
        stderr_path = self.directory / f"{index:02d}-{name}.err"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            popen = subprocess.Popen(
                list(args),
                cwd=REPO_ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # a Ctrl-C in the terminal reaches only pytest
            )
        proc = Proc(name, popen, stdout_path, stderr_path)
        self.started.append(proc)
        return proc

    def worker(
        self,
        database_url: str,
        *,
        name: str = "worker",
        concurrency: int = 2,
        ledger: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> Proc:
        """``conveyor worker --app tests.apps.ledger:app`` with fast lease settings."""
        overrides = {"CONVEYOR_DATABASE_URL": database_url, **FAST_SETTINGS}
        if ledger is not None:
            overrides["LEDGER_PATH"] = str(ledger)
        overrides.update(settings or {})
        args = [str(CONVEYOR_BIN), "worker", "--app", LEDGER_APP]
        args += ["--concurrency", str(concurrency)]
        return self.spawn(name, args, process_env(overrides))

    def diagnostics(self) -> str:
        return "\n".join(p.diagnostics() for p in self.started)

    def cleanup(self) -> None:
        for proc in self.started:
            proc.stop()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    directory = tmp_path / "processes"
    directory.mkdir()
    processes = Processes(directory)
    try:
        yield processes
    finally:
        processes.cleanup()
        # shown by pytest only when the test failed
        print(processes.diagnostics())


# -- waiting on the database ---------------------------------------------------------------


async def registered_worker(engine: Engine, proc: Proc, timeout: float = 30.0) -> str:
    """Wait until ``proc`` registered itself in the workers table; its worker id."""
    deadline = time.monotonic() + timeout
    while True:
        for info in await engine.list_workers():
            if info.pid == proc.pid:
                return info.id
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited before registering\n{proc.diagnostics()}")
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{proc.name} did not register within {timeout}s\n{proc.diagnostics()}"
            )
        await asyncio.sleep(0.05)


async def wait_for_jobs(
    engine: Engine,
    job_ids: Iterable[str],
    *,
    timeout: float,
    procs: Processes,
    statuses: frozenset[str] = TERMINAL_JOB_STATES,
) -> dict[str, Job]:
    """Wait until every job's status is in ``statuses``; the jobs by id."""
    ids = list(job_ids)
    deadline = time.monotonic() + timeout
    while True:
        found = {job_id: await engine.get_job(job_id) for job_id in ids}
        if all(job.status in statuses for job in found.values()):
            return found
        if time.monotonic() > deadline:
            summary = {j.id: (j.status, j.attempts, j.worker_id) for j in found.values()}
            raise AssertionError(
                f"jobs not {sorted(statuses)} within {timeout}s: {summary}\n{procs.diagnostics()}"
            )
        await asyncio.sleep(0.1)


async def event_types(engine: Engine, job_id: str) -> list[str]:
    return [e.type for e in await engine.job_events(job_id)]


# -- the CLI as a subprocess -------------------------------------------------------------


@dataclass(frozen=True)
class CliResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def flat_stderr(self) -> str:
        """stderr with runs of whitespace collapsed (the console wraps long lines)."""
        return " ".join(self.stderr.split())

    @property
    def flat_stdout(self) -> str:
        return " ".join(self.stdout.split())

    def json(self) -> Any:
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"not JSON on stdout ({exc}):\n{self.describe()}") from None

    def describe(self) -> str:
        return (
            f"$ conveyor {' '.join(self.args)}\nexit {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )

    def ok(self) -> CliResult:
        """Assert a zero exit code and a clean stderr; return self."""
        assert self.returncode == 0, self.describe()
        assert "Traceback" not in self.output, self.describe()
        return self


def run_cli(
    *args: str,
    database_url: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> CliResult:
    """Run ``conveyor ARGS`` to completion (killed after ``timeout``)."""
    overrides = dict(env or {})
    if database_url is not None:
        overrides["CONVEYOR_DATABASE_URL"] = database_url
    try:
        done = subprocess.run(
            [str(CONVEYOR_BIN), *args],
            cwd=REPO_ROOT,
            env=process_env(overrides),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run killed it
        out = (exc.stdout or b"").decode(errors="replace")
        err = (exc.stderr or b"").decode(errors="replace")
        raise AssertionError(
            f"conveyor {' '.join(args)} still running after {timeout}s\n{out}\n{err}"
        ) from None
    return CliResult(
        tuple(args),
        done.returncode,
        done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
    )


@dataclass(frozen=True)
class CliCall:
    args: tuple[str, ...]
    database_url: str | None = None
    env: Mapping[str, str] | None = None


def run_cli_many(calls: Mapping[str, CliCall], timeout: float = 60.0) -> dict[str, CliResult]:
    """Run independent CLI commands concurrently (process start-up dominates their time)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            name: pool.submit(
                run_cli, *call.args, database_url=call.database_url, env=call.env, timeout=timeout
            )
            for name, call in calls.items()
        }
        return {name: future.result() for name, future in futures.items()}
