"""``/api/v1/ws`` against a real ``conveyor serve`` with the ``websockets`` client.

The token comes in the first message (never in the URL); a subscription to a job or an
execution the caller does not own is a 404 like a missing one; a queue subscription only
carries the caller's own events; each subscription delivers its events in order and
ends at the terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.servers import Server
from tests.streams.conftest import (
    API,
    assert_increasing,
    assert_same_events,
    async_client,
    event_log,
    start_execution,
    submit_job,
    wait_status,
)

Message = dict[str, Any]


def ws_url(server: Server, query: str = "") -> str:
    return f"{server.base.replace('http://', 'ws://', 1)}{API}/ws{query}"


async def receive(ws: ClientConnection, timeout: float = 10.0) -> Message:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    message: Message = json.loads(raw)
    return message


async def receive_until(
    ws: ClientConnection, done: Callable[[Message], bool], timeout: float = 30.0
) -> list[Message]:
    """Every message up to and including the first for which ``done`` is true."""
    received: list[Message] = []
    async with asyncio.timeout(timeout):
        while True:
            message = await receive(ws, timeout)
            received.append(message)
            if done(message):
                return received


@contextlib.asynccontextmanager
async def session(server: Server, token: str) -> AsyncIterator[ClientConnection]:
    """A WebSocket signed in with ``{"token": ...}`` (the welcome is checked)."""
    async with connect(ws_url(server), proxy=None, open_timeout=10) as ws:
        await ws.send(json.dumps({"token": token}))
        welcome = await receive(ws)
        assert welcome.get("type") == "welcome", welcome
        yield ws


def events_of(messages: list[Message], key: str) -> list[Message]:
    """The event frames of one subscription, as the JSON log writes events."""
    return [
        {k: v for k, v in m.items() if k != "subscription"}
        for m in messages
        if m.get("subscription") == key and "id" in m and "type" in m
    ]


def ended(key: str) -> Callable[[Message], bool]:
    return lambda m: m.get("type") == "ended" and m.get("subscription") == key


async def test_a_subscription_delivers_the_event_log_in_order_and_ends(server: Server) -> None:
    _, token = server.new_user()
    async with async_client(server, token) as client, session(server, token) as ws:
        job = await submit_job(client, "ticker", input={"count": 25, "interval": 0.02})
        execution = await start_execution(client, "ticking")
        job_key, execution_key = f"job:{job}", f"execution:{execution}"
        await ws.send(json.dumps({"subscribe": job_key}))
        await ws.send(json.dumps({"subscribe": execution_key}))
        messages = await receive_until(ws, ended(job_key))
        if not any(ended(execution_key)(m) for m in messages):
            messages += await receive_until(ws, ended(execution_key))
        job_log = await event_log(client, "job", job)
        execution_log = await event_log(client, "execution", execution)

    acks = [m for m in messages if m.get("type") == "subscribed"]
    assert {m["subscription"] for m in acks} == {job_key, execution_key}
    for key, log in ((job_key, job_log), (execution_key, execution_log)):
        got = events_of(messages, key)
        assert_same_events(got, log)
        assert_increasing([e["id"] for e in got])
        end = next(m for m in messages if ended(key)(m))
        assert end["last_event_id"] == log[-1]["id"]
        # nothing of this subscription after its end
        position = messages.index(end)
        assert not [m for m in messages[position + 1 :] if m.get("subscription") == key]
    assert job_log[-1]["type"] == "job.completed"
    assert execution_log[-1]["type"] == "execution.completed"


async def test_resuming_after_an_event_id(server: Server) -> None:
    _, token = server.new_user()
    async with async_client(server, token) as client:
        job = await submit_job(client, "ticker", input={"count": 10, "interval": 0})
        await wait_status(client, f"{API}/jobs/{job}")
        log = await event_log(client, "job", job)
    middle = log[len(log) // 2]["id"]
    async with session(server, token) as ws:
        await ws.send(json.dumps({"subscribe": f"job:{job}", "after": middle}))
        messages = await receive_until(ws, ended(f"job:{job}"))
    assert_same_events(events_of(messages, f"job:{job}"), [e for e in log if e["id"] > middle])


async def test_subscriptions_to_another_users_work_are_404_like_missing_ones(
    server: Server,
) -> None:
    _, a_token = server.new_user()
    _, b_token = server.new_user()
    async with async_client(server, a_token) as a:
        job = await submit_job(a, "add", input={"a": 1, "b": 2})
        execution = await start_execution(a, "pipeline")
        await wait_status(a, f"{API}/jobs/{job}")
        await wait_status(a, f"{API}/executions/{execution}")
    async with session(server, b_token) as ws:
        answers: dict[str, Message] = {}
        for key in (
            f"job:{job}",
            f"execution:{execution}",
            f"job:{uuid.uuid4()}",
            f"execution:{uuid.uuid4()}",
        ):
            await ws.send(json.dumps({"subscribe": key}))
            answers[key] = await receive(ws)
        # the session is still usable, and none of A's events ever arrives
        await ws.send(json.dumps({"subscribe": f"job:{job}", "after": 0}))
        again = await receive(ws)
        stray: Message | None = None
        with contextlib.suppress(TimeoutError):
            stray = await receive(ws, timeout=1.0)
        assert stray is None, f"unexpected message after the refusals: {stray}"
    for key, answer in [*answers.items(), (f"job:{job}", again)]:
        assert "error" in answer, (key, answer)
        assert answer["error"]["status"] == 404, (key, answer)
        assert answer["error"]["subscription"] == key
    # A's ids are answered exactly like ids that do not exist (the id itself aside)
    for kind in ("job", "execution"):
        theirs, missing = (a for k, a in answers.items() if k.startswith(kind))
        assert theirs["error"]["detail"].replace(
            theirs["error"]["subscription"][len(kind) + 1 :], "?"
        ) == (
            missing["error"]["detail"].replace(
                missing["error"]["subscription"][len(kind) + 1 :], "?"
            )
        )


async def test_a_queue_subscription_carries_only_the_callers_events(server: Server) -> None:
    _, a_token = server.new_user()
    _, b_token = server.new_user()
    async with (
        async_client(server, a_token) as a,
        async_client(server, b_token) as b,
        session(server, b_token) as ws,
    ):
        # make sure the queue exists (a queue subscription needs a known queue)
        await wait_status(b, f"{API}/jobs/{await submit_job(b, 'add', input={'a': 0, 'b': 0})}")
        await ws.send(json.dumps({"subscribe": "queue:default"}))
        subscribed = await receive(ws)
        assert subscribed == {"type": "subscribed", "subscription": "queue:default"}
        a_jobs = [await submit_job(a, "add", input={"a": i, "b": i}) for i in range(3)]
        b_job = await submit_job(b, "ticker", input={"count": 3, "interval": 0})
        a_jobs.append(await submit_job(a, "ticker", input={"count": 3, "interval": 0}))
        messages = await receive_until(
            ws, lambda m: m.get("job_id") == b_job and m.get("type") == "job.completed"
        )
        for job in a_jobs:
            await wait_status(a, f"{API}/jobs/{job}")
        # whatever else arrives meanwhile is B's too
        with contextlib.suppress(TimeoutError):
            messages += await receive_until(ws, lambda m: False, timeout=1.0)
        b_log = await event_log(b, "job", b_job)
    seen_jobs = {m["job_id"] for m in events_of(messages, "queue:default")}
    assert b_job in seen_jobs
    assert not seen_jobs & set(a_jobs), "another user's events leaked into a queue stream"
    got = [e for e in events_of(messages, "queue:default") if e["job_id"] == b_job]
    assert_same_events(got, b_log)


async def test_the_token_comes_first_and_never_from_the_url(server: Server) -> None:
    _, token = server.new_user()
    async with async_client(server, token) as client:
        job = await submit_job(client, "add", input={"a": 1, "b": 1})
    attempts: list[tuple[str, Message]] = [
        ("", {"subscribe": f"job:{job}"}),  # no token message at all
        ("", {"token": "not-a-jwt"}),
        ("", {"token": token + "x"}),  # a bad signature
        ("", {"token": 12345}),
        (f"?token={token}", {"subscribe": f"job:{job}"}),  # a JWT in the URL
        (f"?access_token={token}", {"subscribe": f"job:{job}"}),
    ]
    for query, first in attempts:
        async with connect(ws_url(server, query), proxy=None, open_timeout=10) as ws:
            await ws.send(json.dumps(first))
            answer = await receive(ws)
            assert answer.get("error", {}).get("status") == 401, (query, first, answer)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4401, (query, first, closed.value)
    # a Bearer header does not replace the first message either
    async with connect(
        ws_url(server), proxy=None, additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        await ws.send(json.dumps({"subscribe": f"job:{job}"}))
        answer = await receive(ws)
        assert answer.get("error", {}).get("status") == 401, answer


async def test_the_dashboard_cookie_signs_in_same_origin_pages_only(server: Server) -> None:
    _, token = server.new_user()
    async with async_client(server, token) as client:
        job = await submit_job(client, "add", input={"a": 2, "b": 3})
        await wait_status(client, f"{API}/jobs/{job}")
        log = await event_log(client, "job", job)
    cookie = {"Cookie": f"conveyor_session={token}"}
    own_origin = {**cookie, "Origin": server.base}
    async with connect(ws_url(server), proxy=None, additional_headers=own_origin) as ws:
        welcome = await receive(ws)  # no token message: the cookie signed it in
        assert welcome.get("type") == "welcome", welcome
        await ws.send(json.dumps({"subscribe": f"job:{job}"}))
        messages = await receive_until(ws, lambda m: m.get("type") == "ended")
        assert_same_events(events_of(messages, f"job:{job}"), log)
    # another origin (or none: not a browser page) must send the token like anyone else
    for headers in ({**cookie, "Origin": "http://evil.example"}, cookie):
        async with connect(ws_url(server), proxy=None, additional_headers=headers) as ws:
            await ws.send(json.dumps({"subscribe": f"job:{job}"}))
            answer = await receive(ws)
            assert answer.get("error", {}).get("status") == 401, (headers, answer)


async def test_protocol_errors_keep_the_session(server: Server) -> None:
    _, token = server.new_user()
    async with async_client(server, token) as client:
        job = await submit_job(client, "sleepy", input={"seconds": 20})
        try:
            async with session(server, token) as ws:
                key = f"job:{job}"
                await ws.send(json.dumps({"subscribe": key}))
                first = await receive_until(ws, lambda m: m.get("type") == "subscribed")
                await ws.send(json.dumps({"subscribe": key}))  # twice
                duplicate = await receive_until(ws, lambda m: "error" in m)
                assert duplicate[-1]["error"]["status"] == 409, duplicate
                for bad in (
                    {"subscribe": f"job:{uuid.uuid4()}", "after": -1},
                    {"subscribe": f"job:{uuid.uuid4()}", "after": "3"},
                    {"subscribe": "jobs-everything"},
                    {"subscribe": "queue:"},
                    {"hello": "there"},
                ):
                    await ws.send(json.dumps(bad))
                    answer = await receive_until(ws, lambda m: "error" in m)
                    assert answer[-1]["error"]["status"] == 422, (bad, answer)
                await ws.send(json.dumps(["not", "an", "object"]))
                answer = await receive_until(ws, lambda m: "error" in m)
                assert answer[-1]["error"]["status"] == 422, answer
                await ws.send(json.dumps({"unsubscribe": key}))
                gone = await receive_until(ws, lambda m: m.get("type") == "unsubscribed")
                assert gone[-1]["subscription"] == key
                # after unsubscribing, that stream is silent while the job goes on
                await client.post(f"{API}/jobs/{job}/cancel")
                await wait_status(client, f"{API}/jobs/{job}")
                quiet_until = time.monotonic() + 1.0
                while time.monotonic() < quiet_until:
                    with contextlib.suppress(TimeoutError):
                        stray = await receive(ws, timeout=0.2)
                        assert stray.get("subscription") != key, stray
                assert first[-1] == {"type": "subscribed", "subscription": key}
        finally:
            await client.post(f"{API}/jobs/{job}/cancel")
