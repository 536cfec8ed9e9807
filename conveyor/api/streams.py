"""Live streams: SSE on the events routes, single-use stream tickets, and WebSocket.

Credentials: ``Authorization: Bearer`` (any client), ``?ticket=`` from
``POST /stream-tickets`` (browsers' EventSource cannot set headers), or the dashboard's
session cookie (its pages' same-origin EventSource; the JSON routes stay bearer-only). A
long-lived JWT is never accepted in a URL. Every stream ends when its token expires or
after ``stream_max_lifetime_s``, so it never outlives its credentials by much.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
from fastapi import Request, WebSocket, WebSocketDisconnect
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.types import Message, Receive, Scope, Send

from conveyor.api.state import ApiState
from conveyor.auth.principal import Principal
from conveyor.domain.events import Event
from conveyor.engine.views import event_json
from conveyor.errors import AuthenticationError, ConveyorError, InvalidInputError
from conveyor.events.hub import EventHub, Subscription
from conveyor.events.stream import Finished, follow, open_subscription

log = logging.getLogger("conveyor.api.streams")
SSE_MEDIA = "text/event-stream"
RETRY_MS = 2000
#: the dashboard's session cookie (HttpOnly, SameSite=Strict): the JWT issued at sign-in
SESSION_COOKIE = "conveyor_session"
_MAX_TOKEN_CHARS = 8192
Replay = Callable[[int, int], Awaitable[list[Event]]]


def wants_sse(request: Request) -> bool:
    return SSE_MEDIA in request.headers.get("accept", "")


@dataclass(frozen=True, slots=True)
class StreamCaller:
    """Who opened a stream: a principal (bearer) or a ticket holder."""

    owner_id: str
    scope: str | None  # owner filter for reads (None: an admin)
    lifetime_s: float
    token: str | None = None  # re-checked while the stream lasts


async def stream_caller(request: Request, key: str, ticket: str | None) -> StreamCaller:
    """Who opens a stream: a bearer token, else a stream ticket, else the dashboard's
    session cookie (SameSite=Strict, so only the dashboard's own pages send it)."""
    state: ApiState = request.app.state.conveyor
    cap = state.settings.stream_max_lifetime_s
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return await _token_caller(state, header[7:].strip(), cap)
    if ticket:
        owner = await state.tickets.redeem(ticket, key)
        return StreamCaller(owner, owner, cap)
    cookie = request.cookies.get(SESSION_COOKIE, "").strip()
    if cookie:
        return await _token_caller(state, cookie, cap)
    raise AuthenticationError("missing bearer token or stream ticket")


async def _token_caller(state: ApiState, token: str, cap: float) -> StreamCaller:
    if not token or len(token) > _MAX_TOKEN_CHARS:
        raise AuthenticationError("invalid token")
    principal = await state.accounts.principal(token)
    expires_at = state.accounts.tokens.verify(token).expires_at
    return StreamCaller(principal.id, principal.scope, min(cap, expires_at - time.time()), token)


def last_event_id(request: Request, query_value: int | None) -> int:
    """Where a stream resumes: ``Last-Event-ID`` header, else ``?last_event_id=``."""
    header = request.headers.get("last-event-id")
    if header is not None:
        try:
            value = int(header)
        except ValueError:
            raise InvalidInputError("Last-Event-ID must be an event id (an integer)") from None
        if value < 0:
            raise InvalidInputError("Last-Event-ID must not be negative")
        return value
    return query_value or 0


def credentials_check(state: ApiState, token: str | None) -> Callable[[], Awaitable[bool]]:
    """Whether a stream's caller may still read: a user disabled or deleted meanwhile
    loses the stream at the next re-check (a ticket's owner was checked when it was
    redeemed, and the ticket's stream is short-lived)."""

    async def still_allowed() -> bool:
        if token is None:
            return True
        try:
            await state.accounts.principal(token)
        except ConveyorError:
            return False
        return True

    return still_allowed


def sse_response(
    state: ApiState,
    key: str,
    caller: StreamCaller,
    replay: Replay,
    after: int,
    finished: Finished | None = None,
) -> EventSourceResponse:
    subscription = open_subscription(state.hub, key, quota_owner=caller.owner_id)
    still_allowed = credentials_check(state, caller.token)

    async def frames() -> AsyncIterator[ServerSentEvent | bytes]:
        yield ServerSentEvent(comment="conveyor event stream", retry=RETRY_MS)
        async for batch in follow(
            state.hub,
            key,
            subscription,
            replay=replay,
            after=after,
            lifetime_s=caller.lifetime_s,
            finished=finished,
            still_allowed=still_allowed,
            recheck_s=state.settings.stream_recheck_s,
        ):
            yield state.sse_frames.frames(batch)

    return _EventStream(
        frames(),
        ping=15,
        send_timeout=state.settings.stream_send_timeout_s,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        # if the client goes away before the stream starts, free the subscription (on the
        # event loop: a sync function would run in a thread, beside the hub's delivery)
        background=BackgroundTask(_release, state.hub, subscription),
    )


async def _release(hub: EventHub, subscription: Subscription) -> None:
    hub.unsubscribe(subscription)


class _EventStream(EventSourceResponse):
    """An SSE response whose client may stop reading: once one write has waited
    ``send_timeout`` seconds the stream is cut off (the client resumes with
    ``Last-Event-ID``). That is routine, not a server error.

    sse-starlette bounds every write with a cancel scope and a timer of its own; with a
    thousand streams and ten events a second those cost much of the server's CPU, and
    their garbage drove the full collections behind the latency tail. Here each write
    only notes when it started, and one check per stream every ``send_timeout`` seconds
    cuts a write that is still waiting.
    """

    def __init__(self, *args: Any, send_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stall_limit_s = send_timeout
        self._sending_since: float | None = None
        self._cut: anyio.CancelScope | None = None
        self._check: asyncio.TimerHandle | None = None

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        self._sending_since = time.monotonic()
        try:
            await send(message)
        finally:
            self._sending_since = None

    def _check_stall(self) -> None:
        if self._cut is None:
            return
        now = time.monotonic()
        since = self._sending_since
        if since is not None and now - since >= self._stall_limit_s:
            self._cut.cancel()
            return
        next_at = (since if since is not None else now) + self._stall_limit_s
        self._check = asyncio.get_running_loop().call_later(next_at - now, self._check_stall)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with anyio.CancelScope() as cut:
            self._cut = cut
            self._check_stall()
            try:
                await super().__call__(scope, receive, send)
            finally:
                self._cut = None
                if self._check is not None:
                    self._check.cancel()
        if cut.cancel_called:
            log.info("cut off an SSE client that stopped reading")
            if self.background is not None:
                await self.background()  # frees the subscription if the stream never began


# -- WebSocket -------------------------------------------------------------------------------


async def websocket_session(websocket: WebSocket, state: ApiState) -> None:
    """``{"token": ...}`` first (or the dashboard's session cookie from a same-origin
    page); then ``{"subscribe": "execution:<id>", "after": n}`` and ``{"unsubscribe":
    ...}``; event frames carry their ``subscription``."""
    await websocket.accept()
    send_lock = asyncio.Lock()

    async def send(payload: dict[str, Any]) -> None:
        async with send_lock:
            await websocket.send_text(json.dumps(payload, separators=(",", ":")))

    try:
        token = _same_origin_cookie(websocket)
        if token is None:
            first = await asyncio.wait_for(websocket.receive_json(), 10)
            token = first.get("token") if isinstance(first, dict) else None
            if not isinstance(token, str):
                raise AuthenticationError('the first message must be {"token": "..."}')
        principal = await state.accounts.principal(token)
        expires_at = state.accounts.tokens.verify(token).expires_at
    except (TimeoutError, ConveyorError, ValueError, WebSocketDisconnect) as exc:
        message = exc.message if isinstance(exc, ConveyorError) else "authentication required"
        with contextlib.suppress(Exception):
            await send({"error": {"status": 401, "detail": message}})
            await websocket.close(code=4401)
        return
    lifetime = min(state.settings.stream_max_lifetime_s, expires_at - time.time())
    await send({"type": "welcome", "user": principal.username})
    tasks: dict[str, asyncio.Task[None]] = {}
    still_allowed = credentials_check(state, token)

    async def revoked() -> None:
        with contextlib.suppress(Exception):
            await websocket.close(code=4401, reason="credentials revoked")

    try:
        async with asyncio.timeout(max(lifetime, 0)):
            while True:
                message = await websocket.receive_json()
                if not isinstance(message, dict):
                    await send({"error": {"status": 422, "detail": "messages are JSON objects"}})
                    continue
                if "subscribe" in message:
                    key = message["subscribe"]
                    after = message.get("after", 0)
                    if not isinstance(key, str) or key in tasks:
                        await send({"error": {"status": 409, "subscription": key}})
                        continue
                    if not isinstance(after, int) or after < 0:
                        await send({"error": {"status": 422, "detail": "after must be >= 0"}})
                        continue
                    if key.startswith("queue:") and after == 0:
                        after = state.hub.last_id  # a queue's whole history is not replayed
                    try:
                        replay, owner_filter = await _authorize(state, principal, key)
                    except ConveyorError as exc:
                        status = 404 if exc.code == "not_found" else 422
                        await send(
                            {
                                "error": {
                                    "status": status,
                                    "subscription": key,
                                    "detail": exc.message,
                                }
                            }
                        )
                        continue
                    tasks[key] = asyncio.create_task(
                        _pump(
                            state,
                            key,
                            replay,
                            after,
                            principal,
                            owner_filter,
                            lifetime,
                            send,
                            still_allowed,
                            revoked,
                        )
                    )
                    await send({"type": "subscribed", "subscription": key})
                elif "unsubscribe" in message:
                    task = tasks.pop(str(message["unsubscribe"]), None)
                    if task is not None:
                        task.cancel()
                    await send({"type": "unsubscribed", "subscription": message["unsubscribe"]})
                else:
                    await send({"error": {"status": 422, "detail": "subscribe or unsubscribe"}})
    except TimeoutError:
        with contextlib.suppress(Exception):
            await websocket.close(code=4401, reason="credentials expired; reconnect")
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


def _same_origin_cookie(websocket: WebSocket) -> str | None:
    """The dashboard's session cookie, if this handshake came from the server's own
    pages. SameSite=Strict keeps the cookie off cross-site handshakes, not off other
    origins of the same site: the Origin must name this host, else the token message
    is required as for any other client."""
    cookie = websocket.cookies.get(SESSION_COOKIE, "").strip()
    origin = websocket.headers.get("origin")
    if not cookie or origin is None:
        return None
    host = websocket.headers.get("host", "")
    if urlsplit(origin).netloc != host:
        return None
    return cookie


async def _authorize(state: ApiState, principal: Principal, key: str) -> tuple[Replay, str | None]:
    """Check the caller may see ``key``; return how to replay it and the owner filter."""
    engine = state.engine
    kind, _, ident = key.partition(":")
    scope = principal.scope
    if kind == "execution":
        await engine.get_execution(ident, owner=scope)
        return (
            lambda after, n: engine.execution_events(ident, owner=scope, after_id=after, limit=n),
            None,
        )
    if kind == "job":
        await engine.get_job(ident, owner=scope)
        return (
            lambda after, n: engine.job_events(ident, owner=scope, after_id=after, limit=n),
            None,
        )
    if kind == "queue" and ident:
        await engine.queue_stats(ident)
        return (
            lambda after, n: engine.queue_events(ident, owner=scope, after_id=after, limit=n),
            scope,
        )
    raise InvalidInputError("subscribe to execution:<id>, job:<id> or queue:<name>")


async def _pump(
    state: ApiState,
    key: str,
    replay: Replay,
    after: int,
    principal: Principal,
    owner_filter: str | None,
    lifetime: float,
    send: Callable[[dict[str, Any]], Awaitable[None]],
    still_allowed: Callable[[], Awaitable[bool]],
    revoked: Callable[[], Awaitable[None]],
) -> None:
    last = after
    try:
        subscription = open_subscription(
            state.hub, key, quota_owner=principal.id, owner_filter=owner_filter
        )
        async for batch in follow(
            state.hub,
            key,
            subscription,
            replay=replay,
            after=after,
            lifetime_s=lifetime,
            still_allowed=still_allowed,
            recheck_s=state.settings.stream_recheck_s,
        ):
            for event in batch:
                last = event.id
                await send({"subscription": key, **event_json(event)})
        if not await still_allowed():
            # the whole session goes: its other subscriptions were authorised by the
            # same credentials
            await send({"error": {"status": 401, "subscription": key, "detail": "revoked"}})
            await revoked()
            return
        await send({"type": "ended", "subscription": key, "last_event_id": last})
    except ConveyorError as exc:
        await send({"error": {"status": 429, "subscription": key, "detail": exc.message}})
