"""Fixtures of the fault scenarios (R1-R8 of docs RELIABILITY.md section 3.2).

Each test gets a fresh database of each backend (``db_url`` from tests/conftest.py), a
ledger file, a client log and a :class:`Fleet` that starts worker processes and kills
whatever is left at the end. Figures of every scenario are printed at the end of the
session and written to ``tests/faults/.figures.json``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.engine.core import Engine, EngineSettings
from conveyor.store.database import Database
from tests.acceptance.conftest import Processes
from tests.faults.app import app
from tests.faults.harness import (
    FIGURES,
    LEASE_TTL_S,
    ClientLog,
    Fleet,
    figures_table,
    write_figures,
)
from tests.faults.ledger import init_ledger

FIGURES_FILE = Path(__file__).with_name(".figures.json")


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return init_ledger(tmp_path / "ledger.db")


@pytest.fixture
def client_log(tmp_path: Path) -> ClientLog:
    return ClientLog(tmp_path / "client-log.jsonl")


@pytest.fixture
def fleet(tmp_path: Path, db_url: str, ledger: Path) -> Iterator[Fleet]:
    directory = tmp_path / "processes"
    directory.mkdir()
    processes = Processes(directory)
    try:
        yield Fleet(processes, db_url, ledger)
    finally:
        processes.cleanup()  # SIGKILL (also ends a SIGSTOPped process) what is left
        print(processes.diagnostics())  # shown when the test failed


@pytest.fixture
def fengine(db: Database) -> Engine:
    """An engine on the test database that knows the fault app's tasks (their retries)."""
    return Engine(
        db,
        catalog=app,
        settings=EngineSettings(lease_ttl_s=LEASE_TTL_S, worker_heartbeat_timeout_s=30.0),
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.write_line(figures_table())
        write_figures(FIGURES_FILE)
        terminalreporter.write_line(f"figures written to {FIGURES_FILE}")
