"""S12: idempotency keys are scoped to their user, for jobs and executions alike.

tests/api/test_flows.py::test_idempotency_key covers jobs: a repeat returns the
original, a changed body is a 422, B reusing A's key *with the same body* gets a job of
its own, and short or malformed keys are refused. Here B guesses A's key with a
*different* body too — a 422 "key already used" would tell B the key exists (an oracle)
— and the same for executions, which no test covered.
"""

from __future__ import annotations

import uuid
from typing import Any

from tests.security.conftest import API, client, figure, new_user
from tests.servers import Server


def post(server: Server, token: str, path: str, body: Any, key: str) -> tuple[int, str]:
    with client(server, token) as http:
        response = http.post(path, json=body, headers={"Idempotency-Key": key})
    return response.status_code, response.json().get("id", response.text)


def test_another_user_never_hits_my_idempotency_key(app_sqlite: Server) -> None:
    server = app_sqlite
    _, a = new_user(server)
    _, b = new_user(server)
    hits: list[str] = []
    checks = 0
    for path, mine, other in (
        (
            f"{API}/jobs",
            {"task": "echo", "input": {"text": "a"}},
            {"task": "echo", "input": {"text": "b"}},
        ),
        (
            f"{API}/executions",
            {"workflow": "pipeline"},
            {"workflow": "pipeline", "input": {"x": 1}},
        ),
    ):
        for guess in (other, mine):  # B guesses A's key with another body, then with A's
            key = f"order-{uuid.uuid4().hex[:8]}"  # low entropy in practice
            status, a_id = post(server, a, path, mine, key)
            assert status == 202, a_id
            checks += 1
            status, b_id = post(server, b, path, guess, key)
            if status == 200 or b_id == a_id:
                hits.append(f"{path}: B got A's resource ({status})")
            elif status != 202:
                hits.append(f"{path}: B learnt that the key exists ({status} {b_id})")
            # A's own repeat still finds A's resource
            assert post(server, a, path, mine, key) == (200, a_id)
    figure("S12", f"cross-user idempotency hits or oracles {len(hits)}/{checks} (jobs, executions)")
    assert not hits, hits
