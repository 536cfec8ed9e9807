"""S13: a stream never outlives its credentials by more than the documented cap.

* **token expiry** (``app_server``: RS256, no leeway): an SSE stream opened with a token
  that expires in 3 s ends when it expires, delivers nothing after, and a reconnect with
  the expired token is a 401 while one with fresh credentials resumes;
* **revocation** (``app_server``: streams re-check their caller every 1 s; principals are
  cached 5 s): the user is disabled in the database mid-stream; the SSE stream ends within
  re-check + cache, and a reconnect is a 401. The same for a WebSocket subscription;
* **maximum lifetime** (``hardened``: ``CONVEYOR_STREAM_MAX_LIFETIME_S=2``): a stream on a
  job that never finishes ends at the cap even though its token is valid for an hour, and
  resuming with ``Last-Event-ID`` repeats nothing.

Events are timed as they arrive (``Frame.received``), so "delivered after" is measured on
the client, which is what matters.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine, update
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conveyor.store.schema import users
from conveyor.store.url import sync_url
from tests.security.conftest import (
    API,
    SSE,
    STREAM_MAX_LIFETIME_S,
    STREAM_RECHECK_S,
    KeyPair,
    async_client,
    figure,
    new_user,
    signed_token,
)
from tests.servers import Server, claims
from tests.streams.conftest import Frame, sse_frames

#: principals are cached this long by the server (conveyor.auth.users._PRINCIPAL_CACHE_S)
PRINCIPAL_CACHE_S = 5.0
#: scheduling slack on a loaded test machine
SLACK_S = 1.5


@dataclass
class Watched:
    """One SSE connection, read in the background."""

    status: int = 0
    frames: list[Frame] = field(default_factory=list)
    ended_at: float | None = None  # time.time() when the server closed the stream
    body: str = ""

    @property
    def events(self) -> list[Frame]:
        return [f for f in self.frames if f.is_event]

    def after(self, moment: float) -> list[Frame]:
        return [f for f in self.events if f.received > moment]


async def watch(
    server: Server, token: str, path: str, into: Watched, headers: dict[str, str] | None = None
) -> None:
    async with (
        async_client(server, token) as http,
        http.stream("GET", path, headers={**SSE, **(headers or {})}, timeout=None) as response,
    ):
        into.status = response.status_code
        if response.status_code != 200:
            into.body = (await response.aread()).decode(errors="replace")
            return
        async for frame in sse_frames(response.aiter_lines()):
            into.frames.append(frame)
    into.ended_at = time.time()


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(0.02)


async def submit(server: Server, token: str, task: str, **input_: Any) -> str:
    async with async_client(server, token) as http:
        response = await http.post(f"{API}/jobs", json={"task": task, "input": input_})
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
    return job_id


async def cancel(server: Server, job_id: str) -> None:
    async with async_client(server, server.admin_token) as admin:
        await admin.post(f"{API}/jobs/{job_id}/cancel")


def set_disabled(server: Server, user_id: str) -> None:
    engine = create_engine(sync_url(server.database_url))
    try:
        with engine.begin() as conn:
            conn.execute(update(users).where(users.c.id == user_id).values(disabled=True))
    finally:
        engine.dispose()


def backend(server: Server) -> str:
    return server.database_url.split(":")[0]


async def test_a_stream_ends_when_its_token_expires(
    app_sqlite: Server, server_keys: KeyPair
) -> None:
    app_server = app_sqlite
    user_id, fresh = new_user(app_server)
    job = await submit(app_server, fresh, "ticker", count=400, interval=0.05)
    expires = int(time.time()) + 3
    short = signed_token(server_keys.private, claims(user_id, exp=expires))
    path = f"{API}/jobs/{job}/events"
    try:
        read = Watched()
        await asyncio.wait_for(watch(app_server, short, path, read), 3 + 10)
        assert read.status == 200, read.body
        assert read.ended_at is not None
        late = read.after(expires + 0.2)
        async with async_client(app_server, short) as http:
            again = await http.get(path, headers=SSE)
        # fresh credentials resume where the expired stream stopped
        resumed = Watched()
        last_id = read.events[-1].id or "0"
        task = asyncio.create_task(
            watch(app_server, fresh, path, resumed, headers={"Last-Event-ID": last_id})
        )
        await wait_for(lambda: len(resumed.events) >= 3, 10, "resumed events")
        task.cancel()
    finally:
        await cancel(app_server, job)
    figure(
        "S13",
        f"token expiry: stream ended {read.ended_at - expires:+.2f}s from exp; events "
        f"delivered after exp {len(late)} (of {len(read.events)}); reconnect with the "
        f"expired token {again.status_code}; with fresh credentials {resumed.status} "
        f"[{backend(app_server)}]",
    )
    assert read.events, "the stream delivered nothing before the token expired"
    assert read.ended_at <= expires + SLACK_S, f"ended {read.ended_at - expires:.2f}s after exp"
    assert not late, f"{len(late)} events arrived after the token expired"
    assert again.status_code == 401, again.text
    assert resumed.status == 200
    assert int(resumed.events[0].id or 0) > int(last_id), "the resumed stream repeated events"


@dataclass
class CutStream:
    """An SSE stream on a busy job, cut by revoking its caller mid-stream."""

    read: Watched
    revoked_at: float  # time.time() right after the revocation
    reconnect_status: int  # the same token, after the stream ended
    reconnect_body: str


async def stream_until_revoked(
    server: Server, token: str, revoke: Callable[[], Awaitable[None]], wait_s: float
) -> CutStream:
    """Open a stream with ``token``, ``revoke()`` once it delivers, wait up to ``wait_s``
    for the server to end it, then reconnect with the same token."""
    job = await submit(server, token, "ticker", count=400, interval=0.05)
    path = f"{API}/jobs/{job}/events"
    read = Watched()
    task = asyncio.create_task(watch(server, token, path, read))
    try:
        await wait_for(lambda: len(read.events) >= 5, 15, "the first events")
        await revoke()
        revoked_at = time.time()
        await asyncio.wait_for(task, wait_s)
        async with async_client(server, token) as http:
            again = await http.get(path, headers=SSE)
    finally:
        task.cancel()
        await cancel(server, job)
    assert read.status == 200, read.body
    assert read.ended_at is not None
    return CutStream(read, revoked_at, again.status_code, again.text)


async def test_a_revoked_users_stream_ends_within_the_recheck_cap(app_sqlite: Server) -> None:
    app_server = app_sqlite
    user_id, token = new_user(app_server)
    cap = STREAM_RECHECK_S + PRINCIPAL_CACHE_S

    async def disable() -> None:
        await asyncio.to_thread(set_disabled, app_server, user_id)

    cut = await stream_until_revoked(app_server, token, disable, cap + 10)
    read, revoked = cut.read, cut.revoked_at
    assert read.ended_at is not None
    after = read.after(revoked)
    beyond = read.after(revoked + cap + SLACK_S)
    figure(
        "S13",
        f"revocation (re-check {STREAM_RECHECK_S:g}s + principal cache "
        f"{PRINCIPAL_CACHE_S:g}s = cap {cap:g}s): SSE ended {read.ended_at - revoked:.2f}s "
        f"after; events after revocation {len(after)}, beyond the cap {len(beyond)}; "
        f"reconnect {cut.reconnect_status} [{backend(app_server)}]",
    )
    assert read.ended_at - revoked <= cap + SLACK_S, "the stream outlived the revocation cap"
    assert not beyond, f"{len(beyond)} events were delivered beyond the cap"
    assert cut.reconnect_status == 401, cut.reconnect_body


async def test_a_signed_out_tokens_stream_ends_within_the_recheck(app_sqlite: Server) -> None:
    """Signing out revokes the token on this replica at once: its open stream ends at the
    next re-check (the user's other tokens stay valid: tests/api/test_auth.py)."""
    app_server = app_sqlite
    _, token = new_user(app_server)

    async def sign_out() -> None:
        async with async_client(app_server, token) as http:
            out = await http.post(f"{API}/auth/logout")
        assert out.status_code == 204, out.text

    cut = await stream_until_revoked(app_server, token, sign_out, STREAM_RECHECK_S + 10)
    read, signed_out = cut.read, cut.revoked_at
    assert read.ended_at is not None
    beyond = read.after(signed_out + STREAM_RECHECK_S + SLACK_S)
    figure(
        "S13",
        f"sign-out: SSE ended {read.ended_at - signed_out:.2f}s after (re-check "
        f"{STREAM_RECHECK_S:g}s); events beyond it {len(beyond)}; reconnect "
        f"{cut.reconnect_status} [{backend(app_server)}]",
    )
    assert read.ended_at - signed_out <= STREAM_RECHECK_S + SLACK_S
    assert not beyond, f"{len(beyond)} events were delivered after the sign-out"
    assert cut.reconnect_status == 401, cut.reconnect_body


async def test_a_revoked_users_websocket_subscription_ends_within_the_recheck_cap(
    app_sqlite: Server,
) -> None:
    """The WebSocket is a stream too: ``stream_recheck_s`` ("how often a stream re-checks
    its caller") and "a disabled user loses access quickly even with a valid token"
    (``Accounts.principal``) apply to it as to SSE."""
    app_server = app_sqlite
    user_id, token = new_user(app_server)
    job = await submit(app_server, token, "ticker", count=300, interval=0.05)
    cap = STREAM_RECHECK_S + PRINCIPAL_CACHE_S
    ws_url = f"{app_server.base.replace('http://', 'ws://', 1)}{API}/ws"
    received: list[tuple[float, dict[str, Any]]] = []
    revoked: float | None = None
    closed_at: float | None = None
    try:
        async with connect(ws_url, proxy=None, open_timeout=10) as ws:
            await ws.send(json.dumps({"token": token}))
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert welcome.get("type") == "welcome", welcome
            await ws.send(json.dumps({"subscribe": f"job:{job}"}))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    raw = await asyncio.wait_for(ws.recv(), 1.0)
                except TimeoutError:
                    continue
                message = json.loads(raw)
                received.append((time.time(), message))
                events = [m for _, m in received if "id" in m and "type" in m]
                if revoked is None and len(events) >= 5:
                    await asyncio.to_thread(set_disabled, app_server, user_id)
                    revoked = time.time()
                if message.get("type") == "ended" or "error" in message:
                    closed_at = time.time()
                    break
                if revoked is not None and time.time() > revoked + cap + 2 * SLACK_S:
                    break  # long past the cap: enough to count what leaked
    except ConnectionClosed:
        closed_at = time.time()
    finally:
        await cancel(app_server, job)
    assert revoked is not None, f"no events arrived: {received[:5]}"
    events_after = [t for t, m in received if "id" in m and "type" in m and t > revoked]
    beyond = [t for t in events_after if t > revoked + cap + SLACK_S]
    ended = "not" if closed_at is None else f"{closed_at - revoked:.2f}s after revocation"
    figure(
        "S13",
        f"revocation, WebSocket: subscription ended {ended} (watched for "
        f"{cap + 2 * SLACK_S:g}s); "
        f"events after revocation {len(events_after)}, beyond the {cap:g}s cap {len(beyond)} "
        f"[{backend(app_server)}]",
    )
    assert not beyond, (
        f"{len(beyond)} events reached a disabled user over the WebSocket beyond the {cap:g}s cap"
    )


async def test_a_stream_ends_at_its_maximum_lifetime(hardened_sqlite: Server) -> None:
    hardened = hardened_sqlite
    _, token = new_user(hardened)
    job = await submit(hardened, token, "echo", text="never runs (no workers)")
    path = f"{API}/jobs/{job}/events"
    durations = []
    seen: list[str] = []
    last = "0"
    try:
        for _ in range(2):
            read = Watched()
            opened = time.time()
            await asyncio.wait_for(
                watch(hardened, token, path, read, headers={"Last-Event-ID": last}),
                STREAM_MAX_LIFETIME_S + 10,
            )
            assert read.status == 200, read.body
            assert read.ended_at is not None
            durations.append(read.ended_at - opened)
            seen += [f.id or "" for f in read.events]
            last = seen[-1] if seen else last
    finally:
        async with async_client(hardened, token) as http:
            await http.post(f"{API}/jobs/{job}/cancel")
    figure(
        "S13",
        f"max lifetime {STREAM_MAX_LIFETIME_S:g}s: streams ended after "
        f"{', '.join(f'{d:.2f}s' for d in durations)} on a job that never ends; "
        f"events repeated on resume {len(seen) - len(set(seen))} [{backend(hardened)}]",
    )
    assert seen, "the stream replayed nothing"
    assert len(seen) == len(set(seen)), f"resuming repeated events: {seen}"
    for duration in durations:
        assert STREAM_MAX_LIFETIME_S - 0.5 <= duration <= STREAM_MAX_LIFETIME_S + SLACK_S, durations
