"""R7 and R8: submissions through a real ``conveyor serve`` that dies, and key edge cases.

R7  the API is SIGKILLed after committing a submission but before answering (fault point
    ``after_commit_before_response:kill``), and separately while the request is in
    flight before it was read (the server is SIGSTOPped, the request sent, the server
    SIGKILLed). The client retries with the same ``Idempotency-Key`` on a restarted
    server: one job per logical submission. Without a key a retry may create a second
    job; the test pins that down so the documentation can say so.
R8  idempotency-key edge cases: concurrent POSTs with one key, one key with another
    body, and one user reusing another user's key.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from sqlalchemy import func, select

from conveyor.store.schema import jobs
from tests.faults import oracle
from tests.faults.harness import (
    FAST,
    ClientLog,
    backend_of,
    report,
    serve_api,
    sync_engine,
)
from tests.servers import Server, stop_server

#: short leases, in case a killed server's embedded worker held one
SERVER_ENV = {
    k: v for k, v in FAST.items() if k in ("CONVEYOR_LEASE_TTL_S", "CONVEYOR_HEARTBEAT_INTERVAL_S")
}
KILL_AFTER_COMMIT = "after_commit_before_response:kill"

#: server/worker start-ups dominate; on a loaded 2-core machine they take many times longer
pytestmark = pytest.mark.timeout(360)


def submit(
    log: ClientLog,
    server: Server,
    token: str,
    owner: str,
    body: dict[str, Any],
    key: str | None,
    note: str = "",
) -> tuple[int, dict[str, Any] | None]:
    """POST /api/v1/jobs and record the answer (status 0: no answer came back)."""
    headers = {"Authorization": f"Bearer {token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    try:
        response = httpx.post(server.url("/api/v1/jobs"), json=body, headers=headers, timeout=10.0)
    except httpx.TransportError as exc:
        log.record(0, None, key, owner=owner, via="http", note=f"{note}: {type(exc).__name__}")
        return 0, None
    payload: dict[str, Any] = response.json()
    job_id = payload.get("id") if response.status_code in (200, 202) else None
    log.record(response.status_code, job_id, key, owner=owner, via="http", note=note)
    return response.status_code, payload


def keyed_rows(database_url: str, owner: str, key: str) -> int:
    """How many jobs of ``owner`` carry the idempotency key ``key``."""
    engine = sync_engine(database_url)
    try:
        with engine.connect() as conn:
            stmt = select(func.count()).where(jobs.c.owner == owner, jobs.c.idempotency_key == key)
            return int(conn.execute(stmt).scalar_one())
    finally:
        engine.dispose()


def unkeyed_rows(database_url: str, owner: str, data: dict[str, Any]) -> int:
    """How many jobs of ``owner`` without a key have the input ``data``."""
    engine = sync_engine(database_url)
    try:
        with engine.connect() as conn:
            inputs = conn.execute(
                select(jobs.c.input).where(jobs.c.owner == owner, jobs.c.idempotency_key.is_(None))
            ).scalars()
            return sum(1 for found in inputs if found == data)
    finally:
        engine.dispose()


def wait_terminal_db(database_url: str, job_ids: list[str], timeout: float) -> None:
    engine = sync_engine(database_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                found = conn.execute(select(jobs.c.id, jobs.c.status).where(jobs.c.id.in_(job_ids)))
                statuses = {str(row[0]): str(row[1]) for row in found}
            if len(statuses) == len(job_ids) and set(statuses.values()) <= oracle.TERMINAL:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs not terminal within {timeout}s: {statuses}")
            time.sleep(0.1)
    finally:
        engine.dispose()


def killed(server: Server, timeout: float = 10.0) -> int:
    return server.process.wait(timeout)


# -- R7 -----------------------------------------------------------------------------------


def test_r7_kill_the_api_mid_submit(db_url: str, tmp_path: Path, client_log: ClientLog) -> None:
    backend = backend_of(db_url)
    tag = uuid.uuid4().hex[:8]
    servers: list[Server] = []

    def serve(faults: str | None = None) -> Server:
        env = dict(SERVER_ENV)
        if faults:
            env["CONVEYOR_FAULTS"] = faults
        server = serve_api(db_url, tmp_path, env)
        servers.append(server)
        return server

    try:
        # 1. killed after the commit, before the answer; retried with the key
        first = serve(f"{KILL_AFTER_COMMIT}@1")
        user, token = first.new_user()
        # ``add`` may retry: a job an embedded worker had claimed when its server died
        # is recovered after the lease, not failed
        keyed_body = {"task": "add", "input": {"a": 1, "b": 1}}
        keyed_key = f"r7-after-commit-{tag}"
        status, _ = submit(client_log, first, token, user, keyed_body, keyed_key, "after commit")
        assert status == 0, "the server should have died before answering"
        assert killed(first) == -signal.SIGKILL
        assert keyed_rows(db_url, user, keyed_key) == 1, "the submission was committed"

        # 2. the retry answers from the idempotency store; then an unkeyed submit dies the
        # same way (the retry above is the fault point's first hit, this is the second)
        second = serve(f"{KILL_AFTER_COMMIT}@2")
        retry_status, retried = submit(
            client_log, second, token, user, keyed_body, keyed_key, "retry after commit"
        )
        assert retry_status == 200, retried
        assert keyed_rows(db_url, user, keyed_key) == 1
        bare_input = {"a": 2, "b": 2}
        bare_body = {"task": "add", "input": bare_input}
        status, _ = submit(client_log, second, token, user, bare_body, None, "no key")
        assert status == 0
        assert killed(second) == -signal.SIGKILL
        # killed before the request: nothing can be stored
        early_body = {"task": "add", "input": {"a": 3, "b": 3}}
        early_key = f"r7-before-request-{tag}"
        status, _ = submit(client_log, second, token, user, early_body, early_key, "server down")
        assert status == 0
        assert keyed_rows(db_url, user, early_key) == 0

        # 3. without a key the retry creates a second job; with a key, the retry of a
        # request that never reached the server creates the job
        third = serve()
        bare_status, _ = submit(client_log, third, token, user, bare_body, None, "retry no key")
        assert bare_status == 202
        unkeyed_jobs = unkeyed_rows(db_url, user, bare_input)
        early_status, _ = submit(
            client_log, third, token, user, early_body, early_key, "retry server down"
        )
        assert early_status == 202
        assert keyed_rows(db_url, user, early_key) == 1
        accepted = client_log.accepted_ids()
        wait_terminal_db(db_url, accepted, timeout=30)

        # 4. killed with a request in flight that it had not read (SIGSTOP, send, SIGKILL):
        # nothing is stored (its retry is the case above)
        unread_body = {"task": "add", "input": {"a": 4, "b": 4}}
        unread_key = f"r7-in-flight-{tag}"
        third.process.send_signal(signal.SIGSTOP)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                submit, client_log, third, token, user, unread_body, unread_key, "in flight"
            )
            time.sleep(0.3)
            third.process.kill()
            status, _ = pending.result(timeout=15)
        assert status == 0
        assert killed(third) == -signal.SIGKILL
        unread_rows = keyed_rows(db_url, user, unread_key)
    finally:
        for server in servers:
            if server.process.poll() is None:
                stop_server(server)

    found = oracle.check(db_url, accepted)
    found.assert_ok()
    statuses = [(e.note, e.status) for e in client_log.entries]
    report(
        "R7",
        backend,
        f"jobs per logical submission with a key: killed after the commit 1, killed before "
        f"the request 1, killed with the request unread {unread_rows}; retry after the "
        f"commit answered "
        f"{retry_status} from the idempotency store; without a key the retry made "
        f"{unkeyed_jobs} jobs; lost {len(found.lost)}",
        submissions=statuses,
        jobs_per_keyed_submission=1,
        unread_request_rows=unread_rows,
        jobs_per_unkeyed_submission=unkeyed_jobs,
        retry_status=retry_status,
        **found.figures(),
    )
    assert unread_rows == 0, "a request the server never read must leave nothing"
    assert unkeyed_jobs == 2  # documented: without a key a retry may duplicate


# -- R8 -----------------------------------------------------------------------------------

R8_PAIRS = 10


def test_r8_idempotency_key_edge_cases(db_url: str, tmp_path: Path, client_log: ClientLog) -> None:
    backend = backend_of(db_url)
    tag = uuid.uuid4().hex[:8]
    server = serve_api(db_url, tmp_path, dict(SERVER_ENV))
    try:
        user_a, token_a = server.new_user()
        user_b, token_b = server.new_user()

        # two concurrent POSTs with one key, R8_PAIRS times
        races: list[tuple[int, str | None, int, str | None]] = []
        for i in range(R8_PAIRS):
            body = {"task": "echo", "input": {"text": f"race {i}"}}
            key = f"r8-race-{i}-{tag}"
            barrier = threading.Barrier(2)

            def post(
                body: dict[str, Any] = body, key: str = key, barrier: threading.Barrier = barrier
            ) -> tuple[int, str | None]:
                barrier.wait()
                status, payload = submit(client_log, server, token_a, user_a, body, key, "race")
                return status, None if payload is None else payload.get("id")

            with ThreadPoolExecutor(2) as pool:
                one, two = pool.submit(post), pool.submit(post)
                (s1, id1), (s2, id2) = one.result(timeout=20), two.result(timeout=20)
            races.append((s1, id1, s2, id2))
            assert keyed_rows(db_url, user_a, key) == 1, (i, races[-1])
        race_codes = Counter(code for s1, _, s2, _ in races for code in (s1, s2))

        # the same key with another body
        key = f"r8-body-{tag}"
        original = {"task": "echo", "input": {"text": "first body"}}
        first_status, first = submit(client_log, server, token_a, user_a, original, key, "body")
        other = {"task": "echo", "input": {"text": "second body"}}
        mismatch_status, mismatch = submit(
            client_log, server, token_a, user_a, other, key, "other body"
        )
        assert first is not None and mismatch is not None

        # user B reuses user A's key (and body)
        b_status, b_job = submit(client_log, server, token_b, user_b, original, key, "user B")
        assert b_job is not None
        with server.client(token_b) as client_b:
            peek = client_b.get(f"/api/v1/jobs/{first['id']}")
            listed = client_b.get("/api/v1/jobs").json()
        leaks = int(peek.status_code != 404) + sum(
            1 for item in listed["items"] if item["id"] == first["id"]
        )
        accepted = client_log.accepted_ids()
        wait_terminal_db(db_url, accepted, timeout=20)
        with server.client(token_a) as client_a:
            still = client_a.get(f"/api/v1/jobs/{first['id']}").json()
    finally:
        stop_server(server)

    found = oracle.check(db_url, accepted)
    found.assert_ok()
    report(
        "R8",
        backend,
        f"{R8_PAIRS} concurrent pairs with one key: status codes {dict(race_codes)}, one job "
        f"each, same id in both answers {sum(i1 == i2 for _, i1, _, i2 in races)}/{R8_PAIRS}; "
        f"same key, other body: {mismatch_status}; user B with A's key: {b_status} "
        f"(own job: {b_job['id'] != first['id']}); cross-user leaks {leaks}",
        race_status_codes=dict(race_codes),
        mismatch_status=mismatch_status,
        cross_user_status=b_status,
        cross_user_leaks=leaks,
        **found.figures(),
    )
    for s1, id1, s2, id2 in races:
        assert sorted((s1, s2)) == [200, 202], races
        assert id1 is not None and id1 == id2, races
    assert first_status == 202
    assert mismatch_status == 422, mismatch
    assert mismatch.get("code") == "idempotency_mismatch", mismatch
    assert still["input"] == original["input"], "the original job must be unchanged"
    assert b_status == 202 and b_job["id"] != first["id"], b_job
    assert b_job["input"] == original["input"]
    assert leaks == 0
