"""S7 (OWASP API4): unbounded resource consumption, on the ``hardened`` server.

``hardened`` runs with ``--workers 0`` (jobs stay queued) and a cap of
``WAITING_CAP`` waiting jobs per user. Covered elsewhere, not repeated here:
``limit=1000000`` on ``GET /jobs`` and 1 MiB / chunked bodies (tests/api/test_auth.py),
the per-user SSE stream quota (tests/streams/test_sse.py::
test_the_per_user_stream_quota_is_a_429 and test_closing_a_stream_gives_its_quota_back).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx

from tests.security.conftest import (
    API,
    WAITING_CAP,
    async_client,
    client,
    figure,
    new_user,
    process_memory_kib,
)
from tests.servers import Server, assert_problem

MiB = 1024 * 1024
#: how much the server's peak RSS may grow while refusing a 50 MB body
RSS_BUDGET_KIB = 8 * 1024


def backend(server: Server) -> str:
    return server.database_url.split(":")[0]


def test_every_list_route_caps_its_page_size(hardened_sqlite: Server) -> None:
    _, token = new_user(hardened_sqlite)
    with client(hardened_sqlite, token) as http:
        job = http.post(f"{API}/jobs", json={"task": "echo", "input": {}}).json()["id"]
        execution = http.post(f"{API}/executions", json={"workflow": "pipeline"}).json()["id"]
        routes = [
            f"{API}/jobs",
            f"{API}/jobs/{job}/events",
            f"{API}/executions",
            f"{API}/executions/{execution}/events",
            f"{API}/clarifications",
            f"{API}/documents",
        ]
        refused = 0
        for path in routes:
            for limit in (1_000_000, 101, 0, -1, 2**63):
                assert_problem(http.get(path, params={"limit": limit}), 422)
                refused += 1
            assert http.get(path, params={"limit": 100}).status_code == 200, path
    figure(
        "S7",
        f"page size: {refused}/{refused} oversized limits refused with 422 on "
        f"{len(routes)} list routes (max 100 accepted) [{backend(hardened_sqlite)}]",
    )


def test_a_50mb_body_is_refused_before_it_is_read(hardened_sqlite: Server) -> None:
    _, token = new_user(hardened_sqlite)
    pid = hardened_sqlite.process.pid
    body = b'{"task": "echo", "input": {"text": "' + b"x" * (50 * MiB) + b'"}}'
    before = process_memory_kib(pid)
    outcomes: dict[str, str] = {}
    with client(hardened_sqlite, token) as http, client(hardened_sqlite) as anonymous:
        for name, sender in (("authenticated", http), ("anonymous", anonymous)):
            started = time.monotonic()
            response = sender.post(
                f"{API}/jobs", content=body, headers={"content-type": "application/json"}
            )
            outcomes[name] = f"{response.status_code} in {time.monotonic() - started:.2f}s"
            assert_problem(response, 413)

        def chunks() -> Iterator[bytes]:
            yield b'{"task": "echo", "input": {"text": "'
            for _ in range(50):
                yield b"x" * MiB
            yield b'"}}'

        started = time.monotonic()
        try:
            chunked = http.post(
                f"{API}/jobs", content=chunks(), headers={"content-type": "application/json"}
            )
            outcomes["chunked"] = f"{chunked.status_code} in {time.monotonic() - started:.2f}s"
            assert_problem(chunked, 413)
        except httpx.TransportError as exc:  # the server may hang up mid-upload: also a refusal
            outcomes["chunked"] = f"connection closed ({type(exc).__name__})"
        listed = http.get(f"{API}/jobs").json()["items"]
    after = process_memory_kib(pid)
    peak_growth = after["VmHWM"] - before["VmHWM"]
    figure(
        "S7",
        f"50 MB body: {outcomes}; server peak RSS {before['VmHWM'] // 1024} -> "
        f"{after['VmHWM'] // 1024} MiB (+{peak_growth} KiB), RSS {before['VmRSS'] // 1024} -> "
        f"{after['VmRSS'] // 1024} MiB [{backend(hardened_sqlite)}]",
    )
    assert listed == [], "a refused body created a job"
    assert peak_growth < RSS_BUDGET_KIB, f"the server's peak RSS grew by {peak_growth} KiB"


def test_a_10k_step_workflow_is_refused(hardened_sqlite: Server) -> None:
    _, token = new_user(hardened_sqlite)
    steps = [{"id": f"s{i}", "task": "echo"} for i in range(10_000)]
    chained = [
        {"id": f"s{i}", "task": "echo", **({"depends_on": [f"s{i - 1}"]} if i else {})}
        for i in range(10_000)
    ]
    with client(hardened_sqlite, token) as http:
        for shape in (steps, chained):
            started = time.monotonic()
            problem = assert_problem(http.post(f"{API}/executions", json={"steps": shape}), 422)
            elapsed = time.monotonic() - started
            assert "2000" in str(problem), problem
        assert http.get(f"{API}/executions").json()["items"] == []
        assert http.get(f"{API}/jobs").json()["items"] == []
    figure(
        "S7",
        f"10k-step ad-hoc workflow (flat and chained): 422 in {elapsed:.2f}s, nothing "
        f"created [{backend(hardened_sqlite)}]",
    )


def submit(http: httpx.Client, **extra: Any) -> httpx.Response:
    return http.post(f"{API}/jobs", json={"task": "echo", "input": {"text": "burst"}, **extra})


def test_a_burst_of_submits_over_the_waiting_cap_is_a_429(hardened_sqlite: Server) -> None:
    _, token = new_user(hardened_sqlite)
    _, other = new_user(hardened_sqlite)
    statuses: list[int] = []
    first_429: float | None = None
    started = time.monotonic()
    with client(hardened_sqlite, token) as http, client(hardened_sqlite, other) as bystander:
        for _ in range(WAITING_CAP + 7):
            response = submit(http)
            statuses.append(response.status_code)
            if response.status_code == 429 and first_429 is None:
                first_429 = time.monotonic() - started
                problem = assert_problem(response, 429)
                assert int(response.headers["retry-after"]) >= 1, response.headers
                assert "waiting" in problem["detail"], problem
        mine = http.get(f"{API}/jobs", params={"limit": 100}).json()["items"]
        # another user is not limited by this one's flood
        assert submit(bystander).status_code == 202
    figure(
        "S7",
        f"sequential burst of {len(statuses)} submits, cap {WAITING_CAP}: "
        f"{statuses.count(202)}x202 then {statuses.count(429)}x429 (Retry-After), first 429 "
        f"after {first_429 or 0:.2f}s; another user unaffected [{backend(hardened_sqlite)}]",
    )
    assert statuses == [202] * WAITING_CAP + [429] * 7, statuses
    assert len(mine) == WAITING_CAP


def test_a_concurrent_burst_respects_the_waiting_cap(hardened: Server) -> None:
    """A flood arrives concurrently: the cap must hold then too (the count is checked
    before the insert, so concurrent requests could all see room)."""
    _, token = new_user(hardened)

    async def flood() -> list[int]:
        async with async_client(hardened, token) as http:
            responses = await asyncio.gather(
                *(
                    http.post(f"{API}/jobs", json={"task": "echo", "input": {"text": "flood"}})
                    for _ in range(40)
                )
            )
        return [r.status_code for r in responses]

    statuses = asyncio.run(flood())
    with client(hardened, token) as http:
        waiting = len(http.get(f"{API}/jobs", params={"limit": 100}).json()["items"])
    other = len(statuses) - statuses.count(202) - statuses.count(429)
    figure(
        "S7",
        f"concurrent burst of 40 submits, cap {WAITING_CAP}: {statuses.count(202)} accepted, "
        f"{statuses.count(429)}x429, other {other}; waiting afterwards {waiting} "
        f"[{backend(hardened)}]",
    )
    assert set(statuses) <= {202, 429}, statuses
    assert waiting <= WAITING_CAP, f"{waiting} jobs waiting for a cap of {WAITING_CAP}"


def test_executions_count_toward_the_waiting_cap(hardened_sqlite: Server) -> None:
    """An execution's steps are jobs waiting for the same user (queued or pending is
    what the cap counts): starting executions must not get around it."""
    _, token = new_user(hardened_sqlite)
    wide = {"steps": [{"id": f"s{i}", "task": "echo"} for i in range(50)]}
    with client(hardened_sqlite, token) as http:
        for _ in range(WAITING_CAP):
            assert submit(http).status_code == 202
        assert submit(http).status_code == 429  # at the cap
        at_cap = http.post(f"{API}/executions", json=wide)
        fresh_user_token = new_user(hardened_sqlite)[1]
    with client(hardened_sqlite, fresh_user_token) as fresh:
        alone = fresh.post(f"{API}/executions", json=wide)
        steps_waiting = 0
        if alone.status_code == 202:
            steps_waiting = len(fresh.get(f"{API}/executions/{alone.json()['id']}/steps").json())
    figure(
        "S7",
        f"executions vs the waiting cap {WAITING_CAP}: a 50-step execution by a user at the "
        f"cap -> {at_cap.status_code}; by a fresh user -> {alone.status_code} "
        f"({steps_waiting} step jobs waiting) [{backend(hardened_sqlite)}]",
    )
    assert at_cap.status_code == 429, f"at the cap, an execution was accepted: {at_cap.text}"
    assert alone.status_code == 429, "a 50-step execution got around a cap of 5 waiting jobs"
