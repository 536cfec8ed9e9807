"""S6 (OWASP API3, property level): no route exposes an internal field.

tests/api/test_auth.py refuses mass assignment (``owner``, ``status``, ``lease_token``...
in bodies: 422) and checks the read routes it walks. Here, on the whole API:

* the published schema: no response model of any operation declares ``lease_token``,
  ``request_hash``, ``password_hash``, ``ticket_hash`` or ``traceback`` (``$ref``\\s are
  followed);
* the live answers: one real request per operation of the OpenAPI document — reads and
  writes, as owner, admin or worker agent, on real resources (a failed job with a
  traceback and a sealed secret, a retried one, executions in auto and manual mode, an
  answered clarification, a versioned document, an external worker) — and no answer
  contains those fields or a sealed value. The table must cover every operation, so a
  route added later fails the test until it is listed.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx

from tests.security.conftest import API, client, figure, new_user, wait_job
from tests.servers import Server

INTERNAL = ("lease_token", "request_hash", "password_hash", "ticket_hash", "traceback")
SEALED = "$sealed"


def schema_properties(spec: dict[str, Any], schema: Any, seen: set[str]) -> set[str]:
    """Every property name reachable from ``schema`` (following ``$ref``)."""
    names: set[str] = set()
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref not in seen:
            seen.add(ref)
            target: Any = spec
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
            names |= schema_properties(spec, target, seen)
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict):
                names |= set(value)
            names |= schema_properties(spec, value, seen)
    elif isinstance(schema, list):
        for item in schema:
            names |= schema_properties(spec, item, seen)
    return names


def operations(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, ops in spec["paths"].items()
        for method in ops
        if method in ("get", "post", "put", "patch", "delete")
    ]


def test_no_response_schema_declares_an_internal_field(app_sqlite: Server) -> None:
    spec: dict[str, Any] = httpx.get(f"{app_sqlite.base}/openapi.json").json()
    exposed: dict[str, list[str]] = {}
    checked = 0
    for method, path in operations(spec):
        responses = spec["paths"][path][method.lower()].get("responses", {})
        for status, response in responses.items():
            checked += 1
            found = schema_properties(spec, response, set()) & set(INTERNAL)
            if found:
                exposed[f"{method} {path} {status}"] = sorted(found)
    figure(
        "S6",
        f"response schemas declaring internal fields {len(exposed)}/{checked} "
        f"({len(operations(spec))} operations)",
    )
    assert not exposed, exposed


@dataclass(frozen=True)
class Call:
    method: str
    template: str  # the OpenAPI path it exercises
    path: str
    role: str = "owner"  # owner | admin | worker
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class World:
    job_completed: str
    job_failed: str
    job_delayed: str
    exec_pipeline: str
    exec_manual: str
    exec_greeting: str
    exec_noting: str
    document: str
    worker: str
    user_id: str


def post(http: httpx.Client, path: str, body: Any) -> dict[str, Any]:
    response = http.post(path, json=body)
    assert response.status_code in (200, 201, 202), f"{path}: {response.text}"
    result: dict[str, Any] = response.json()
    return result


def wait_execution(http: httpx.Client, execution_id: str, *statuses: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        body: dict[str, Any] = http.get(f"{API}/executions/{execution_id}").json()
        if body["status"] in statuses:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def build_world(server: Server, owner: str, agent: str, user_id: str) -> World:
    with client(server, owner) as http, client(server, agent) as worker:
        completed = post(http, f"{API}/jobs", {"task": "add", "input": {"a": 1, "b": 2}})["id"]
        failed = post(
            http,
            f"{API}/jobs",
            {"task": "use_secret", "input": {"api_key": "k" * 12, "mode": "fail"}},
        )["id"]
        delayed = post(http, f"{API}/jobs", {"task": "echo", "delay_s": 3600})["id"]
        pipeline = post(http, f"{API}/executions", {"workflow": "pipeline"})["id"]
        manual = post(http, f"{API}/executions", {"workflow": "pipeline", "mode": "manual"})["id"]
        greeting = post(http, f"{API}/executions", {"workflow": "greeting"})["id"]
        noting = post(
            http,
            f"{API}/executions",
            {"workflow": "noting", "scope_type": "s6", "scope_id": uuid.uuid4().hex},
        )["id"]
        registered = post(
            worker,
            f"{API}/workers",
            {"worker_id": f"ext-s6-{uuid.uuid4().hex[:8]}", "hostname": "h", "max_concurrency": 1},
        )["worker_id"]
        wait_job(http, completed, ("completed",))
        wait_job(http, failed, ("failed",))
        wait_execution(http, pipeline, "completed")
        wait_execution(http, greeting, "awaiting_input", "running")
        output = wait_execution(http, noting, "completed")["output"]
        document = output["note"]["id"]
        deadline = time.monotonic() + 20
        while http.get(f"{API}/executions/{greeting}/steps/ask/clarification").status_code != 200:
            assert time.monotonic() < deadline, "the greeting never asked"
            time.sleep(0.05)
    return World(
        completed,
        failed,
        delayed,
        pipeline,
        manual,
        greeting,
        noting,
        document,
        registered,
        user_id,
    )


# fmt: off
def calls(w: World) -> list[Call]:
    job, ex, doc = f"{API}/jobs/{{job_id}}", f"{API}/executions/{{execution_id}}", (
        f"{API}/documents/{{document_id}}"
    )
    step = f"{ex}/steps/{{step}}"
    wk = f"{API}/workers/{{worker_id}}"
    q = f"{API}/queues/{{name}}"
    return [
        Call("POST", f"{API}/auth/token", f"{API}/auth/token", "anonymous",
             {"username": "admin", "password": "admin-password-for-tests"}),
        Call("GET", f"{API}/me", f"{API}/me"),
        Call("GET", f"{API}/users", f"{API}/users", "admin"),
        Call("POST", f"{API}/users", f"{API}/users", "admin",
             {"username": f"s6-{uuid.uuid4().hex[:8]}", "password": "long-enough-pw",
              "roles": ["user"]}),
        Call("GET", f"{API}/users/{{user_id}}", f"{API}/users/{w.user_id}", "admin"),
        Call("POST", f"{API}/jobs", f"{API}/jobs", body={"task": "add", "input": {"a": 2, "b": 2}},
             headers={"Idempotency-Key": f"s6-{uuid.uuid4().hex}"}),
        Call("GET", f"{API}/jobs", f"{API}/jobs?limit=100"),
        Call("GET", f"{API}/jobs", f"{API}/jobs?limit=100", "admin"),
        Call("GET", job, f"{API}/jobs/{w.job_failed}"),
        Call("GET", job, f"{API}/jobs/{w.job_completed}"),
        Call("GET", f"{job}/events", f"{API}/jobs/{w.job_failed}/events"),
        Call("POST", f"{job}/cancel", f"{API}/jobs/{w.job_delayed}/cancel"),
        Call("POST", f"{job}/retry", f"{API}/jobs/{w.job_delayed}/retry"),
        Call("GET", f"{API}/workflows", f"{API}/workflows"),
        Call("GET", f"{API}/workflows/{{name}}", f"{API}/workflows/pipeline"),
        Call("GET", f"{API}/workflows/{{name}}/steps/{{step}}/schema",
             f"{API}/workflows/pipeline/steps/first/schema"),
        Call("POST", f"{API}/executions", f"{API}/executions", body={"workflow": "pipeline"}),
        Call("GET", f"{API}/executions", f"{API}/executions?limit=100"),
        Call("GET", ex, f"{API}/executions/{w.exec_pipeline}"),
        Call("GET", f"{ex}/steps", f"{API}/executions/{w.exec_pipeline}/steps"),
        Call("POST", f"{step}/run", f"{API}/executions/{w.exec_manual}/steps/first/run"),
        Call("GET", f"{step}/clarification",
             f"{API}/executions/{w.exec_greeting}/steps/ask/clarification"),
        Call("POST", f"{step}/clarification",
             f"{API}/executions/{w.exec_greeting}/steps/ask/clarification",
             body={"answers": {"name": "Alice"}}),
        Call("POST", f"{ex}/cancel", f"{API}/executions/{w.exec_manual}/cancel"),
        Call("POST", f"{ex}/retry", f"{API}/executions/{w.exec_manual}/retry"),
        Call("GET", f"{ex}/events", f"{API}/executions/{w.exec_pipeline}/events"),
        Call("GET", f"{API}/clarifications", f"{API}/clarifications?status=answered"),
        Call("POST", f"{API}/stream-tickets", f"{API}/stream-tickets",
             body={"scope": f"job:{w.job_completed}"}),
        Call("GET", f"{API}/documents", f"{API}/documents"),
        Call("GET", doc, f"{API}/documents/{w.document}"),
        Call("PUT", doc, f"{API}/documents/{w.document}", body={"content": "second version"},
             headers={"If-Match": '"1"'}),
        Call("GET", f"{doc}/versions", f"{API}/documents/{w.document}/versions"),
        Call("GET", f"{doc}/versions/{{version}}", f"{API}/documents/{w.document}/versions/1"),
        Call("GET", f"{API}/telemetry/summary", f"{API}/telemetry/summary"),
        Call("GET", f"{API}/telemetry/executions/{{execution_id}}/costs",
             f"{API}/telemetry/executions/{w.exec_noting}/costs"),
        Call("GET", f"{API}/telemetry/workflows/{{name}}/stats",
             f"{API}/telemetry/workflows/pipeline/stats"),
        Call("GET", f"{API}/workers", f"{API}/workers", "worker"),
        Call("POST", f"{API}/workers", f"{API}/workers", "worker",
             {"hostname": "h2", "max_concurrency": 2}),
        Call("GET", wk, f"{API}/workers/{w.worker}", "worker"),
        Call("POST", f"{wk}/heartbeat", f"{API}/workers/{w.worker}/heartbeat", "worker",
             {"current_load": 1}),
        Call("DELETE", wk, f"{API}/workers/{w.worker}", "worker"),
        Call("GET", f"{API}/queues", f"{API}/queues"),
        Call("GET", q, f"{API}/queues/default"),
        Call("POST", f"{q}/pause", f"{API}/queues/s6-paused/pause", "admin"),
        Call("POST", f"{q}/resume", f"{API}/queues/s6-paused/resume", "admin"),
        Call("POST", f"{q}/clean", f"{API}/queues/s6-paused/clean", "admin",
             {"status": "completed", "older_than_s": 0}),
        Call("GET", f"{API}/health", f"{API}/health"),
        Call("GET", "/healthz", "/healthz"),
        Call("GET", "/readyz", "/readyz"),
        Call("GET", "/metrics", "/metrics", "admin"),
        # last: it revokes the worker's token
        Call("POST", f"{API}/auth/logout", f"{API}/auth/logout", "worker"),
    ]
# fmt: on


def test_every_operation_answers_without_internal_fields(app_sqlite: Server) -> None:
    server = app_sqlite
    user_id, owner = new_user(server)
    _, agent = new_user(server, "worker")
    world = build_world(server, owner, agent, user_id)
    table = calls(world)
    spec = httpx.get(f"{server.base}/openapi.json").json()
    missing = set(operations(spec)) - {(c.method, c.template) for c in table}
    tokens = {"owner": owner, "admin": server.admin_token, "worker": agent, "anonymous": None}
    exposed: dict[str, list[str]] = {}
    failed: dict[str, str] = {}
    for call in table:
        with client(server, tokens[call.role]) as http:
            response = http.request(call.method, call.path, json=call.body, headers=call.headers)
        label = f"{call.method} {call.path} as {call.role}"
        if response.status_code >= 400:
            failed[label] = f"{response.status_code} {response.text[:200]}"
        found = [f for f in (*INTERNAL, SEALED) if f in response.text]
        if found:
            exposed[label] = found
    figure(
        "S6",
        f"live answers of {len(table)} requests covering {len(operations(spec)) - len(missing)}"
        f"/{len(operations(spec))} operations: with internal fields or sealed values "
        f"{len(exposed)}",
    )
    assert not missing, f"operations without a request in the table: {sorted(missing)}"
    assert not failed, f"requests that did not succeed (the table is stale): {failed}"
    assert not exposed, exposed
