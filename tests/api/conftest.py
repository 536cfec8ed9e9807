"""A real ``conveyor serve`` on 127.0.0.1 per test module and backend, plus helpers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import reset_pg

ROOT = Path(__file__).resolve().parents[2]
CONVEYOR = str(Path(sys.executable).with_name("conveyor"))
ADMIN_PASSWORD = "admin-password-for-tests"
JWT_SECRET = "x" * 48


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    base: str
    database_url: str
    process: subprocess.Popen[bytes]
    log: Path
    admin_token: str

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.Client(base_url=self.base, headers=headers, timeout=10.0)

    def new_user(self, role: str = "user") -> tuple[str, str]:
        """Create a user with a unique name; return (user id, bearer token)."""
        name = f"{role}-{uuid.uuid4().hex[:10]}"
        password = f"pw-{uuid.uuid4().hex}"
        with self.client(self.admin_token) as admin:
            created = admin.post(
                "/api/v1/users", json={"username": name, "password": password, "roles": [role]}
            )
            assert created.status_code == 201, created.text
        return created.json()["id"], login(self.base, name, password)


def login(base: str, username: str, password: str) -> str:
    response = httpx.post(
        f"{base}/api/v1/auth/token", json={"username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


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


def start_server(database_url: str, tmp: Path, extra_env: dict[str, str] | None = None) -> Server:
    port = free_port()
    log = tmp / f"server-{port}.log"
    env = {
        **os.environ,
        "CONVEYOR_DATABASE_URL": database_url,
        "CONVEYOR_ADMIN_USERNAME": "admin",
        "CONVEYOR_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "CONVEYOR_JWT_SECRET": JWT_SECRET,
        "CONVEYOR_SWEEP_INTERVAL_S": "0.2",
        "CONVEYOR_POLL_MAX_S": "0.2",
        "CONVEYOR_CANCEL_GRACE_S": "1",
        "CONVEYOR_DRAIN_TIMEOUT_S": "2",
        "CONVEYOR_LOGIN_MAX_FAILURES": "1000",
        **(extra_env or {}),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [CONVEYOR, "serve", "--app", "tests.apps.api_app:app", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90  # generous: a loaded CI box starts slowly
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"server did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return Server(base, database_url, process, log, login(base, "admin", ADMIN_PASSWORD))


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


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
