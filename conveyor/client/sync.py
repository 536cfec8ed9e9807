"""The blocking client."""

from __future__ import annotations

import time
from typing import Any

import httpx2 as httpx

from conveyor.client import calls
from conveyor.client.calls import TERMINAL, Call, Json
from conveyor.client.methods import Methods


class Client(Methods[Any]):
    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call) -> Any:
        try:
            response = self._http.request(
                call.method, call.path, params=call.params, json=call.json, headers=call.headers
            )
        except httpx.TransportError as exc:
            raise calls.unreachable(self.base_url, exc) from exc
        return calls.result(response)

    def login(self, username: str, password: str) -> str:
        """Exchange credentials for a token and use it from now on."""
        token: str = self._send(calls.token(username, password))["access_token"]
        self._http.headers["Authorization"] = f"Bearer {token}"
        return token

    def wait(self, job_id: str, *, timeout: float = 300.0, poll: float = 0.2) -> Json:
        """Poll a job until it is completed, failed or cancelled."""
        return self._wait(calls.get_job(job_id), timeout, poll)

    def wait_execution(
        self, execution_id: str, *, timeout: float = 600.0, poll: float = 0.25
    ) -> Json:
        return self._wait(calls.get_execution(execution_id), timeout, poll)

    def _wait(self, call: Call, timeout: float, poll: float) -> Json:
        deadline = time.monotonic() + timeout
        while True:
            body: Json = self._send(call)
            if body["status"] in TERMINAL:
                return body
            if time.monotonic() > deadline:
                raise TimeoutError(f"still {body['status']} after {timeout:.0f}s")
            time.sleep(poll)
