"""Server-Sent Events on the events routes, against real ``conveyor serve`` processes.

* order, completeness and the end of a stream: what an SSE client receives is exactly the
  JSON event log of the job or execution, in id order, and the server closes the stream
  right after the terminal event;
* resuming: after forced disconnects, ``Last-Event-ID`` (or ``?last_event_id=``) brings
  exactly the missed events (no gap, no duplicate), across the history/live seam;
* credentials: stream tickets are single-use, scoped to one stream and expire; a JWT in
  the URL is never accepted; another user's stream is a 404 like a missing one;
* the JSON page without ``Accept: text/event-stream``; ``Last-Event-ID`` garbage is a 422;
* across processes (``--workers 0`` API + ``conveyor worker`` processes, SQLite and
  PostgreSQL): events reach the API's SSE clients by cross-process hints, and by the
  hub's tail read when those hints are dropped (``CONVEYOR_FAULTS=drop_notify``);
* limits (the API-only server above has a 1 s send timeout and 2 streams per user): a
  stalled consumer is cut without affecting a healthy one; the per-user stream quota
  answers 429, and a closed stream gives its place back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import pytest
from sqlalchemy import create_engine, update

from conveyor.store.migrate import upgrade
from conveyor.store.schema import stream_tickets
from tests.acceptance.conftest import Proc, Processes
from tests.servers import (
    Server,
    assert_problem,
    backend_database,
    start_server,
    stop_server,
)
from tests.streams.conftest import (
    API,
    SSE,
    StreamRead,
    assert_frames_well_formed,
    assert_increasing,
    assert_same_events,
    async_client,
    bearer,
    drain,
    event_log,
    read_stream,
    received_at_lag,
    server_log,
    sse_frames,
    start_execution,
    submit_job,
    wait_status,
    worker_process,
)

# -- order, completeness, end -------------------------------------------------------------------


async def test_job_stream_is_the_event_log_in_order_and_ends_at_the_terminal_event(
    server: Server,
) -> None:
    _, token = server.new_user()
    async with async_client(server, token) as client:
        job = await submit_job(client, "ticker", input={"count": 30, "interval": 0.01})
        read = await read_stream(client, f"{API}/jobs/{job}/events")
        reference = await event_log(client, "job", job)

    assert read.status == 200, read.body
    assert read.headers["content-type"].startswith("text/event-stream"), read.headers
    assert read.headers["cache-control"] == "no-store"
    # the reconnection hint comes first, before any event
    assert read.frames[0].retry is not None, read.frames[0]
    assert read.frames[0].retry > 0
    assert not read.frames[0].is_event
    assert_frames_well_formed(read)
    assert read.ended, "the server must close the stream after the terminal event"
    assert read.same_as(reference)  # every event, once, in id order, as the JSON log
    assert_increasing(read.ids)
    progress = [e["data"]["message"] for e in read.events if e["type"] == "job.progress"]
    assert progress == [str(i) for i in range(30)]
    assert read.events[0]["type"] == "job.queued"
    assert read.events[-1]["type"] == "job.completed"
    last_event = max(i for i, f in enumerate(read.frames) if f.is_event)
    assert read.frames[last_event].event == "job.completed"
    assert not any(f.is_event for f in read.frames[last_event + 1 :])


async def test_execution_stream_carries_its_steps_and_ends_with_the_execution(
    server: Server,
) -> None:
    _, token = server.new_user()
    async with async_client(server, token) as client:
        execution = await start_execution(client, "ticking")
        read = await read_stream(client, f"{API}/executions/{execution}/events")
        reference = await event_log(client, "execution", execution)
        steps = (await client.get(f"{API}/executions/{execution}/steps")).json()

    assert read.status == 200, read.body
    assert read.ended
    assert_frames_well_formed(read)
    assert read.same_as(reference)
    assert_increasing(read.ids)
    step_jobs = {s["job_id"] for s in steps}
    assert {e["job_id"] for e in read.events if e["job_id"]} == step_jobs
    progress = [
        (e["step_id"], e["data"]["message"]) for e in read.events if "progress" in e["type"]
    ]
    assert progress == [("one", str(i)) for i in range(8)] + [("two", str(i)) for i in range(8)]
    assert read.events[-1]["type"] == "execution.completed"
    assert read.events[-1]["job_id"] is None


async def test_a_finished_job_replays_and_ends_at_once(server: Server) -> None:
    _, token = server.new_user()
    async with async_client(server, token) as client:
        job = await submit_job(client, "add", input={"a": 1, "b": 2})
        await wait_status(client, f"{API}/jobs/{job}")
        reference = await event_log(client, "job", job)
        started = time.monotonic()
        read = await read_stream(client, f"{API}/jobs/{job}/events", timeout=10)
    assert read.ended
    assert time.monotonic() - started < 5, "a finished stream must not wait for more"
    assert read.same_as(reference)
    assert read.events[-1]["type"] == "job.completed"


# -- resuming -----------------------------------------------------------------------------------


async def test_reconnecting_with_last_event_id_gets_exactly_the_missed_events(
    server: Server,
) -> None:
    """Drop the connection every few events while the job runs, wait a little (events
    keep coming meanwhile), and resume from the last id seen: the pieces put together are
    the event log, and the resumed pieces span both replayed and live events."""
    _, token = server.new_user()
    async with async_client(server, token) as client:
        job = await submit_job(client, "ticker", input={"count": 80, "interval": 0.03})
        path = f"{API}/jobs/{job}/events"
        pieces: list[StreamRead] = []
        replayed = live = 0
        last: int | None = None
        for attempt in range(100):
            headers: dict[str, str] = {}
            params: dict[str, Any] = {}
            if last is not None:
                if attempt % 4 == 3:  # clients that cannot set headers use the query
                    params["last_event_id"] = last
                else:
                    headers["Last-Event-ID"] = str(last)
            reconnected_at = time.time()
            piece = await read_stream(client, path, headers=headers, params=params, stop_after=7)
            assert piece.status == 200, piece.body
            if last is not None:
                for frame in piece.frames:
                    if frame.is_event:
                        committed = frame.received - received_at_lag(frame.json(), frame.received)
                        if committed < reconnected_at:
                            replayed += 1
                        else:
                            live += 1
            pieces.append(piece)
            if piece.ended:
                break
            last = piece.ids[-1]
            await asyncio.sleep(0.15)  # disconnected while the job goes on
        else:
            raise AssertionError("the stream never ended")
        reference = await event_log(client, "job", job)

    received = [e for piece in pieces for e in piece.events]
    ids = [int(e["id"]) for e in received]
    assert len(ids) == len(set(ids)), f"duplicates after resuming: {ids}"
    assert_same_events(received, reference)
    assert len(pieces) >= 5, "the job should have outlived several connections"
    assert replayed > 0, "no resumed connection replayed events committed while away"
    assert live > 0, "no resumed connection received live events"


async def test_resuming_after_the_terminal_event_ends_at_once(server: Server) -> None:
    """A client that resumes after it already has the terminal event (a browser's
    EventSource does so by itself when the server closes the stream) must not be left
    waiting: the answer is a 204 (which stops EventSource) or a stream that ends at once."""
    _, token = server.new_user()
    async with async_client(server, token) as client:
        job = await submit_job(client, "add", input={"a": 2, "b": 2})
        await wait_status(client, f"{API}/jobs/{job}")
        reference = await event_log(client, "job", job)
        middle = reference[len(reference) // 2]["id"]
        rest = await read_stream(
            client, f"{API}/jobs/{job}/events", headers={"Last-Event-ID": str(middle)}
        )
        assert rest.same_as([e for e in reference if e["id"] > middle])
        nothing = await read_stream(
            client,
            f"{API}/jobs/{job}/events",
            headers={"Last-Event-ID": str(reference[-1]["id"])},
            timeout=2,
        )
    assert nothing.status == 204 or (nothing.status == 200 and nothing.ended), nothing
    assert nothing.events == []


async def test_last_event_id_garbage_is_a_422_problem(server: Server) -> None:
    _, token = server.new_user()
    async with async_client(server, token) as client:
        job = await submit_job(client, "add", input={"a": 1, "b": 1})
        execution = await start_execution(client, "pipeline")
        for garbage in ("abc", "-1", "1.5", "12abc", "0x10", "1 2"):
            for path in (f"{API}/jobs/{job}/events", f"{API}/executions/{execution}/events"):
                response = await client.get(path, headers={**SSE, "Last-Event-ID": garbage})
                assert_problem(response, 422)
            response = await client.get(
                f"{API}/jobs/{job}/events", headers=SSE, params={"last_event_id": garbage}
            )
            assert_problem(response, 422)


# -- the JSON page --------------------------------------------------------------------------------


async def test_without_the_sse_accept_header_the_routes_return_the_json_page(
    server: Server,
) -> None:
    _, token = server.new_user()
    async with async_client(server, token) as client:
        job = await submit_job(client, "add", input={"a": 3, "b": 4})
        await wait_status(client, f"{API}/jobs/{job}")
        execution = await start_execution(client, "pipeline")
        await wait_status(client, f"{API}/executions/{execution}")
        for kind, ident in (("job", job), ("execution", execution)):
            reference = await event_log(client, kind, ident)
            assert reference[-1]["type"] == f"{kind}.completed"
            for accept in (None, "application/json", "*/*", "text/html"):
                headers = {} if accept is None else {"Accept": accept}
                response = await client.get(f"{API}/{kind}s/{ident}/events", headers=headers)
                assert response.status_code == 200, (accept, response.text)
                assert response.headers["content-type"].startswith("application/json"), accept
                page = response.json()
                assert set(page) == {"items", "next_cursor"}
                assert page["items"] == reference


# -- credentials -------------------------------------------------------------------------------


async def issue_ticket(client: httpx.AsyncClient, scope: str) -> str:
    response = await client.post(f"{API}/stream-tickets", json={"scope": scope})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["scope"] == scope
    assert body["token_type"] == "stream-ticket"
    assert 0 < body["expires_in"] <= 60
    ticket: str = body["ticket"]
    return ticket


def expire_ticket(database_url: str, ticket: str) -> None:
    """Make a ticket's minute run out: its expiry becomes its creation time."""
    url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})
    try:
        with engine.begin() as conn:
            done = conn.execute(
                update(stream_tickets)
                .where(stream_tickets.c.ticket_hash == hashlib.sha256(ticket.encode()).hexdigest())
                .values(expires_at=stream_tickets.c.created_at)
            )
            assert done.rowcount == 1, "the ticket is not in the stream_tickets table"
    finally:
        engine.dispose()


async def test_stream_tickets_are_single_use_scoped_and_expire(server: Server) -> None:
    _, token = server.new_user()
    async with async_client(server, token) as client, async_client(server) as anonymous:
        job = await submit_job(client, "add", input={"a": 5, "b": 5})
        other = await submit_job(client, "add", input={"a": 6, "b": 6})
        execution = await start_execution(client, "pipeline")
        for path in (f"{API}/jobs/{job}", f"{API}/jobs/{other}", f"{API}/executions/{execution}"):
            await wait_status(client, path)
        job_log = await event_log(client, "job", job)
        execution_log = await event_log(client, "execution", execution)

        # a ticket opens its stream once, without any other credential
        ticket = await issue_ticket(client, f"job:{job}")
        opened = await read_stream(anonymous, f"{API}/jobs/{job}/events", params={"ticket": ticket})
        assert opened.status == 200, opened.body
        assert opened.same_as(job_log)
        again = await anonymous.get(
            f"{API}/jobs/{job}/events", headers=SSE, params={"ticket": ticket}
        )
        assert_problem(again, 401)

        # scoped: not for another job, nor the execution route, nor the JSON page
        ticket = await issue_ticket(client, f"job:{job}")
        for path, headers in (
            (f"{API}/jobs/{other}/events", SSE),
            (f"{API}/executions/{execution}/events", SSE),
            (f"{API}/jobs/{job}/events", {"Accept": "application/json"}),
        ):
            refused = await anonymous.get(path, headers=headers, params={"ticket": ticket})
            assert_problem(refused, 401)
        # nor as a bearer token anywhere
        as_bearer = await anonymous.get(f"{API}/jobs/{job}", headers=bearer(ticket))
        assert_problem(as_bearer, 401)

        # an execution's ticket opens that execution's stream
        ticket = await issue_ticket(client, f"execution:{execution}")
        opened = await read_stream(
            anonymous, f"{API}/executions/{execution}/events", params={"ticket": ticket}
        )
        assert opened.status == 200, opened.body
        assert opened.same_as(execution_log)

        # an expired ticket is refused
        ticket = await issue_ticket(client, f"job:{job}")
        expire_ticket(server.database_url, ticket)
        late = await anonymous.get(
            f"{API}/jobs/{job}/events", headers=SSE, params={"ticket": ticket}
        )
        assert_problem(late, 401)

        # tickets only for streams: no queue or user scopes
        for scope in ("queue:default", f"user:{uuid.uuid4()}", f"job:{job}x", "job:"):
            response = await client.post(f"{API}/stream-tickets", json={"scope": scope})
            assert_problem(response, 422)


async def test_a_jwt_in_the_url_is_never_accepted(server: Server) -> None:
    _, token = server.new_user()
    async with async_client(server, token) as client, async_client(server) as anonymous:
        job = await submit_job(client, "add", input={"a": 1, "b": 9})
        execution = await start_execution(client, "pipeline")
        for path in (f"{API}/jobs/{job}/events", f"{API}/executions/{execution}/events"):
            for name in ("ticket", "token", "access_token", "jwt", "authorization", "bearer"):
                for headers in (SSE, {}):
                    response = await anonymous.get(path, headers=headers, params={name: token})
                    # 401 (no credentials), or 422 for a value no ticket can be
                    assert response.status_code in (401, 422), (name, response.status_code)
                    assert response.headers["content-type"].startswith(
                        "application/problem+json"
                    ), (name, response.headers)
                    assert token not in response.text


async def test_another_users_stream_is_a_404_like_a_missing_one(server: Server) -> None:
    _, a_token = server.new_user()
    _, b_token = server.new_user()
    async with async_client(server, a_token) as a, async_client(server, b_token) as b:
        job = await submit_job(a, "add", input={"a": 1, "b": 1})
        execution = await start_execution(a, "pipeline")
        missing = str(uuid.uuid4())
        for kind, ident in (("job", job), ("execution", execution)):
            theirs = await b.get(f"{API}/{kind}s/{ident}/events", headers=SSE)
            nowhere = await b.get(f"{API}/{kind}s/{missing}/events", headers=SSE)
            body_theirs = assert_problem(theirs, 404)
            body_nowhere = assert_problem(nowhere, 404)
            assert body_theirs["title"] == body_nowhere["title"]
            # with a resume point too, and for a ticket
            resumed = await b.get(
                f"{API}/{kind}s/{ident}/events", headers={**SSE, "Last-Event-ID": "1"}
            )
            assert_problem(resumed, 404)
            asked = await b.post(f"{API}/stream-tickets", json={"scope": f"{kind}:{ident}"})
            assert_problem(asked, 404)
        # B's own ticket does not open A's stream either
        own = await submit_job(b, "add", input={"a": 2, "b": 2})
        ticket = await issue_ticket(b, f"job:{own}")
        async with async_client(server) as anonymous:
            refused = await anonymous.get(
                f"{API}/jobs/{job}/events", headers=SSE, params={"ticket": ticket}
            )
            assert refused.status_code in (401, 404), refused.text
            no_credentials = await anonymous.get(f"{API}/jobs/{job}/events", headers=SSE)
            assert_problem(no_credentials, 401)


# -- across processes -------------------------------------------------------------------------

#: the API process's tail read interval: long, so that delivery by a hint and delivery
#: by the tail read can be told apart by how late an event arrives
SPLIT_POLL_S = 4.0
HINTED_MAX_LAG_S = 1.2
#: the same server has small stream limits for the tests at the end of this module (one
#: server start less; the tests before never open more than one stream per user)
LIMITS = {"CONVEYOR_STREAM_SEND_TIMEOUT_S": "1", "CONVEYOR_MAX_STREAMS_PER_USER": "2"}


@dataclass
class Split:
    api: Server
    hinted: str  # id of a worker process whose commits notify others (queue "default")
    silent: str  # id of a worker process whose notifications are dropped (queue "quiet")


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def split(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Split]:
    """An API-only server (``--workers 0``) and two worker processes on its database
    (migrated first, so that the three processes can start at the same time)."""
    backend = str(request.param)
    tmp = tmp_path_factory.mktemp(f"split-{backend}")
    env = {"CONVEYOR_EVENTS_POLL_S": str(SPLIT_POLL_S), **LIMITS}
    directory = tmp / "processes"
    directory.mkdir()
    procs = Processes(directory)
    with backend_database(request, backend, tmp, label="streams") as url:
        upgrade(url)
        try:
            hinted = worker_process(procs, url, name="hinted", queues="default")
            silent = worker_process(
                procs,
                url,
                name="silent",
                queues="quiet",
                extra_env={"CONVEYOR_FAULTS": "drop_notify"},
            )
            api = start_server(url, tmp, workers=0, extra_env=env)
            try:
                ids = wait_registered(api, [hinted, silent], procs)
                yield Split(api, ids[hinted.pid], ids[silent.pid])
            finally:
                stop_server(api)
        finally:
            procs.cleanup()
            print(procs.diagnostics())


def wait_registered(api: Server, workers: list[Proc], procs: Processes) -> dict[int, str]:
    """Wait until every worker process registered; their worker ids by pid."""
    deadline = time.monotonic() + 30
    with api.client(api.admin_token) as admin:
        while True:
            listed = admin.get(f"{API}/workers").json()["workers"]
            ids = {int(w["pid"]): str(w["worker_id"]) for w in listed}
            if all(w.pid in ids for w in workers):
                return ids
            if time.monotonic() > deadline or not all(w.alive() for w in workers):
                raise AssertionError(f"workers did not register: {ids}\n{procs.diagnostics()}")
            time.sleep(0.1)


async def follow_job_in_split(split: Split, queue: str) -> tuple[StreamRead, list[Any], str]:
    _, token = split.api.new_user()
    async with async_client(split.api, token) as client:
        job = await submit_job(client, "ticker", queue=queue, input={"count": 20, "interval": 0.1})
        read = await read_stream(client, f"{API}/jobs/{job}/events", timeout=40)
        reference = await event_log(client, "job", job)
        worker_id = str((await client.get(f"{API}/jobs/{job}")).json()["worker_id"])
    return read, reference, worker_id


def worker_lags(read: StreamRead) -> list[float]:
    """How late each event the worker process wrote reached the client."""
    return [
        received_at_lag(f.json(), f.received)
        for f in read.frames
        if f.is_event and f.event != "job.queued"  # job.queued is the API's own commit
    ]


async def test_events_of_a_worker_process_reach_the_api_clients(split: Split) -> None:
    read, reference, worker_id = await follow_job_in_split(split, "default")
    assert worker_id == split.hinted, "the job did not run in the worker process"
    assert read.ended
    assert read.same_as(reference)
    assert_increasing(read.ids)
    assert read.events[-1]["type"] == "job.completed"
    lags = worker_lags(read)
    # the tail read runs every 4 s: arriving this fast means the cross-process hint
    # (NOTIFY on PostgreSQL, a datagram on SQLite) woke the hub
    assert max(lags) < HINTED_MAX_LAG_S, f"events came late (by the tail read?): {lags}"


async def test_an_execution_run_by_a_worker_process_streams_to_the_end(split: Split) -> None:
    _, token = split.api.new_user()
    async with async_client(split.api, token) as client:
        execution = await start_execution(client, "ticking")
        read = await read_stream(client, f"{API}/executions/{execution}/events", timeout=40)
        reference = await event_log(client, "execution", execution)
    assert read.ended
    assert read.same_as(reference)
    assert read.events[-1]["type"] == "execution.completed"


async def test_lost_notifications_still_deliver_every_event(split: Split) -> None:
    read, reference, worker_id = await follow_job_in_split(split, "quiet")
    assert worker_id == split.silent, "the job did not run in the silent worker"
    assert read.ended, "the terminal event never arrived"
    assert read.same_as(reference)
    assert_increasing(read.ids)
    lags = worker_lags(read)
    # the proof that no hint carried them: some waited for the tail read (the job's events
    # span ~2 s and the tail read runs every 4 s, so one waited >= ~2 s)
    assert max(lags) > HINTED_MAX_LAG_S, f"events came too fast for a lost hint: {lags}"
    assert max(lags) < SPLIT_POLL_S + 3, f"the tail read is late: {lags}"


# -- limits: slow consumers and the stream quota ------------------------------------------------
# On the split server (``LIMITS``: a 1 s send timeout, 2 streams per user), SQLite only: the
# limits are the API process's, whatever the database.

sqlite_split = pytest.mark.parametrize("split", ["sqlite"], indirect=True)


@contextlib.contextmanager
def stalled_stream(server: Server, path: str, token: str) -> Iterator[socket.socket]:
    """A raw connection that asks for an event stream, then never reads."""
    host, port = server.base.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
    try:
        sock.connect((host, int(port)))
        sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
            ).encode()
        )
        yield sock
    finally:
        sock.close()


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """The payload of a chunked body (tolerating a cut in the middle of a chunk), and
    whether it ended properly (with the zero-length last chunk)."""
    out = bytearray()
    rest = body
    while rest:
        line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            break
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return bytes(out), True
        out += rest[:size]
        rest = rest[size + 2 :]
    return bytes(out), False


@dataclass
class Stall:
    """What happened when a stalled consumer and a healthy one streamed at once."""

    healthy: StreamRead  # the healthy client's stream
    healthy_log: list[dict[str, Any]]
    stalled_raw: bytes  # everything the stalled connection had been sent
    stalled_how: str  # "closed", "ended" or "open" (see drain)
    stalled_log: list[dict[str, Any]]
    ready: int  # /readyz afterwards
    alive: bool  # the server process afterwards
    server_log: str  # what the server logged meanwhile


async def stall_scenario(server: Server) -> Stall:
    _, slow_token = server.new_user()
    _, healthy_token = server.new_user()
    log_start = len(server.log.read_bytes())
    # ~6 MB of events: more than the kernel buffers a stalled connection (up to 4 MB of
    # send buffer on Linux), so the server's sends to it must block
    flood = {"count": 5000, "interval": 0.01, "size": 1000, "burst": 50}
    # the healthy client's job runs meanwhile (and for a while after the cut)
    steady = {"count": 100, "interval": 0.03, "size": 200}
    async with (
        async_client(server, slow_token) as slow,
        async_client(server, healthy_token) as healthy,
    ):
        slow_job = await submit_job(slow, "ticker", input=flood)
        healthy_job = await submit_job(healthy, "ticker", input=steady)
        with stalled_stream(server, f"{API}/jobs/{slow_job}/events", slow_token) as stalled:
            read = await read_stream(healthy, f"{API}/jobs/{healthy_job}/events", timeout=60)
            await wait_status(slow, f"{API}/jobs/{slow_job}")
            await asyncio.sleep(2)  # past the 1 s send timeout
            alive = server.process.poll() is None
            raw, how = await asyncio.to_thread(drain, stalled, 15)
        return Stall(
            healthy=read,
            healthy_log=await event_log(healthy, "job", healthy_job),
            stalled_raw=raw,
            stalled_how=how,
            stalled_log=await event_log(slow, "job", slow_job),
            ready=(await healthy.get("/readyz")).status_code,
            alive=alive and server.process.poll() is None,
            server_log=server.log.read_bytes()[log_start:].decode(errors="replace"),
        )


@pytest.fixture(scope="module")
def stall(split: Split) -> Stall:
    """The stalled-consumer scenario, run once for the tests below."""
    return asyncio.run(stall_scenario(split.api))


@sqlite_split
def test_a_stalled_consumer_is_cut_without_affecting_others(stall: Stall, split: Split) -> None:
    assert stall.alive, server_log(split.api)
    assert stall.ready == 200
    # the healthy client got everything, in order, on one connection
    assert stall.healthy.ended
    assert stall.healthy.same_as(stall.healthy_log)
    assert len(stall.healthy_log) == 100 + 3
    assert len(stall.stalled_log) == 5000 + 3
    # the stalled one was cut: closed (the send timed out) or ended early (it fell too far
    # behind), either way before its terminal event, with a prefix of its events
    head, _, body = stall.stalled_raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    assert b"transfer-encoding: chunked" in head.lower(), head[:400]
    payload, complete = dechunk(body)
    text_ = payload.decode(errors="replace")
    stalled_ids = [int(m) for m in re.findall(r"^id: (\d+)\r?$", text_, flags=re.MULTILINE)]
    assert stall.stalled_how in ("closed", "ended"), "the stalled stream was never cut"
    assert complete == (stall.stalled_how == "ended")
    assert "event: job.completed" not in text_, "the stalled consumer was never cut"
    assert stalled_ids, "nothing reached the stalled consumer before the cut"
    assert len(stalled_ids) < len(stall.stalled_log)
    assert stalled_ids == [e["id"] for e in stall.stalled_log[: len(stalled_ids)]]


@sqlite_split
def test_cutting_a_stalled_consumer_is_not_an_unhandled_error(stall: Stall) -> None:
    """Cutting a consumer that stopped reading is the designed behaviour: it must not be
    logged as an unhandled error with a traceback (one per slow client)."""
    for phrase in ("unhandled error", "Exception in ASGI application"):
        at = stall.server_log.find(phrase)
        assert at < 0, f"the server logged:\n{stall.server_log[max(0, at - 300) : at + 2500]}"


@contextlib.asynccontextmanager
async def open_stream(client: httpx.AsyncClient, path: str) -> AsyncIterator[StreamRead]:
    """An SSE connection held open: yields once its first event arrived (so the server
    has subscribed it), or at once for an error answer."""
    async with client.stream("GET", path, headers=SSE, timeout=None) as response:
        read = StreamRead(response.status_code, response.headers)
        if response.status_code != 200:
            read.body = (await response.aread()).decode(errors="replace")
            yield read
            return
        frames = sse_frames(response.aiter_lines())
        async with asyncio.timeout(10):
            async for frame in frames:
                read.frames.append(frame)
                if frame.is_event:
                    break
        yield read


@sqlite_split
async def test_the_per_user_stream_quota_is_a_429(split: Split) -> None:
    server = split.api
    _, token = server.new_user()
    _, other_token = server.new_user()
    async with async_client(server, token) as client, async_client(server, other_token) as other:
        job = await submit_job(client, "sleepy", input={"seconds": 20})
        other_job = await submit_job(other, "sleepy", input={"seconds": 20})
        path = f"{API}/jobs/{job}/events"
        try:
            async with open_stream(client, path) as first, open_stream(client, path) as second:
                assert first.status == second.status == 200
                assert first.events and second.events
                # another user is not limited by this one's streams
                async with open_stream(other, f"{API}/jobs/{other_job}/events") as others:
                    assert others.status == 200 and others.events, others.body
                # a third stream of the same user is refused before it starts
                async with client.stream("GET", path, headers=SSE, timeout=10) as response:
                    assert response.status_code == 429, (
                        f"a stream over the quota got {response.status_code} "
                        f"({response.headers.get('content-type')})"
                    )
                    await response.aread()
                body = assert_problem(response, 429)
                assert "stream" in body["detail"]
                assert int(response.headers["retry-after"]) > 0
        finally:
            await client.post(f"{API}/jobs/{job}/cancel")
            await other.post(f"{API}/jobs/{other_job}/cancel")


async def open_within_quota(client: httpx.AsyncClient, path: str, wait: float = 5.0) -> None:
    """Open a stream that delivers an event and close it; the server may need a moment
    to notice that the previous one was closed, so try again for up to ``wait`` s."""
    deadline = time.monotonic() + wait
    while True:
        try:
            async with open_stream(client, path) as opened:
                if opened.status == 200 and opened.events:
                    return
                failure = f"{opened.status} {opened.body} {opened.frames}"
        except (TimeoutError, httpx.TransportError) as exc:
            failure = repr(exc)
        if time.monotonic() > deadline:
            raise AssertionError(f"a stream within the quota did not open: {failure}")
        await asyncio.sleep(0.2)


@sqlite_split
async def test_closing_a_stream_gives_its_quota_back(split: Split) -> None:
    server = split.api
    _, token = server.new_user()
    async with async_client(server, token) as client:
        job = await submit_job(client, "sleepy", input={"seconds": 20})
        path = f"{API}/jobs/{job}/events"
        try:
            async with open_stream(client, path) as kept:
                assert kept.status == 200 and kept.events
                for _ in range(3):  # open and close, more times than the quota
                    await open_within_quota(client, path)
        finally:
            await client.post(f"{API}/jobs/{job}/cancel")
