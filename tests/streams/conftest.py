"""Live streams against real ``conveyor serve`` processes: servers, SSE reading, helpers.

Every server here gets a database of its own (a SQLite file, or a PostgreSQL database
created for it and dropped afterwards), so these servers never share data with the
module-scoped servers of ``tests/api`` (which truncate the shared test database).

SSE is read off the wire by :func:`sse_frames`, a parser written for the tests (not the
product's client), so ``retry:`` and comment lines are seen as sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.acceptance.conftest import CONVEYOR_BIN, Proc, Processes, process_env
from tests.servers import (
    API_APP,
    Server,
    backend_database,
    start_server,
    stop_server,
)

API = "/api/v1"
SSE = {"Accept": "text/event-stream"}
TERMINAL_STATUSES = ("completed", "failed", "cancelled")


# -- servers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def api_server(
    request: pytest.FixtureRequest,
    backend: str,
    tmp: Path,
    *,
    workers: int | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[Server]:
    with backend_database(request, backend, tmp, label="streams") as url:
        server = start_server(url, tmp, workers=workers, extra_env=extra_env)
        try:
            yield server
        finally:
            stop_server(server)


def server_log(server: Server) -> str:
    text_ = server.log.read_text(errors="replace")
    return text_ if len(text_) < 6000 else "...\n" + text_[-6000:]


def worker_process(
    procs: Processes,
    database_url: str,
    *,
    name: str,
    queues: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Proc:
    """``conveyor worker --app tests.apps.api_app:app`` in a process of its own."""
    args = [str(CONVEYOR_BIN), "worker", "--app", API_APP, "--concurrency", "2"]
    if queues is not None:
        args += ["--queues", queues]
    env = process_env(
        {"CONVEYOR_DATABASE_URL": database_url, "CONVEYOR_POLL_MAX_S": "0.2", **(extra_env or {})}
    )
    return procs.spawn(name, args, env)


@pytest.fixture(
    scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One server (with its embedded worker) per backend for the whole directory; tests
    create their own users, so they never see each other's data."""
    backend = str(request.param)
    with api_server(request, backend, tmp_path_factory.mktemp(f"streams-{backend}")) as running:
        yield running


# -- HTTP helpers -------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def async_client(server: Server, token: str | None = None) -> httpx.AsyncClient:
    headers = {} if token is None else bearer(token)
    return httpx.AsyncClient(base_url=server.base, headers=headers, timeout=10.0)


async def submit_job(client: httpx.AsyncClient, task: str, **body: Any) -> str:
    response = await client.post(f"{API}/jobs", json={"task": task, **body})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def start_execution(client: httpx.AsyncClient, workflow: str, **body: Any) -> str:
    response = await client.post(f"{API}/executions", json={"workflow": workflow, **body})
    assert response.status_code == 202, response.text
    execution_id: str = response.json()["id"]
    return execution_id


async def wait_status(
    client: httpx.AsyncClient,
    path: str,
    statuses: tuple[str, ...] = TERMINAL_STATUSES,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """GET ``path`` until its ``status`` is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(path)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["status"] in statuses:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never reached {statuses}: {body}")
        await asyncio.sleep(0.05)


def same_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events with ``created_at`` as a datetime: the JSON page writes UTC as ``Z`` and the
    streams as ``+00:00``; the instant must be the same, the spelling may differ."""
    return [{**e, "created_at": datetime.fromisoformat(e["created_at"])} for e in events]


def assert_same_events(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    if same_events(got) == same_events(want):
        return
    got_ids = [e["id"] for e in got]
    want_ids = [e["id"] for e in want]
    first = next(
        (i for i, (a, b) in enumerate(zip(got_ids, want_ids, strict=False)) if a != b),
        min(len(got_ids), len(want_ids)),
    )
    raise AssertionError(
        f"events differ: got {len(got)} (ids {got_ids[:3]}..{got_ids[-3:]}), expected "
        f"{len(want)} (ids {want_ids[:3]}..{want_ids[-3:]}); first difference at index "
        f"{first}: got {got[first] if first < len(got) else None}, expected "
        f"{want[first] if first < len(want) else None}; missing "
        f"{sorted(set(want_ids) - set(got_ids))[:20]}, extra "
        f"{sorted(set(got_ids) - set(want_ids))[:20]}, duplicates "
        f"{len(got_ids) - len(set(got_ids))}"
    )


async def event_log(client: httpx.AsyncClient, kind: str, ident: str) -> list[dict[str, Any]]:
    """Every event of an execution or a job, from the JSON pages (the reference)."""
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        response = await client.get(
            f"{API}/{kind}s/{ident}/events", params={"after": after, "limit": 100}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        found += page["items"]
        if page["next_cursor"] is None:
            return found
        after = int(page["next_cursor"])


def received_at_lag(event: dict[str, Any], received: float) -> float:
    """Seconds from the event's commit (``created_at``) to ``received`` (time.time())."""
    return received - datetime.fromisoformat(event["created_at"]).timestamp()


# -- reading SSE ----------------------------------------------------------------------------------


@dataclass
class Frame:
    """One SSE message block as sent (fields of one blank-line-terminated block)."""

    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    received: float = 0.0  # time.time() when its terminating blank line arrived

    @property
    def is_event(self) -> bool:
        return bool(self.data)

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads("\n".join(self.data))
        return body


async def sse_frames(lines: AsyncIterator[str]) -> AsyncIterator[Frame]:
    """Frames of an event stream, parsed per the SSE spec (unknown fields ignored)."""
    frame = Frame()
    seen = False
    async for line in lines:
        if line == "":
            if seen:
                frame.received = time.time()
                yield frame
            frame, seen = Frame(), False
            continue
        seen = True
        if line.startswith(":"):
            frame.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            frame.data.append(value)
        elif name == "id":
            frame.id = value
        elif name == "event":
            frame.event = value
        elif name == "retry":
            frame.retry = int(value)


@dataclass
class StreamRead:
    """What one SSE connection delivered."""

    status: int
    headers: httpx.Headers
    frames: list[Frame] = field(default_factory=list)
    ended: bool = False  # the server closed the stream (as opposed to us stopping)
    body: str = ""  # for error answers

    @property
    def events(self) -> list[dict[str, Any]]:
        return [f.json() for f in self.frames if f.is_event]

    def same_as(self, reference: list[dict[str, Any]]) -> bool:
        """Exactly these events, in this order (see :func:`same_events`); on a mismatch,
        fails with what differs."""
        assert_same_events(self.events, reference)
        return True

    @property
    def ids(self) -> list[int]:
        return [int(e["id"]) for e in self.events]


async def read_stream(
    client: httpx.AsyncClient,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    stop_after: int | None = None,
    timeout: float = 30.0,
) -> StreamRead:
    """GET ``path`` as an event stream and read it until the server ends it, or until
    ``stop_after`` events arrived (then the connection is dropped: a forced disconnect).
    Fails if neither happens within ``timeout`` seconds."""
    all_headers = {**SSE, **(headers or {})}
    try:
        async with (
            asyncio.timeout(timeout),
            client.stream("GET", path, headers=all_headers, params=params, timeout=None) as resp,
        ):
            read = StreamRead(resp.status_code, resp.headers)
            if resp.status_code != 200:
                read.body = (await resp.aread()).decode(errors="replace")
                return read
            count = 0
            async for frame in sse_frames(resp.aiter_lines()):
                read.frames.append(frame)
                if frame.is_event:
                    count += 1
                    if stop_after is not None and count >= stop_after:
                        return read  # leaving the block closes the connection
            read.ended = True
            return read
    except TimeoutError:
        raise AssertionError(f"the stream {path} did not end within {timeout}s") from None


def assert_frames_well_formed(read: StreamRead) -> None:
    """Each event frame names its id and type, and they match its JSON data."""
    for frame in read.frames:
        if not frame.is_event:
            continue
        event = frame.json()
        assert frame.id == str(event["id"]), (frame.id, event)
        assert frame.event == event["type"], (frame.event, event)


def assert_increasing(ids: list[int]) -> None:
    assert all(a < b for a, b in itertools.pairwise(ids)), f"not in order: {ids}"


def drain(
    sock: socket.socket, timeout: float, *, reset: str = "closed", until_end: bool = True
) -> tuple[bytes, str]:
    """Everything the server sends on a raw stream socket, and how it stopped:
    ``"closed"`` (FIN; a reset is reported as ``reset``), ``"ended"`` (the chunked body's
    last chunk arrived, if ``until_end``) or ``"open"`` (``timeout`` passed)."""
    sock.settimeout(0.5)
    received = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return bytes(received), reset
        if not data:
            return bytes(received), "closed"
        received += data
        if until_end and received.endswith(b"\r\n0\r\n\r\n"):
            return bytes(received), "ended"
    return bytes(received), "open"
