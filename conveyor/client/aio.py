"""The asyncio client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import httpx2 as httpx

from conveyor.client import calls
from conveyor.client.calls import TERMINAL, Call, Json
from conveyor.client.methods import Methods
from conveyor.client.sse import follow_events


class AsyncClient(Methods[Awaitable[Any]]):
    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, call: Call) -> Any:
        try:
            response = await self._http.request(
                call.method, call.path, params=call.params, json=call.json, headers=call.headers
            )
        except httpx.TransportError as exc:
            raise calls.unreachable(self.base_url, exc) from exc
        return calls.result(response)

    def _send(self, call: Call) -> Awaitable[Any]:
        return self._request(call)

    async def login(self, username: str, password: str) -> str:
        """Exchange credentials for a token and use it from now on."""
        body = await self._request(calls.token(username, password))
        token: str = body["access_token"]
        self._http.headers["Authorization"] = f"Bearer {token}"
        return token

    def follow(self, kind: str, ident: str, *, after: int = 0) -> AsyncIterator[Json]:
        """Live events of an ``execution`` or a ``job`` (SSE) until it finishes; the
        stream resumes by itself after a dropped connection."""
        return follow_events(self._http, kind, ident, after=after)

    async def wait(self, job_id: str, *, timeout: float = 300.0, poll: float = 0.2) -> Json:
        """Poll a job until it is completed, failed or cancelled."""
        return await self._wait(calls.get_job(job_id), timeout, poll)

    async def wait_execution(
        self, execution_id: str, *, timeout: float = 600.0, poll: float = 0.25
    ) -> Json:
        return await self._wait(calls.get_execution(execution_id), timeout, poll)

    async def _wait(self, call: Call, timeout: float, poll: float) -> Json:
        deadline = time.monotonic() + timeout
        while True:
            body: Json = await self._request(call)
            if body["status"] in TERMINAL:
                return body
            if time.monotonic() > deadline:
                raise TimeoutError(f"still {body['status']} after {timeout:.0f}s")
            await asyncio.sleep(poll)
