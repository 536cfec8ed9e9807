"""S9: SQL injection through filters, sort parameters and path segments.

User A owns real rows (queued ``echo`` jobs and a ``pipeline`` execution on the
``hardened`` server, both backends). Every filter of every list route, every path
parameter, and sort/order parameters (which the API does not have: they must be
ignored, not interpreted) get quotes, comments, stacked statements, UNION, LIKE
wildcards, JSON-path syntax, sleeps, NUL bytes and look-alikes. Every answer must be a
200 with zero rows or a 4xx — never a 5xx — and afterwards the tables still hold A's
rows. ``tests/api/test_auth.py::test_hostile_query_parameters`` covers ``status`` and
``task`` on ``GET /jobs`` only.
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

import httpx2 as httpx
from sqlalchemy import create_engine, func, select

from conveyor.store.schema import executions, jobs, users
from conveyor.store.url import sync_url
from tests.security.conftest import API, PROBLEM_JSON, client, figure, leaks, new_user
from tests.servers import Server

PAYLOADS = [
    "x' OR '1'='1",
    "x' OR 1=1 --",
    "'; DROP TABLE jobs; --",
    "a;DROP TABLE jobs",
    '" OR ""="',
    "' UNION SELECT id, password_hash FROM users --",
    "%",
    "_",
    "%echo%",
    "\\",
    "1) OR (1=1",
    "input->>'text'",
    "' || pg_sleep(3) || '",
    "x' AND randomblob(300000000) AND '1",
    "x\x00y",
    "\uff45\uff43\uff48\uff4f",  # full-width "echo"
    "ECHO",
    "echo ",
    '{"$gt": ""}',
]
FILTERS: dict[str, list[str]] = {
    f"{API}/jobs": ["task", "queue", "status", "created_after", "created_before"],
    f"{API}/executions": ["workflow", "status", "scope_type", "scope_id"],
    f"{API}/documents": ["scope_type", "scope_id", "type", "execution_id"],
    f"{API}/clarifications": ["status"],
    f"{API}/telemetry/summary": ["from", "to"],
}
PATHS = [
    f"{API}/jobs/{{}}",
    f"{API}/jobs/{{}}/events",
    f"{API}/executions/{{}}",
    f"{API}/executions/{{}}/steps",
    f"{API}/queues/{{}}",
    f"{API}/workflows/{{}}",
    f"{API}/workflows/pipeline/steps/{{}}/schema",
    f"{API}/documents/{{}}",
    f"{API}/telemetry/workflows/{{}}/stats",
]
SORTS = ["sort", "order", "order_by", "sort_by"]
SORT_PAYLOADS = [
    "created_at;DROP TABLE jobs",
    "if(1=1,id,task)",
    "(CASE WHEN 1=1 THEN id ELSE task END)",
    "id desc; --",
    "password_hash",
]


def counts(server: Server, owner: str) -> tuple[int, int, int]:
    engine = create_engine(sync_url(server.database_url))
    try:
        with engine.connect() as conn:
            return (
                conn.execute(
                    select(func.count()).select_from(jobs).where(jobs.c.owner == owner)
                ).scalar_one(),
                conn.execute(
                    select(func.count()).select_from(executions).where(executions.c.owner == owner)
                ).scalar_one(),
                conn.execute(select(func.count()).select_from(users)).scalar_one(),
            )
    finally:
        engine.dispose()


class Sweep:
    """Sends requests on fresh connections and tallies what came back."""

    def __init__(self, server: Server, token: str) -> None:
        # no keep-alive: a request that crashes the handler must not affect the next
        self.http = client(server, token, limits=httpx.Limits(max_keepalive_connections=0))
        self.sent = 0
        self.server_errors: list[str] = []
        self.rows_returned: list[str] = []
        self.leaked: list[str] = []
        self.slow: list[str] = []

    def get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response | None:
        self.sent += 1
        started = time.monotonic()
        try:
            response = self.http.get(path, params=params)
        except httpx.TransportError as exc:
            self.server_errors.append(f"{path} {params!r}: {type(exc).__name__}")
            return None
        where = f"GET {response.request.url.raw_path.decode(errors='replace')}"
        if time.monotonic() - started > 2.0:
            self.slow.append(f"{where}: {time.monotonic() - started:.1f}s")
        if response.status_code >= 500:
            self.server_errors.append(f"{where} -> {response.status_code}")
        elif response.status_code >= 400:
            assert response.headers["content-type"].startswith(PROBLEM_JSON), where
        if found := leaks(response.text):
            self.leaked.append(f"{where}: {found}")
        return response

    def expect_no_rows(self, path: str, params: dict[str, str]) -> None:
        response = self.get(path, params)
        if response is None or response.status_code != 200:
            return
        body: Any = response.json()
        items = body.get("items") if isinstance(body, dict) else None
        if items:
            self.rows_returned.append(f"{path} {params!r}: {len(items)} rows")


def test_injected_filters_never_match_rows_nor_fail(hardened: Server) -> None:
    owner, token = new_user(hardened)
    with client(hardened, token) as http:
        for text_ in ("alpha", "beta", "gamma"):
            created = http.post(f"{API}/jobs", json={"task": "echo", "input": {"text": text_}})
            assert created.status_code == 202, created.text
        started = http.post(f"{API}/executions", json={"workflow": "pipeline"})
        assert started.status_code == 202, started.text
        unfiltered = http.get(f"{API}/jobs", params={"limit": 100}).json()["items"]
    before = counts(hardened, owner)
    assert before[0] >= 3 and before[1] == 1, before

    sweep = Sweep(hardened, token)
    try:
        for path, names in FILTERS.items():
            for name in names:
                for payload in PAYLOADS:
                    sweep.expect_no_rows(path, {name: payload})
        for template in PATHS:
            for payload in PAYLOADS:
                sweep.get(template.format(urllib.parse.quote(payload, safe="")))
        # the API has no sort parameters: they are ignored, never interpreted
        for name in SORTS:
            for payload in SORT_PAYLOADS:
                response = sweep.get(f"{API}/jobs", {name: payload, "limit": "100"})
                if response is not None and response.status_code == 200:
                    assert response.json()["items"] == unfiltered, (name, payload)
    finally:
        sweep.http.close()
    after = counts(hardened, owner)
    with client(hardened, token) as http:
        still = http.get(f"{API}/jobs", params={"limit": 100}).json()["items"]
    figure(
        "S9",
        f"{sweep.sent} injected filters/paths/sorts: 5xx {len(sweep.server_errors)}, rows "
        f"returned for injected filters {len(sweep.rows_returned)}, responses leaking SQL or "
        f"traces {len(sweep.leaked)}, slower than 2 s {len(sweep.slow)}; rows before/after "
        f"(jobs, executions, users) {before}/{after} [{hardened.database_url.split(':')[0]}]",
    )
    if sweep.server_errors:
        print("  5xx:", *sweep.server_errors[:40], sep="\n    ")
    assert not sweep.server_errors, f"{len(sweep.server_errors)} answers were 5xx"
    assert not sweep.rows_returned, sweep.rows_returned
    assert not sweep.leaked, sweep.leaked
    assert not sweep.slow, sweep.slow
    assert after == before and still == unfiltered, "rows changed or disappeared"
