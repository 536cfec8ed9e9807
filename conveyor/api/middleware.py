"""ASGI middleware: body size cap, NUL guard, security headers, access log without secrets."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, ClassVar

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("conveyor.access")
#: query parameters whose values are shown in the access log; every other value (a token
#: sent by mistake, a ticket, an api key...) is replaced by *** before it is written
_LOGGED_PARAMS = frozenset(
    {
        "status",
        "task",
        "queue",
        "workflow",
        "limit",
        "cursor",
        "after",
        "scope_type",
        "created_after",
        "created_before",
        "type",
    }
)
_JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def scrub_query(query: str) -> str:
    """The query string with every value not known to be harmless replaced by ***."""
    parts = []
    for pair in query.split("&"):
        name, sep, value = pair.partition("=")
        shown = value if name in _LOGGED_PARAMS and not _JWT_SHAPED.search(value) else "***"
        parts.append(f"{name}{sep}{shown}" if sep else name)
    return "&".join(parts)


async def send_problem(
    send: Send, status: int, title: str, detail: str, *, close: bool = False
) -> None:
    """Answer with a problem+json body from a middleware (before any route ran);
    ``close`` ends the connection too (its request body is left unread)."""
    body = json.dumps(
        {"type": "about:blank", "title": title, "status": status, "detail": detail}
    ).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Answers 413 before the body is parsed (Starlette has no limit of its own), both for
    a declared Content-Length and for a chunked body that grows past the cap."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes or declared < 0:
                    await self._reject(send)
                    return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # an HTTPException passes through FastAPI's body reader (anything
                    # else would become a 400) and is rendered as problem+json
                    raise HTTPException(413, f"the request body exceeds {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)

    async def _reject(self, send: Send) -> None:
        detail = f"the request body exceeds {self.max_bytes} bytes"
        await send_problem(send, 413, "Request body too large", detail, close=True)


class NulGuard:
    """Answers 422 to a path or query string holding a NUL character: no filter or id
    can contain one, and PostgreSQL refuses it in text (a 500 if it got that far)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            query = scope.get("query_string", b"")
            if "\x00" in scope.get("path", "") or b"%00" in query or b"\x00" in query:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                detail = "the path or query holds a NUL character"
                await send_problem(send, 422, "Invalid request", detail)
                return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Conservative headers on every response (the dashboard adds its own CSP)."""

    HEADERS: ClassVar[list[tuple[bytes, bytes]]] = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
    ]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                existing = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.HEADERS if k not in existing]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


class AccessLog:
    """One line per request; query strings are logged with secrets scrubbed (uvicorn's
    own access log prints them whole, so it is turned off)."""

    def __init__(self, app: ASGIApp, metrics: Any = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            elapsed = time.perf_counter() - start
            query = scope.get("query_string", b"").decode("latin-1")
            path = scope.get("path", "")
            if query:
                path += "?" + scrub_query(query)
            client = scope.get("client") or ("-", 0)
            log.info(
                '%s "%s %s" %d %.1fms',
                client[0],
                scope.get("method", "-"),
                path,
                status,
                elapsed * 1000,
            )
            if self.metrics is not None:
                route = scope.get("route")
                template = getattr(route, "path", "unmatched")
                self.metrics.observe_request(scope.get("method", "-"), template, status, elapsed)
