"""A real ``conveyor serve`` on 127.0.0.1 per test module and backend, plus helpers."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import reset_pg
from tests.servers import (
    ADMIN_PASSWORD,
    JWT_SECRET,
    Server,
    free_port,
    login,
    start_server,
    stop_server,
)

# tests/faults/chaos.py imports these from here (the rest import them from tests.servers)
__all__ = ["ADMIN_PASSWORD", "JWT_SECRET", "free_port", "login"]

ROOT = Path(__file__).resolve().parents[2]
CONVEYOR = str(Path(sys.executable).with_name("conveyor"))


def wait_json(client: httpx.Client, path: str, done: Any, timeout: float = 20.0) -> dict[str, Any]:
    """GET ``path`` until ``done(body)`` is true."""
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(path).json()
        if done(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never reached the expected state: {body}")
        time.sleep(0.05)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One server per module and backend (tests create their own users, so they do not
    see each other's data)."""
    tmp = tmp_path_factory.mktemp("api")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'api.db'}"
    else:
        url = request.getfixturevalue("pg_url")
        reset_pg(url)
    running = start_server(url, tmp)
    try:
        yield running
    finally:
        stop_server(running)
