"""S5 (OWASP API1, object-level authorisation) against a real ``conveyor serve``.

User A creates one of everything; user B (same ``user`` role) replays every route that
takes an id with A's ids. Each must answer exactly what it answers for an id that does
not exist (404, same body), lists must not show A's items whatever the filters, and
nothing B tries may change A's data. The routes come from the served OpenAPI document, so
a route added later without an entry in the replay table fails
``test_every_id_route_is_replayed``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx
import pytest

from conveyor.domain.ids import new_id
from tests.api.conftest import wait_json
from tests.servers import Server

API = "/api/v1"
TERMINAL = ("completed", "failed", "cancelled")

# -- who calls, and the replay table ---------------------------------------------------------


@dataclass
class World:
    """What user A (and, for the worker routes, worker agent A) created."""

    a_id: str
    a_token: str
    b_id: str
    b_token: str
    worker_a_token: str
    worker_b_token: str
    job_delayed: str
    job_completed: str
    job_failed: str
    exec_pipeline: str
    exec_greeting: str
    exec_manual: str
    exec_failed: str
    step_jobs: list[str]
    clarification: str
    worker: str
    b_job: str
    b_exec: str
    b_clarification: str
    created_before: str
    document: str
    exec_writer: str

    @property
    def a_jobs(self) -> list[str]:
        return [self.job_delayed, self.job_completed, self.job_failed, *self.step_jobs]

    @property
    def a_executions(self) -> list[str]:
        return [
            self.exec_pipeline,
            self.exec_greeting,
            self.exec_manual,
            self.exec_failed,
            self.exec_writer,
        ]

    @property
    def a_ids(self) -> list[str]:
        """Every id A owns (replaced by fresh ids to build the 'does not exist' twin)."""
        return [*self.a_jobs, *self.a_executions, self.clarification, self.document]


@dataclass(frozen=True)
class Call:
    """One request of the replay. ``caller`` is ``b`` (a ``user``) or ``worker_b``;
    ``expect`` the status it must get. With ``like_missing`` the same request with every
    id of A swapped for a fresh one must get the very same answer."""

    method: str
    template: str
    path: str
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    caller: str = "b"
    expect: int = 404
    stream: bool = False

    @property
    def like_missing(self) -> bool:
        return self.expect == 404

    def label(self) -> str:
        extra = f" {self.headers}" if self.headers else ""
        return f"{self.method} {self.path}{extra} as {self.caller}"


def owned_calls(w: World) -> list[Call]:
    """Routes on A's jobs, executions, steps and questions: B must get 404 on each."""
    job = f"{API}/jobs/{{job_id}}"
    ex = f"{API}/executions/{{execution_id}}"
    sse = {"Accept": "text/event-stream"}
    calls: list[Call] = []
    for job_id in w.a_jobs:
        calls += [
            Call("GET", job, f"{API}/jobs/{job_id}"),
            Call("GET", f"{job}/events", f"{API}/jobs/{job_id}/events"),
        ]
    calls += [
        Call("GET", f"{job}/events", f"{API}/jobs/{w.job_completed}/events?after=0&limit=5"),
        Call(
            "GET", f"{job}/events", f"{API}/jobs/{w.job_completed}/events", headers=sse, stream=True
        ),
        Call(
            "GET",
            f"{job}/events",
            f"{API}/jobs/{w.job_completed}/events",
            headers={**sse, "Last-Event-ID": "0"},
            stream=True,
        ),
    ]
    # cancel and retry on every state: for A these answer 200, 409 or 202
    for job_id in (w.job_delayed, w.job_completed, w.job_failed, w.step_jobs[0]):
        calls += [
            Call("POST", f"{job}/cancel", f"{API}/jobs/{job_id}/cancel"),
            Call("POST", f"{job}/retry", f"{API}/jobs/{job_id}/retry"),
        ]
    for ex_id in w.a_executions:
        base = f"{API}/executions/{ex_id}"
        calls += [
            Call("GET", ex, base),
            Call("GET", f"{ex}/steps", f"{base}/steps"),
            Call("GET", f"{ex}/events", f"{base}/events"),
            Call("POST", f"{ex}/cancel", f"{base}/cancel"),
            Call("POST", f"{ex}/retry", f"{base}/retry"),
        ]
    calls += [
        Call("GET", f"{ex}/events", f"{API}/executions/{w.exec_pipeline}/events?after=0&limit=3"),
        Call(
            "GET",
            f"{ex}/events",
            f"{API}/executions/{w.exec_pipeline}/events",
            headers={**sse, "Last-Event-ID": "1"},
            stream=True,
        ),
    ]
    run = f"{ex}/steps/{{step}}/run"
    manual = f"{API}/executions/{w.exec_manual}"
    calls += [
        # A would get 202 for "first", 409 for "second" (dependencies not completed)
        Call("POST", run, f"{manual}/steps/first/run"),
        Call("POST", run, f"{manual}/steps/first/run", body={"input": {"text": "mallory"}}),
        Call("POST", run, f"{manual}/steps/second/run"),
        Call("POST", run, f"{manual}/steps/no_such_step/run"),
        # A would get 409 (mode auto)
        Call("POST", run, f"{API}/executions/{w.exec_pipeline}/steps/first/run"),
    ]
    tickets = f"{API}/stream-tickets"
    calls += [
        # the id is in the body: a ticket for A's stream must not be issued to B
        Call("POST", tickets, tickets, body={"scope": f"job:{w.job_completed}"}),
        Call("POST", tickets, tickets, body={"scope": f"job:{w.step_jobs[0]}"}),
        Call("POST", tickets, tickets, body={"scope": f"execution:{w.exec_pipeline}"}),
    ]
    clar = f"{ex}/steps/{{step}}/clarification"
    greeting = f"{API}/executions/{w.exec_greeting}/steps/ask/clarification"
    calls += [
        Call("GET", clar, greeting),
        Call("GET", clar, f"{API}/executions/{w.exec_pipeline}/steps/first/clarification"),
        # a valid answer (A would get 200) and an invalid one (A would get 422)
        Call("POST", clar, greeting, body={"answers": {"name": "Mallory"}}),
        Call("POST", clar, greeting, body={"answers": {"name": 1}}),
        Call("POST", clar, greeting, body={"answers": {}}),
    ]
    doc = f"{API}/documents/{{document_id}}"
    doc_path = f"{API}/documents/{w.document}"
    calls += [
        Call("GET", doc, doc_path),
        Call("GET", f"{doc}/versions", f"{doc_path}/versions"),
        Call("GET", f"{doc}/versions/{{version}}", f"{doc_path}/versions/1"),
        # A would get 200 (If-Match current) or 412 (stale): B gets 404 either way
        Call("PUT", doc, doc_path, body={"content": "mallory"}, headers={"If-Match": '"1"'}),
        Call("PUT", doc, doc_path, body={"content": "mallory"}, headers={"If-Match": '"9"'}),
        Call(
            "GET",
            f"{API}/telemetry/executions/{{execution_id}}/costs",
            f"{API}/telemetry/executions/{w.exec_writer}/costs",
        ),
    ]
    return calls


def other_calls(w: World) -> list[Call]:
    """Routes with an id that are not per-user data: what B gets there instead."""
    worker = f"{API}/workers/{{worker_id}}"
    worker_path = f"{API}/workers/{w.worker}"
    return [
        # admin only: a user gets 403 whoever the target is
        Call("GET", f"{API}/users/{{user_id}}", f"{API}/users/{w.a_id}", expect=403),
        Call("POST", f"{API}/queues/{{name}}/pause", f"{API}/queues/default/pause", expect=403),
        Call("POST", f"{API}/queues/{{name}}/resume", f"{API}/queues/default/resume", expect=403),
        Call(
            "POST",
            f"{API}/queues/{{name}}/clean",
            f"{API}/queues/default/clean",
            body={"status": "completed", "older_than_s": 0.0},
            expect=403,
        ),
        # the app's definitions and queue statistics are the same for every caller
        Call("GET", f"{API}/workflows/{{name}}", f"{API}/workflows/greeting", expect=200),
        Call(
            "GET",
            f"{API}/workflows/{{name}}/steps/{{step}}/schema",
            f"{API}/workflows/greeting/steps/ask/schema",
            expect=200,
        ),
        Call("GET", f"{API}/queues/{{name}}", f"{API}/queues/default", expect=200),
        # per-workflow statistics are computed over the caller's own executions only
        Call(
            "GET",
            f"{API}/telemetry/workflows/{{name}}/stats",
            f"{API}/telemetry/workflows/writer/stats",
            expect=200,
        ),
        # worker routes need the worker role
        Call("GET", worker, worker_path, expect=403),
        Call("POST", f"{worker}/heartbeat", f"{worker_path}/heartbeat", expect=403),
        Call("DELETE", worker, worker_path, expect=403),
        # another worker agent sees the fleet but cannot take over, beat or drain A's worker
        Call("GET", worker, worker_path, caller="worker_b", expect=200),
        Call(
            "POST",
            f"{API}/workers",
            f"{API}/workers",
            body={"worker_id": w.worker, "hostname": "mallory", "max_concurrency": 1},
            caller="worker_b",
            expect=409,
        ),
        Call(
            "POST",
            f"{worker}/heartbeat",
            f"{worker_path}/heartbeat",
            body={"current_load": 3},
            caller="worker_b",
        ),
        Call("DELETE", worker, worker_path, caller="worker_b"),
    ]


# Routes that take no id of anyone's resource, and where their ownership is covered instead.
NO_ID_ROUTES: dict[tuple[str, str], str] = {
    ("POST", f"{API}/auth/token"): "login",
    ("GET", f"{API}/me"): "the caller itself",
    ("POST", f"{API}/auth/logout"): "revokes the caller's own token (test_auth)",
    ("GET", f"{API}/users"): "admin only (test_auth)",
    ("POST", f"{API}/users"): "admin only (test_auth)",
    ("POST", f"{API}/jobs"): "creates B's own job",
    ("GET", f"{API}/jobs"): "test_lists_never_show_another_users_items",
    ("GET", f"{API}/workflows"): "the app's definitions, the same for everyone",
    ("POST", f"{API}/executions"): "creates B's own execution",
    ("GET", f"{API}/executions"): "test_lists_never_show_another_users_items",
    ("GET", f"{API}/clarifications"): "test_lists_never_show_another_users_items",
    ("GET", f"{API}/documents"): "test_lists_never_show_another_users_items",
    ("GET", f"{API}/telemetry/summary"): "the caller's own usage (test_lists_...)",
    ("GET", f"{API}/workers"): "the fleet, visible to every worker agent",
    ("GET", f"{API}/queues"): "aggregate counts per queue, no items",
    ("GET", f"{API}/health"): "aggregate fleet health",
    ("GET", "/healthz"): "public",
    ("GET", "/readyz"): "public",
    ("GET", "/metrics"): "aggregates only",
}


def all_calls(w: World) -> list[Call]:
    return [*owned_calls(w), *other_calls(w)]


# -- building A's world ----------------------------------------------------------------------


def _post(client: httpx.Client, path: str, body: Any, status: int = 202) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code == status, f"POST {path}: {response.status_code} {response.text}"
    result: dict[str, Any] = response.json()
    return result


def _wait_status(client: httpx.Client, path: str, *statuses: str) -> dict[str, Any]:
    return wait_json(client, path, lambda body: body.get("status") in statuses)


def _snapshot(client: httpx.Client, w: World) -> dict[str, Any]:
    """Everything A can read about its resources."""
    paths = [f"{API}/jobs/{j}" for j in w.a_jobs]
    paths += [f"{API}/jobs/{j}/events" for j in w.a_jobs]
    for ex in w.a_executions:
        paths += [f"{API}/executions/{ex}", f"{API}/executions/{ex}/steps"]
        paths += [f"{API}/executions/{ex}/events"]
    paths += [f"{API}/executions/{w.exec_greeting}/steps/ask/clarification"]
    paths += [f"{API}/clarifications?status=pending", f"{API}/jobs?limit=100"]
    paths += [f"{API}/executions?limit=100"]
    found: dict[str, Any] = {}
    for path in paths:
        response = client.get(path)
        assert response.status_code == 200, f"A cannot read {path}: {response.text}"
        found[path] = response.json()
    return found


@pytest.fixture(scope="module")
def world(server: Server) -> World:
    a_id, a_token = server.new_user("user")
    b_id, b_token = server.new_user("user")
    _, worker_a_token = server.new_user("worker")
    _, worker_b_token = server.new_user("worker")
    created_before = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 3600))
    with server.client(a_token) as a, server.client(b_token) as b:
        delayed = _post(a, f"{API}/jobs", {"task": "sleepy", "delay_s": 3600.0})["id"]
        completed = _post(a, f"{API}/jobs", {"task": "add", "input": {"a": 1, "b": 2}})["id"]
        failed = _post(a, f"{API}/jobs", {"task": "boom"})["id"]
        pipeline = _post(a, f"{API}/executions", {"workflow": "pipeline"})["id"]
        greeting = _post(a, f"{API}/executions", {"workflow": "greeting"})["id"]
        manual = _post(a, f"{API}/executions", {"workflow": "pipeline", "mode": "manual"})["id"]
        ex_failed = _post(a, f"{API}/executions", {"steps": [{"id": "only", "task": "boom"}]})["id"]
        writer = _post(a, f"{API}/executions", {"workflow": "writer"})["id"]
        b_job = _post(b, f"{API}/jobs", {"task": "add", "input": {"a": 2, "b": 2}})["id"]
        b_exec = _post(b, f"{API}/executions", {"workflow": "greeting"})["id"]
        with server.client(worker_a_token) as wa:
            worker = _post(
                wa,
                f"{API}/workers",
                {
                    "worker_id": f"ext-a-{uuid.uuid4().hex[:8]}",
                    "hostname": "a",
                    "max_concurrency": 1,
                },
                status=201,
            )["worker_id"]

        _wait_status(a, f"{API}/jobs/{completed}", "completed")
        _wait_status(a, f"{API}/jobs/{failed}", "failed")
        _wait_status(a, f"{API}/executions/{pipeline}", "completed")
        _wait_status(a, f"{API}/executions/{ex_failed}", "failed")
        _wait_status(a, f"{API}/executions/{writer}", "completed")
        written = a.get(f"{API}/executions/{writer}").json()["output"]["write"]
        document = written["document"]["id"]
        _wait_status(a, f"{API}/executions/{greeting}", "awaiting_input")
        _wait_status(b, f"{API}/executions/{b_exec}", "awaiting_input")
        _wait_status(b, f"{API}/jobs/{b_job}", "completed")
        assert a.get(f"{API}/jobs/{delayed}").json()["status"] == "delayed"
        steps = a.get(f"{API}/executions/{pipeline}/steps").json()
        step_jobs = [s["job_id"] for s in steps]
        manual_steps = a.get(f"{API}/executions/{manual}/steps").json()
        step_jobs += [s["job_id"] for s in manual_steps]
        assert len(step_jobs) == 4
        clarification = a.get(f"{API}/executions/{greeting}/steps/ask/clarification").json()["id"]
        b_clarification = b.get(f"{API}/executions/{b_exec}/steps/ask/clarification").json()["id"]
    return World(
        a_id=a_id,
        a_token=a_token,
        b_id=b_id,
        b_token=b_token,
        worker_a_token=worker_a_token,
        worker_b_token=worker_b_token,
        job_delayed=delayed,
        job_completed=completed,
        job_failed=failed,
        exec_pipeline=pipeline,
        exec_greeting=greeting,
        exec_manual=manual,
        exec_failed=ex_failed,
        step_jobs=step_jobs,
        clarification=clarification,
        worker=worker,
        b_job=b_job,
        b_exec=b_exec,
        b_clarification=b_clarification,
        created_before=created_before,
        document=document,
        exec_writer=writer,
    )


@dataclass
class Answer:
    status: int
    content_type: str
    body: Any


@dataclass
class Replay:
    before: dict[str, Any]
    # each call, its answer, and the answer to its "does not exist" twin
    answers: list[tuple[Call, Answer, Answer | None]]
    # every id the calls and their twins used
    ids: list[str]


def _send(client: httpx.Client, call: Call) -> Answer:
    kwargs: dict[str, Any] = {"headers": call.headers}
    if call.body is not None:
        kwargs["json"] = call.body
    if call.stream:
        # a stream that (wrongly) opened would never end: read the status line only
        with client.stream(call.method, call.path, **kwargs) as response:
            if response.status_code >= 400:
                response.read()
                return Answer(response.status_code, _ctype(response), _json(response))
            return Answer(response.status_code, _ctype(response), None)
    response = client.request(call.method, call.path, **kwargs)
    return Answer(response.status_code, _ctype(response), _json(response))


def _ctype(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip()


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _twin(call: Call, ids: list[str]) -> tuple[Call, list[str]]:
    """The same request on ids that do not exist, and the fresh ids it uses."""
    path = call.path
    body = json.dumps(call.body)
    fresh: list[str] = []
    for found in ids:
        if found in path or found in body:
            other = new_id() if _UUID.fullmatch(found) else f"ext-gone-{uuid.uuid4().hex[:8]}"
            path = path.replace(found, other)
            body = body.replace(found, other)
            fresh.append(other)
    twin = Call(call.method, call.template, path, json.loads(body), call.headers, call.caller, 404)
    return twin, fresh


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _scrub(value: Any, ids: list[str]) -> str:
    """An answer with every given id replaced by a placeholder."""
    text = repr(value)
    for found in ids:
        text = text.replace(found, "<id>")
    return text


@pytest.fixture(scope="module")
def replay(server: Server, world: World) -> Replay:
    """A's view, then B's requests (and their 'does not exist' twins)."""
    with server.client(world.a_token) as a:
        before = _snapshot(a, world)
    answers: list[tuple[Call, Answer, Answer | None]] = []
    ids = [*world.a_ids, world.worker]
    used = list(ids)
    tokens = {"b": world.b_token, "worker_b": world.worker_b_token}
    clients = {name: server.client(token) for name, token in tokens.items()}
    try:
        for call in all_calls(world):
            client = clients[call.caller]
            got = _send(client, call)
            twin = None
            if call.like_missing:
                twin_call, fresh = _twin(call, ids)
                assert fresh, f"{call.label()} uses none of A's ids"
                used += fresh
                twin = _send(client, twin_call)
            answers.append((call, got, twin))
    finally:
        for client in clients.values():
            client.close()
    return Replay(before, answers, used)


# -- tests -----------------------------------------------------------------------------------


def _served_operations(server: Server) -> set[tuple[str, str]]:
    with server.client() as anonymous:
        schema = anonymous.get("/openapi.json").json()
    return {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    }


def test_every_id_route_is_replayed(server: Server, world: World) -> None:
    """Every route of the OpenAPI document is either replayed with A's ids or listed in
    NO_ID_ROUTES; a new route fails here until it is classified."""
    served = _served_operations(server)
    replayed = {(c.method, c.template) for c in all_calls(world)}
    with_id = {op for op in served if "{" in op[1]}
    missing = sorted(with_id - replayed)
    unclassified = sorted(served - replayed - set(NO_ID_ROUTES))
    stale = sorted((replayed | set(NO_ID_ROUTES)) - served)
    assert not missing, f"routes taking an id with no entry in the replay table: {missing}"
    assert not unclassified, f"routes neither replayed nor in NO_ID_ROUTES: {unclassified}"
    assert not stale, f"table entries the API no longer serves: {stale}"
    for call in all_calls(world):
        pattern = re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(call.template))
        assert re.fullmatch(pattern, call.path.split("?")[0]), call.label()


def test_other_user_gets_404_on_every_route(replay: Replay, world: World) -> None:
    problems: list[str] = []
    for call, got, twin in replay.answers:
        if got.status != call.expect:
            problems.append(f"{call.label()}: {got.status} (expected {call.expect}) {got.body}")
            continue
        if got.status >= 400 and got.content_type != "application/problem+json":
            problems.append(f"{call.label()}: error as {got.content_type!r}, not problem+json")
        if twin is None:
            continue
        if (twin.status, twin.content_type) != (got.status, got.content_type) or _scrub(
            twin.body, replay.ids
        ) != _scrub(got.body, replay.ids):
            problems.append(
                f"{call.label()}: differs from an id that does not exist:\n"
                f"    A's id:  {got.status} {got.body}\n    missing: {twin.status} {twin.body}"
            )
    assert not problems, f"{len(problems)} cross-user answers are wrong:\n" + "\n".join(problems)
    assert len(replay.answers) == len(all_calls(world))


def _list_ids(client: httpx.Client, path: str, key: str = "id") -> list[str]:
    """Every item of a list, following ``next_cursor``."""
    ids: list[str] = []
    cursor: str | None = None
    for _ in range(50):
        sep = "&" if "?" in path else "?"
        url = path if cursor is None else f"{path}{sep}cursor={cursor}"
        response = client.get(url)
        assert response.status_code == 200, f"GET {url}: {response.text}"
        page = response.json()
        ids += [item[key] for item in page["items"]]
        cursor = page.get("next_cursor")
        if cursor is None:
            return ids
    raise AssertionError(f"{path}: more than 50 pages")


def _job_lists(w: World) -> list[str]:
    lists = [f"{API}/jobs", f"{API}/jobs?limit=1", f"{API}/jobs?queue=default"]
    lists += [f"{API}/jobs?status={s}" for s in ("pending", "queued", "delayed", "active")]
    lists += [f"{API}/jobs?status={s}" for s in ("awaiting_input", *TERMINAL)]
    lists += [f"{API}/jobs?task={t}" for t in ("add", "boom", "sleepy", "echo", "ask_name")]
    lists += [f"{API}/jobs?created_after={w.created_before.replace('+', '%2B')}&limit=100"]
    return lists


def _execution_lists(w: World) -> list[str]:
    lists = [f"{API}/executions", f"{API}/executions?limit=1"]
    lists += [f"{API}/executions?workflow={n}" for n in ("pipeline", "greeting")]
    statuses = ("queued", "running", "awaiting_input", *TERMINAL)
    lists += [f"{API}/executions?status={s}" for s in statuses]
    lists += [f"{API}/executions?created_after={w.created_before.replace('+', '%2B')}"]
    return lists


def _clarification_lists() -> list[str]:
    statuses = ("pending", "answered", "expired", "cancelled")
    return [f"{API}/clarifications", *(f"{API}/clarifications?status={s}" for s in statuses)]


def test_lists_never_show_another_users_items(server: Server, world: World, replay: Replay) -> None:
    leaks: list[str] = []
    with server.client(world.b_token) as b:
        for path in _job_lists(world):
            leaks += [f"{path}: job {i}" for i in _list_ids(b, path) if i in world.a_jobs]
        for path in _execution_lists(world):
            found = _list_ids(b, path)
            leaks += [f"{path}: execution {i}" for i in found if i in world.a_executions]
        for path in _clarification_lists():
            found = _list_ids(b, path)
            leaks += [f"{path}: clarification {i}" for i in found if i == world.clarification]
        for path in (
            f"{API}/documents",
            f"{API}/documents?type=report",
            f"{API}/documents?limit=100",
        ):
            found = _list_ids(b, path)
            leaks += [f"{path}: document {i}" for i in found if i == world.document]
        usage = b.get(f"{API}/telemetry/summary").json()
        if usage["calls"] != 0:
            leaks.append(f"telemetry summary counts A's calls for B: {usage['calls']}")
        # the lists work: B sees its own items through the same filters
        assert world.b_job in _list_ids(b, f"{API}/jobs?status=completed&task=add")
        assert world.b_exec in _list_ids(b, f"{API}/executions?workflow=greeting")
        assert world.b_clarification in _list_ids(b, f"{API}/clarifications")
    assert not leaks, "B's lists show A's items:\n" + "\n".join(leaks)


def test_owner_lists_show_only_their_own_items(server: Server, world: World) -> None:
    with server.client(world.a_token) as a:
        jobs = _list_ids(a, f"{API}/jobs?limit=7")
        executions = _list_ids(a, f"{API}/executions?limit=2")
        questions = _list_ids(a, f"{API}/clarifications")
        assert world.job_completed in _list_ids(a, f"{API}/jobs?status=completed&task=add")
        assert world.exec_greeting in _list_ids(a, f"{API}/executions?status=awaiting_input")
    assert set(world.a_jobs) <= set(jobs) and world.b_job not in jobs
    assert set(world.a_executions) == set(executions)
    assert questions == [world.clarification]


def test_admin_sees_every_users_resources(server: Server, world: World) -> None:
    with server.client(server.admin_token) as admin:
        for job_id in world.a_jobs:
            response = admin.get(f"{API}/jobs/{job_id}")
            assert response.status_code == 200, response.text
            assert response.json()["owner"] == world.a_id
        for ex_id in world.a_executions:
            for suffix in ("", "/steps", "/events"):
                response = admin.get(f"{API}/executions/{ex_id}{suffix}")
                assert response.status_code == 200, response.text
        clar = admin.get(f"{API}/executions/{world.exec_greeting}/steps/ask/clarification")
        assert clar.status_code == 200 and clar.json()["id"] == world.clarification
        jobs = _list_ids(admin, f"{API}/jobs?limit=100")
        assert set(world.a_jobs) | {world.b_job} <= set(jobs)
        assert world.job_failed in _list_ids(admin, f"{API}/jobs?status=failed")
        greetings = _list_ids(admin, f"{API}/executions?workflow=greeting")
        assert {world.exec_greeting, world.b_exec} <= set(greetings)
        questions = _list_ids(admin, f"{API}/clarifications")
        assert {world.clarification, world.b_clarification} <= set(questions)


def test_nothing_changed_for_the_owner(server: Server, world: World, replay: Replay) -> None:
    with server.client(world.a_token) as a:
        after = _snapshot(a, world)
        changed = [path for path in replay.before if after[path] != replay.before[path]]
        assert not changed, f"B's requests changed A's data: {changed}"
        # the states B tried to change, spelled out
        assert a.get(f"{API}/jobs/{world.job_delayed}").json()["status"] == "delayed"
        assert a.get(f"{API}/jobs/{world.job_failed}").json()["status"] == "failed"
        greeting = a.get(f"{API}/executions/{world.exec_greeting}").json()
        assert greeting["status"] == "awaiting_input"
        clar = a.get(f"{API}/executions/{world.exec_greeting}/steps/ask/clarification").json()
        assert clar["status"] == "pending" and clar["answers"] is None
        manual = a.get(f"{API}/executions/{world.exec_manual}/steps").json()
        assert all(s["status"] == "pending" for s in manual), manual
    with server.client(world.worker_a_token) as wa:
        mine = wa.get(f"{API}/workers/{world.worker}")
        assert mine.status_code == 200 and mine.json()["hostname"] == "a", mine.text
        beat = wa.post(f"{API}/workers/{world.worker}/heartbeat", json={"current_load": 0})
        assert beat.status_code == 200, f"worker A lost its registration: {beat.text}"
    with server.client(server.admin_token) as admin:
        assert admin.get(f"{API}/queues/default").json()["paused"] is False


def test_a_stream_ticket_opens_only_its_own_stream(server: Server, world: World) -> None:
    """B's ticket (issued for B's job) does not open A's stream."""
    sse = {"Accept": "text/event-stream"}

    def ticket() -> str:
        with server.client(world.b_token) as b:
            issued = b.post(f"{API}/stream-tickets", json={"scope": f"job:{world.b_job}"})
            assert issued.status_code == 201, issued.text
            value: str = issued.json()["ticket"]
            return value

    with server.client() as anonymous:
        for target in (world.job_completed, world.step_jobs[0]):
            path = f"{API}/jobs/{target}/events"
            with anonymous.stream("GET", path, params={"ticket": ticket()}, headers=sse) as got:
                status = got.status_code
            assert status in (401, 403, 404), f"B's ticket opened {path}: {status}"
        path = f"{API}/executions/{world.exec_pipeline}/events"
        with anonymous.stream("GET", path, params={"ticket": ticket()}, headers=sse) as got:
            status = got.status_code
        assert status in (401, 403, 404), f"B's ticket opened {path}: {status}"
        # the same ticket on B's own stream works (the refusals above are about the target)
        path = f"{API}/jobs/{world.b_job}/events"
        with anonymous.stream("GET", path, params={"ticket": ticket()}, headers=sse) as got:
            assert got.status_code == 200, got.read()
            assert got.headers["content-type"].startswith("text/event-stream")


def test_websocket_refuses_another_users_subscriptions(server: Server, world: World) -> None:
    from websockets.sync.client import connect

    url = server.base.replace("http://", "ws://") + f"{API}/ws"
    with connect(url, open_timeout=10) as ws:
        ws.send(json.dumps({"token": world.b_token}))
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        answers: dict[str, Any] = {}
        for key in (
            f"job:{world.job_completed}",
            f"job:{world.step_jobs[0]}",
            f"execution:{world.exec_pipeline}",
            f"execution:{world.exec_greeting}",
            f"job:{new_id()}",
            f"execution:{new_id()}",
        ):
            ws.send(json.dumps({"subscribe": key, "after": 0}))
            answers[key] = json.loads(ws.recv(timeout=10))
        refused = {key: a.get("error", {}).get("status") for key, a in answers.items()}
        assert set(refused.values()) == {404}, f"subscriptions B got: {answers}"
        # a queue stream is shared, but B gets only its own jobs' events from it
        ws.send(json.dumps({"subscribe": "queue:default", "after": 1}))
        frames: list[str] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                frames.append(str(ws.recv(timeout=1.5)))
            except TimeoutError:
                break
    seen = "\n".join(frames)
    leaked = [i for i in world.a_ids if i in seen]
    assert not leaked, f"B's queue stream carried A's ids {leaked}"
    assert world.b_job in seen, f"B's own job is missing from its queue stream: {frames[:5]}"
