"""Real ``conveyor serve`` processes for the tests: start one, wait until it answers, stop it.

Every test directory that needs a server starts it through :func:`start_server` (or, for
a process started some other way, :func:`ready_server`), with the environment of
:func:`server_env`: no ``CONVEYOR_*`` variable and no LLM provider key from outside, a
known admin and HS256 secret, and fast test settings (:data:`QUICK_SETTINGS`, or what
the caller passes instead). A server that does not answer ``/readyz`` within
:data:`START_TIMEOUT_S` fails the test with its output, and is never left running.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from sqlalchemy import create_engine, text

from tests.acceptance.conftest import CONVEYOR_BIN, REPO_ROOT, process_env
from tests.conftest import PG_ADMIN_URL

API_APP = "tests.apps.api_app:app"
PROBLEM_JSON = "application/problem+json"
ADMIN_PASSWORD = "admin-password-for-tests"
JWT_SECRET = "x" * 48
#: how long a server may take to answer /readyz: a loaded 2-core machine has taken 40 s
START_TIMEOUT_S = 90.0

#: the admin every test server creates, and unlimited login attempts
ACCOUNT: dict[str, str] = {
    "CONVEYOR_ADMIN_USERNAME": "admin",
    "CONVEYOR_ADMIN_PASSWORD": ADMIN_PASSWORD,
    "CONVEYOR_LOGIN_MAX_FAILURES": "1000",
}
#: fast sweeps and polls, a short cancel grace and drain (the default test settings)
QUICK_SETTINGS: dict[str, str] = {
    "CONVEYOR_SWEEP_INTERVAL_S": "0.2",
    "CONVEYOR_POLL_MAX_S": "0.2",
    "CONVEYOR_CANCEL_GRACE_S": "1",
    "CONVEYOR_DRAIN_TIMEOUT_S": "2",
}
#: the offline LLM provider (it prices its calls, so costs are real numbers)
FAKE_LLM: dict[str, str] = {"CONVEYOR_LLM_PROVIDER": "fake"}
#: outside LLM settings a test server never sees
LLM_KEYS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY")


@contextlib.contextmanager
def own_database(backend: str, tmp: Path, *, label: str = "server") -> Iterator[str]:
    """An empty database for one server (the server migrates it on start): a SQLite file
    in ``tmp``, or a PostgreSQL database created for it and dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp / f'{label}-{uuid.uuid4().hex[:8]}.db'}"
        return
    name = f"conveyor_{label}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(
        PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1),
        isolation_level="AUTOCOMMIT",
    )
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextlib.contextmanager
def backend_database(
    request: pytest.FixtureRequest, backend: str, tmp: Path, *, label: str = "server"
) -> Iterator[str]:
    """:func:`own_database`, for a test parametrised over backends: a PostgreSQL case
    without PostgreSQL is skipped (in CI, failed: the ``pg_url`` fixture decides)."""
    if backend == "postgres":
        request.getfixturevalue("pg_url")
    with own_database(backend, tmp, label=label) as url:
        yield url


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


def server_env(
    database_url: str,
    extra: Mapping[str, str] | None = None,
    *,
    settings: Mapping[str, str] = QUICK_SETTINGS,
) -> dict[str, str]:
    """The environment of a test server: :func:`process_env` without LLM provider keys,
    the database, :data:`ACCOUNT`, ``settings``, then ``extra``. The shared HS256
    secret is set unless ``extra`` picks another algorithm without naming a secret."""
    env = process_env()
    for name in LLM_KEYS:
        env.pop(name, None)
    env.update(
        {
            "CONVEYOR_DATABASE_URL": database_url,
            **ACCOUNT,
            "CONVEYOR_JWT_SECRET": JWT_SECRET,
            **settings,
            **(extra or {}),
        }
    )
    if env.get("CONVEYOR_JWT_ALGORITHM", "HS256") != "HS256" and (
        "CONVEYOR_JWT_SECRET" not in (extra or {})
    ):
        del env["CONVEYOR_JWT_SECRET"]
    return env


def serve_command(
    port: int,
    app: str = API_APP,
    *,
    workers: int | None = None,
    args: Sequence[str] = (),
    prefix: Sequence[str] = (),
) -> list[str]:
    """``[prefix...] conveyor serve --app APP --port PORT [--workers N] [args...]``."""
    command = [*prefix, str(CONVEYOR_BIN), "serve", "--app", app, "--port", str(port)]
    if workers is not None:
        command += ["--workers", str(workers)]
    return [*command, *args]


def ready_server(
    process: subprocess.Popen[bytes],
    port: int,
    database_url: str,
    log: Path,
    *,
    output: Callable[[], str] | None = None,
    issues_tokens: bool = True,
) -> Server:
    """Wait until the server started as ``process`` answers ``/readyz`` on ``port``, then
    log the admin in (``admin_token`` stays empty when ``issues_tokens`` is false: an
    external identity provider's keys only). On any failure (the process exits, no
    answer within :data:`START_TIMEOUT_S`, a test timeout) the process is killed and the
    failure names ``output()`` (default: the text of ``log``)."""
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            code = process.poll()
            if code is not None or time.monotonic() > deadline:
                how = f"exited with {code}" if code is not None else f"{START_TIMEOUT_S:.0f}s"
                shown = output() if output is not None else log.read_text(errors="replace")
                raise AssertionError(f"server did not start ({how}):\n{shown}")
            time.sleep(0.1)
        token = login(base, "admin", ADMIN_PASSWORD) if issues_tokens else ""
        return Server(base, database_url, process, log, token)
    except BaseException:
        process.kill()
        process.wait(10)
        raise


def start_server(
    database_url: str,
    tmp: Path,
    *,
    app: str = API_APP,
    workers: int | None = None,
    args: Sequence[str] = (),
    prefix: Sequence[str] = (),
    settings: Mapping[str, str] = QUICK_SETTINGS,
    extra_env: Mapping[str, str] | None = None,
    log: Path | None = None,
    issues_tokens: bool = True,
) -> Server:
    """``conveyor serve`` (see :func:`serve_command`) on a free port of 127.0.0.1, with
    :func:`server_env`'s environment; its output goes to ``log`` (default
    ``tmp/server-PORT.log``). Returns once it is ready (:func:`ready_server`); stop it
    with :func:`stop_server`."""
    port = free_port()
    log = log or tmp / f"server-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            serve_command(port, app, workers=workers, args=args, prefix=prefix),
            cwd=REPO_ROOT,
            env=server_env(database_url, extra_env, settings=settings),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return ready_server(process, port, database_url, log, issues_tokens=issues_tokens)


def stop_server(server: Server, timeout: float = 20.0) -> int:
    """SIGTERM (a graceful stop); SIGKILL after ``timeout``. The exit code."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(10)
    return server.process.returncode


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem of ``status`` (with a title); its body."""
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: expected {status}, "
        f"got {response.status_code}: {response.text}"
    )
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status, body
    assert isinstance(body["title"], str) and body["title"], body
    return body


def claims(subject: str, **changes: Any) -> dict[str, Any]:
    """Valid token claims for ``subject`` (a user; issuer and audience ``conveyor``, 10
    minutes); a change to ``None`` removes the claim."""
    now = int(time.time())
    found: dict[str, Any] = {
        "sub": subject,
        "name": "forged",
        "roles": ["user"],
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "iss": "conveyor",
        "aud": "conveyor",
    }
    for key, value in changes.items():
        if value is None:
            found.pop(key, None)
        else:
            found[key] = value
    return found
