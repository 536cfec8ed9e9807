"""End-to-end flows over real HTTP against ``conveyor serve`` (SQLite and PostgreSQL).

Every request goes through :func:`api`, whose response hook checks the invariants that
hold for every answer: never a 5xx, never a traceback, never an internal field.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import pytest

from tests.api.conftest import wait_json
from tests.servers import Server, assert_problem

API = "/api/v1"
INTERNAL_FIELDS = ("lease_token", "password_hash", "request_hash")
JOB_STATUSES = {
    "pending",
    "queued",
    "delayed",
    "active",
    "awaiting_input",
    "completed",
    "failed",
    "cancelled",
}
COUNT_KEYS = {"queued", "delayed", "active", "awaiting_input", "completed", "failed", "cancelled"}


# -- helpers -----------------------------------------------------------------------------------


def check_response(response: httpx.Response) -> None:
    """Invariants of every answer of the API."""
    response.read()
    text = response.text
    try:
        sent = response.request.content.decode("utf-8", "replace")
    except httpx.RequestNotRead:  # a streamed request body
        sent = ""
    where = f"{response.request.method} {response.request.url}"
    assert response.status_code < 500, f"{where} -> {response.status_code}: {text}"
    assert "Traceback" not in text, f"{where} leaks a traceback: {text}"
    for field in INTERNAL_FIELDS:
        if field not in sent:  # a 422 may name a field the request itself sent
            assert field not in text, f"{where} leaks {field}: {text}"


def api(server: Server, token: str | None) -> httpx.Client:
    client = server.client(token)
    client.event_hooks = {"request": [], "response": [check_response]}
    return client


def wait_job(client: httpx.Client, job_id: str, done: Callable[[dict[str, Any]], bool]) -> Any:
    return wait_json(client, f"{API}/jobs/{job_id}", done)


def status_is(*statuses: str) -> Callable[[dict[str, Any]], bool]:
    return lambda body: body.get("status") in statuses


def steps_by_id(client: httpx.Client, execution_id: str) -> dict[str, dict[str, Any]]:
    response = client.get(f"{API}/executions/{execution_id}/steps")
    assert response.status_code == 200, response.text
    return {s["step_id"]: s for s in response.json()}


def wait_steps(
    client: httpx.Client,
    execution_id: str,
    done: Callable[[dict[str, dict[str, Any]]], bool],
    timeout: float = 20.0,
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        steps = steps_by_id(client, execution_id)
        if done(steps):
            return steps
        if time.monotonic() > deadline:
            raise AssertionError(f"steps of {execution_id} never reached the state: {steps}")
        time.sleep(0.05)


def submit(client: httpx.Client, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = client.post(f"{API}/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def start(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"{API}/executions", json=body)
    assert response.status_code == 202, response.text
    assert response.headers["location"].endswith(f"{API}/executions/{response.json()['id']}")
    execution: dict[str, Any] = response.json()
    return execution


@pytest.fixture(scope="module")
def alice(server: Server) -> tuple[str, str]:
    """A plain user shared by the tests that do not need an empty account."""
    return server.new_user()


# -- jobs --------------------------------------------------------------------------------------


def test_submitted_job_runs_on_the_embedded_worker(server: Server, alice: tuple[str, str]) -> None:
    user_id, token = alice
    with api(server, token) as client:
        response = client.post(f"{API}/jobs", json={"task": "add", "input": {"a": 2, "b": 3}})
        assert response.status_code == 202, response.text
        job = response.json()
        location = response.headers["location"]
        assert location.endswith(f"{API}/jobs/{job['id']}")
        assert job["task"] == "add"
        assert job["queue"] == "default"
        assert job["owner"] == user_id
        assert job["input"] == {"a": 2, "b": 3}
        assert job["status"] in ("queued", "active", "completed")

        done = wait_json(client, location, status_is("completed", "failed", "cancelled"))
        assert done["status"] == "completed", done
        assert done["id"] == job["id"]
        assert done["result"] == 5
        assert done["error"] is None
        assert done["progress"] == 100
        assert done["attempts"] == 1
        assert done["worker_id"]
        assert done["started_at"] is not None
        assert done["finished_at"] is not None
        assert done["execution_id"] is None and done["step_id"] is None


def test_list_jobs_filters_and_pagination(server: Server) -> None:
    _, token = server.new_user()
    with api(server, token) as client:
        echoes = [submit(client, {"task": "echo", "input": {"text": str(i)}}) for i in range(5)]
        add = submit(client, {"task": "add", "input": {"a": 1, "b": 1}})
        ids = {j["id"] for j in [*echoes, add]}
        for job_id in ids:
            assert wait_job(client, job_id, status_is("completed", "failed"))["status"] == (
                "completed"
            )

        seen: list[dict[str, Any]] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor is not None:
                params["cursor"] = cursor
            page = client.get(f"{API}/jobs", params=params)
            assert page.status_code == 200, page.text
            body = page.json()
            assert set(body) == {"items", "next_cursor"}
            assert len(body["items"]) <= 2
            seen.extend(body["items"])
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
            assert pages < 10, "pagination does not end"
        seen_ids = [j["id"] for j in seen]
        assert len(seen_ids) == len(set(seen_ids)), "a job appears on two pages"
        assert set(seen_ids) == ids
        assert pages >= 3
        created = [j["created_at"] for j in seen]
        assert created == sorted(created, reverse=True), "not newest first"

        by_task = client.get(f"{API}/jobs", params={"task": "echo", "limit": 100}).json()
        assert {j["id"] for j in by_task["items"]} == {j["id"] for j in echoes}
        completed = client.get(f"{API}/jobs", params={"status": "completed"}).json()
        assert {j["id"] for j in completed["items"]} == ids
        assert client.get(f"{API}/jobs", params={"status": "queued"}).json()["items"] == []
        by_queue = client.get(f"{API}/jobs", params={"queue": "default", "limit": 100}).json()
        assert {j["id"] for j in by_queue["items"]} == ids
        other_queue = client.get(f"{API}/jobs", params={"queue": "elsewhere"}).json()
        assert other_queue["items"] == []
        future = client.get(f"{API}/jobs", params={"created_after": "2999-01-01T00:00:00Z"})
        assert future.status_code == 200, future.text
        assert future.json()["items"] == []
        past = client.get(f"{API}/jobs", params={"created_before": "2000-01-01T00:00:00Z"})
        assert past.json()["items"] == []

        bad = assert_problem(client.get(f"{API}/jobs", params={"status": "bogus"}), 422)
        assert any("status" in e["loc"] for e in bad["errors"]), bad
        for limit in (0, 101, 1_000_000):
            assert_problem(client.get(f"{API}/jobs", params={"limit": limit}), 422)
        assert_problem(client.get(f"{API}/jobs", params={"created_after": "yesterday"}), 422)


def test_other_users_do_not_see_my_jobs(server: Server, alice: tuple[str, str]) -> None:
    _, token = alice
    _, other = server.new_user()
    with api(server, token) as client, api(server, other) as intruder:
        job = submit(client, {"task": "add", "input": {"a": 1, "b": 2}})
        assert_problem(intruder.get(f"{API}/jobs/{job['id']}"), 404)
        assert_problem(intruder.get(f"{API}/jobs/{job['id']}/events"), 404)
        assert_problem(intruder.post(f"{API}/jobs/{job['id']}/cancel"), 404)
        listed = intruder.get(f"{API}/jobs", params={"limit": 100}).json()["items"]
        assert job["id"] not in {j["id"] for j in listed}


def test_job_events_list(server: Server, alice: tuple[str, str]) -> None:
    _, token = alice
    with api(server, token) as client:
        job = submit(client, {"task": "echo", "input": {"text": "hi"}})
        wait_job(client, job["id"], status_is("completed"))
        response = client.get(f"{API}/jobs/{job['id']}/events")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["next_cursor"] is None
        events = body["items"]
        types = [e["type"] for e in events]
        assert types[0] == "job.queued", types
        assert types.index("job.queued") < types.index("job.started") < types.index("job.completed")
        ids = [e["id"] for e in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        for event in events:
            assert set(event) >= {"id", "type", "job_id", "execution_id", "data", "created_at"}
            assert event["job_id"] == job["id"]
            assert isinstance(event["id"], int)

        first = client.get(f"{API}/jobs/{job['id']}/events", params={"limit": 1}).json()
        assert [e["id"] for e in first["items"]] == ids[:1]
        assert first["next_cursor"] is not None
        rest = client.get(
            f"{API}/jobs/{job['id']}/events", params={"after": first["next_cursor"]}
        ).json()
        assert [e["id"] for e in rest["items"]] == ids[1:]


def test_failed_job_shows_its_error_and_can_be_retried(
    server: Server, alice: tuple[str, str]
) -> None:
    _, token = alice
    with api(server, token) as client:
        job = submit(client, {"task": "boom"})
        failed = wait_job(client, job["id"], status_is("completed", "failed"))
        assert failed["status"] == "failed", failed
        assert failed["error"]["message"] == "boom"
        assert set(failed["error"]) <= {"type", "message", "reason", "details"}
        assert "traceback" not in str(failed).lower()

        retried = client.post(f"{API}/jobs/{job['id']}/retry")
        assert retried.status_code == 202, retried.text
        assert retried.json()["id"] == job["id"]
        assert retried.json()["status"] in ("queued", "active", "failed")
        again = wait_job(client, job["id"], lambda b: b["status"] == "failed" and b["attempts"])
        assert again["error"]["message"] == "boom"


def test_cancel_jobs(server: Server, alice: tuple[str, str]) -> None:
    _, token = alice
    with api(server, token) as client:
        # waiting (delayed) job: cancelled at once
        delayed = submit(client, {"task": "sleepy", "input": {"seconds": 30}, "delay_s": 600})
        assert client.get(f"{API}/jobs/{delayed['id']}").json()["status"] == "delayed"
        response = client.post(f"{API}/jobs/{delayed['id']}/cancel")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"

        # active job: asked to stop, ends cancelled
        active = submit(client, {"task": "sleepy", "input": {"seconds": 30}})
        try:
            wait_job(client, active["id"], status_is("active"))
            response = client.post(f"{API}/jobs/{active['id']}/cancel")
            assert response.status_code == 200, response.text
            assert response.json()["status"] in ("active", "cancelled")
            assert response.json()["cancel_requested"] is True
            cancelled = wait_job(client, active["id"], status_is("cancelled", "completed"))
        finally:
            client.post(f"{API}/jobs/{active['id']}/cancel")
        assert cancelled["status"] == "cancelled", cancelled
        assert cancelled["finished_at"] is not None

        # cancelling again answers the job unchanged
        again = client.post(f"{API}/jobs/{active['id']}/cancel")
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "cancelled"
        assert again.json()["finished_at"] == cancelled["finished_at"]
        events = client.get(f"{API}/jobs/{active['id']}/events").json()["items"]
        assert [e["type"] for e in events].count("job.cancelled") == 1

        # a completed job cannot be cancelled
        done = submit(client, {"task": "add", "input": {"a": 1, "b": 1}})
        wait_job(client, done["id"], status_is("completed"))
        conflict = assert_problem(client.post(f"{API}/jobs/{done['id']}/cancel"), 409)
        assert conflict["detail"]
        assert client.get(f"{API}/jobs/{done['id']}").json()["status"] == "completed"


def test_idempotency_key(server: Server) -> None:
    _, token = server.new_user()
    _, other = server.new_user()
    key = f"order-{uuid.uuid4().hex}"
    body = {"task": "add", "input": {"a": 40, "b": 2}}
    with api(server, token) as client, api(server, other) as other_client:
        first = client.post(f"{API}/jobs", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == 202, first.text
        repeat = client.post(f"{API}/jobs", json=body, headers={"Idempotency-Key": key})
        assert repeat.status_code == 200, repeat.text
        assert repeat.json()["id"] == first.json()["id"]

        changed = client.post(
            f"{API}/jobs",
            json={"task": "add", "input": {"a": 1, "b": 2}},
            headers={"Idempotency-Key": key},
        )
        assert_problem(changed, 422)

        theirs = other_client.post(f"{API}/jobs", json=body, headers={"Idempotency-Key": key})
        assert theirs.status_code == 202, theirs.text
        assert theirs.json()["id"] != first.json()["id"]
        assert theirs.json()["owner"] != first.json()["owner"]

        mine = client.get(f"{API}/jobs", params={"limit": 100}).json()["items"]
        assert [j["id"] for j in mine] == [first.json()["id"]]

        assert_problem(
            client.post(f"{API}/jobs", json=body, headers={"Idempotency-Key": "short"}), 422
        )
        assert_problem(
            client.post(
                f"{API}/jobs", json=body, headers={"Idempotency-Key": "bad key with spaces"}
            ),
            422,
        )


# -- workflows and executions ------------------------------------------------------------------


def test_workflows_list_get_and_step_schema(server: Server, alice: tuple[str, str]) -> None:
    _, token = alice
    with api(server, token) as client:
        listed = client.get(f"{API}/workflows")
        assert listed.status_code == 200, listed.text
        by_name = {w["name"]: w for w in listed.json()}
        assert {"pipeline", "greeting", "waiting"} <= set(by_name)
        pipeline = by_name["pipeline"]
        assert pipeline["description"] == "Two echo steps in a row."
        assert pipeline["steps"] == [
            {"id": "first", "task": "echo", "depends_on": []},
            {"id": "second", "task": "echo", "depends_on": ["first"]},
        ]

        one = client.get(f"{API}/workflows/pipeline")
        assert one.status_code == 200, one.text
        assert one.json() == pipeline

        schema = client.get(f"{API}/workflows/pipeline/steps/first/schema")
        assert schema.status_code == 200, schema.text
        assert schema.json().get("type") == "string"  # echo returns a str

        assert_problem(client.get(f"{API}/workflows/nope"), 404)
        assert_problem(client.get(f"{API}/workflows/pipeline/steps/nope/schema"), 404)


def test_execution_of_a_workflow_runs_its_steps(server: Server, alice: tuple[str, str]) -> None:
    user_id, token = alice
    with api(server, token) as client:
        execution = start(client, {"workflow": "pipeline"})
        assert execution["workflow"] == "pipeline"
        assert execution["mode"] == "auto"
        assert execution["owner"] == user_id
        assert execution["progress"]["total"] == 2

        done = wait_json(
            client,
            f"{API}/executions/{execution['id']}",
            status_is("completed", "failed", "cancelled"),
        )
        assert done["status"] == "completed", done
        assert done["output"] is not None
        assert "second" in done["output"]  # the sink step's result
        assert done["progress"]["completed"] == 2
        assert done["progress"]["percent"] == 100.0
        assert done["finished_at"] is not None

        response = client.get(f"{API}/executions/{execution['id']}/steps")
        assert response.status_code == 200, response.text
        steps = response.json()
        assert [s["step_id"] for s in steps] == ["first", "second"]
        required = {
            "step_id",
            "task",
            "status",
            "depends_on",
            "attempts",
            "job_id",
            "result",
            "error",
            "clarification",
        }
        for step in steps:
            assert required <= set(step), step
            assert step["status"] == "completed"
            assert step["error"] is None and step["clarification"] is None
            assert step["attempts"] == 1
        first, second = steps
        assert first["depends_on"] == [] and second["depends_on"] == ["first"]
        assert first["result"] == "one"
        assert done["output"]["second"] == second["result"]
        job = client.get(f"{API}/jobs/{first['job_id']}").json()
        assert job["execution_id"] == execution["id"] and job["step_id"] == "first"

        events = client.get(f"{API}/executions/{execution['id']}/events").json()["items"]
        types = [e["type"] for e in events]
        assert "execution.completed" in types
        assert types.count("job.completed") == 2
        assert all(e["execution_id"] == execution["id"] for e in events)

        listed = client.get(
            f"{API}/executions", params={"workflow": "pipeline", "status": "completed"}
        )
        assert listed.status_code == 200, listed.text
        assert execution["id"] in {e["id"] for e in listed.json()["items"]}
        assert_problem(client.get(f"{API}/executions", params={"status": "bogus"}), 422)

        # a finished execution cannot be cancelled
        assert_problem(client.post(f"{API}/executions/{execution['id']}/cancel"), 409)


def test_manual_mode_runs_one_stage_at_a_time(server: Server, alice: tuple[str, str]) -> None:
    _, token = alice
    with api(server, token) as client:
        execution = start(client, {"workflow": "pipeline", "mode": "manual"})
        assert execution["mode"] == "manual"
        eid = execution["id"]
        time.sleep(0.3)  # nothing runs by itself in manual mode
        assert {s["status"] for s in steps_by_id(client, eid).values()} == {"pending"}

        assert_problem(client.post(f"{API}/executions/{eid}/steps/nope/run"), 404)
        blocked = assert_problem(client.post(f"{API}/executions/{eid}/steps/second/run"), 409)
        assert "first" in blocked["detail"]

        response = client.post(f"{API}/executions/{eid}/steps/first/run")
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["step_id"] == "first" and job["execution_id"] == eid
        assert response.headers["location"].endswith(f"{API}/jobs/{job['id']}")
        finished = wait_job(client, job["id"], status_is("completed", "failed"))
        assert finished["status"] == "completed", finished
        assert finished["result"] == "one"

        assert_problem(client.post(f"{API}/executions/{eid}/steps/first/run"), 409)
        assert client.get(f"{API}/executions/{eid}").json()["status"] != "completed"

        response = client.post(
            f"{API}/executions/{eid}/steps/second/run", json={"input": {"text": "two"}}
        )
        assert response.status_code == 202, response.text
        second = wait_job(client, response.json()["id"], status_is("completed", "failed"))
        assert second["result"] == "two"
        done = wait_json(client, f"{API}/executions/{eid}", status_is("completed", "failed"))
        assert done["status"] == "completed", done
        assert done["output"] == {"second": "two"}


def test_clarification_round_trip(server: Server) -> None:
    _, token = server.new_user()
    with api(server, token) as client:
        execution = start(client, {"workflow": "greeting"})
        eid = execution["id"]
        waiting = wait_json(
            client,
            f"{API}/executions/{eid}",
            status_is("awaiting_input", "completed", "failed", "cancelled"),
        )
        assert waiting["status"] == "awaiting_input", waiting

        pending = client.get(f"{API}/clarifications", params={"status": "pending"})
        assert pending.status_code == 200, pending.text
        items = pending.json()["items"]
        assert [(c["execution_id"], c["step_id"]) for c in items] == [(eid, "ask")]
        assert_problem(client.get(f"{API}/clarifications", params={"status": "bogus"}), 422)

        url = f"{API}/executions/{eid}/steps/ask/clarification"
        clarification = client.get(url)
        assert clarification.status_code == 200, clarification.text
        asked = clarification.json()
        assert asked["status"] == "pending"
        assert asked["id"] == items[0]["id"]
        assert [(q["id"], q["text"]) for q in asked["questions"]] == [("name", "Your name?")]
        assert asked["questions"][0]["schema"]["type"] == "string"
        step = steps_by_id(client, eid)["ask"]
        assert step["status"] == "awaiting_input"
        assert step["clarification"]["id"] == asked["id"]

        invalid = assert_problem(client.post(url, json={"answers": {"name": "x"}}), 422)
        assert invalid["errors"], invalid
        assert any("name" in e["loc"] for e in invalid["errors"]), invalid
        assert client.get(url).json()["status"] == "pending"
        assert client.get(f"{API}/executions/{eid}").json()["status"] == "awaiting_input"

        answered = client.post(url, json={"answers": {"name": "Ada"}})
        assert answered.status_code == 200, answered.text
        assert answered.json()["status"] == "answered"
        assert answered.json()["answers"] == {"name": "Ada"}

        done = wait_json(
            client, f"{API}/executions/{eid}", status_is("completed", "failed", "cancelled")
        )
        assert done["status"] == "completed", done
        assert steps_by_id(client, eid)["ask"]["result"] == "hello Ada"
        assert "after" in done["output"]
        assert client.get(f"{API}/clarifications").json()["items"] == []
        answered_list = client.get(f"{API}/clarifications", params={"status": "answered"})
        assert [c["id"] for c in answered_list.json()["items"]] == [asked["id"]]
        events = client.get(f"{API}/executions/{eid}/events").json()["items"]
        types = [e["type"] for e in events]
        assert "clarification.requested" in types and "clarification.answered" in types


def test_cancel_and_retry_an_execution(server: Server, alice: tuple[str, str]) -> None:
    _, token = alice
    with api(server, token) as client:
        execution = start(client, {"workflow": "waiting"})
        eid = execution["id"]
        try:
            wait_steps(client, eid, lambda s: s["wait"]["status"] == "active")
            response = client.post(f"{API}/executions/{eid}/cancel")
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "cancelled"
            again = client.post(f"{API}/executions/{eid}/cancel")
            assert again.status_code == 200, again.text
            assert again.json()["status"] == "cancelled"
            steps = wait_steps(
                client, eid, lambda s: all(x["status"] != "active" for x in s.values())
            )
            assert {s["status"] for s in steps.values()} == {"cancelled"}

            retried = client.post(f"{API}/executions/{eid}/retry")
            assert retried.status_code == 202, retried.text
            assert retried.json()["status"] in ("queued", "running")
            wait_steps(client, eid, lambda s: s["wait"]["status"] == "active")
        finally:
            client.post(f"{API}/executions/{eid}/cancel")
            wait_steps(client, eid, lambda s: all(x["status"] != "active" for x in s.values()))
        assert client.get(f"{API}/executions/{eid}").json()["status"] == "cancelled"


# -- queues, workers, users, health ------------------------------------------------------------


def test_paused_queue_holds_jobs_until_resumed(server: Server, alice: tuple[str, str]) -> None:
    _, token = alice
    queue = f"paused-{uuid.uuid4().hex[:8]}"
    with api(server, token) as client, api(server, server.admin_token) as admin:
        paused = admin.post(f"{API}/queues/{queue}/pause")
        assert paused.status_code == 200, paused.text
        assert paused.json()["name"] == queue and paused.json()["paused"] is True
        try:
            job = submit(client, {"task": "add", "input": {"a": 1, "b": 1}, "queue": queue})
            time.sleep(1.0)
            assert client.get(f"{API}/jobs/{job['id']}").json()["status"] == "queued"
            stats = client.get(f"{API}/queues/{queue}").json()
            assert stats["paused"] is True
            assert stats["counts"]["queued"] == 1
        finally:
            resumed = admin.post(f"{API}/queues/{queue}/resume")
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["paused"] is False
        done = wait_job(client, job["id"], status_is("completed", "failed"))
        assert done["status"] == "completed" and done["result"] == 2
        assert client.get(f"{API}/queues/{queue}").json()["counts"]["completed"] == 1


def test_queue_stats(server: Server, alice: tuple[str, str]) -> None:
    _, token = alice
    with api(server, token) as client:
        job = submit(client, {"task": "add", "input": {"a": 1, "b": 1}})
        wait_job(client, job["id"], status_is("completed"))
        listed = client.get(f"{API}/queues")
        assert listed.status_code == 200, listed.text
        by_name = {q["name"]: q for q in listed.json()["items"]}
        assert "default" in by_name
        one = client.get(f"{API}/queues/default")
        assert one.status_code == 200, one.text
        stats = one.json()
        assert set(stats) >= {"name", "paused", "counts", "avg_run_ms", "success_rate"}
        assert stats["name"] == "default"
        assert set(stats["counts"]) == COUNT_KEYS
        assert stats["counts"]["completed"] >= 1
        assert all(isinstance(v, int) and v >= 0 for v in stats["counts"].values())
        assert stats["avg_run_ms"] is not None and stats["avg_run_ms"] >= 0
        assert stats["success_rate"] is not None and 0 <= stats["success_rate"] <= 1
        assert_problem(client.get(f"{API}/queues/no-such-queue"), 404)


def test_workers_register_heartbeat_and_deregister(server: Server) -> None:
    _, worker_token = server.new_user("worker")
    _, other_worker = server.new_user("worker")
    worker_id = f"ext-{uuid.uuid4().hex[:12]}"
    with (
        api(server, server.admin_token) as admin,
        api(server, worker_token) as agent,
        api(server, other_worker) as stranger,
    ):
        listed = admin.get(f"{API}/workers")
        assert listed.status_code == 200, listed.text
        fleet = listed.json()
        assert fleet["count"] == len(fleet["workers"]) >= 1
        embedded = [w for w in fleet["workers"] if w["kind"] == "embedded"]
        assert embedded, fleet
        assert embedded[0]["status"] in ("active", "idle", "busy")
        assert embedded[0]["max_concurrency"] >= 1

        response = agent.post(
            f"{API}/workers",
            json={
                "worker_id": worker_id,
                "hostname": "gpu-box",
                "pid": 4242,
                "queues": ["default"],
                "capabilities": ["echo"],
                "max_concurrency": 4,
            },
        )
        assert response.status_code == 201, response.text
        assert response.headers["location"].endswith(f"{API}/workers/{worker_id}")
        registered = response.json()
        assert registered["worker_id"] == worker_id
        assert registered["hostname"] == "gpu-box"
        assert registered["current_load"] == 0
        assert registered["max_concurrency"] == 4

        beat = agent.post(f"{API}/workers/{worker_id}/heartbeat", json={"current_load": 3})
        assert beat.status_code == 200, beat.text
        assert beat.json()["current_load"] == 3
        assert beat.json()["utilization"] == pytest.approx(0.75, abs=0.01)
        assert agent.get(f"{API}/workers/{worker_id}").json()["current_load"] == 3
        ids = {w["worker_id"] for w in admin.get(f"{API}/workers").json()["workers"]}
        assert worker_id in ids

        # another worker account cannot touch it
        assert_problem(stranger.post(f"{API}/workers/{worker_id}/heartbeat", json={}), 404)
        assert_problem(stranger.delete(f"{API}/workers/{worker_id}"), 404)

        gone = agent.delete(f"{API}/workers/{worker_id}")
        assert gone.status_code == 204, gone.text
        assert gone.content == b""
        assert_problem(agent.get(f"{API}/workers/{worker_id}"), 404)
        ids = {w["worker_id"] for w in admin.get(f"{API}/workers").json()["workers"]}
        assert worker_id not in ids


def test_users_create_list_and_duplicate(server: Server) -> None:
    name = f"dup-{uuid.uuid4().hex[:8]}"
    body = {"username": name, "password": "a-long-password", "roles": ["user"]}
    with api(server, server.admin_token) as admin:
        created = admin.post(f"{API}/users", json=body)
        assert created.status_code == 201, created.text
        user = created.json()
        assert user["username"] == name and user["roles"] == ["user"]
        assert user["disabled"] is False
        assert created.headers["location"].endswith(f"{API}/users/{user['id']}")
        duplicate = assert_problem(admin.post(f"{API}/users", json=body), 409)
        assert name in duplicate["detail"]
        listed = admin.get(f"{API}/users")
        assert listed.status_code == 200, listed.text
        assert [u["id"] for u in listed.json() if u["username"] == name] == [user["id"]]
        assert admin.get(f"{API}/users/{user['id']}").json()["username"] == name
        me = admin.get(f"{API}/me").json()
        assert me["username"] == "admin" and "admin" in me["roles"]


def test_health_endpoints_and_metrics(server: Server, alice: tuple[str, str]) -> None:
    _, token = alice
    with api(server, token) as client, api(server, None) as anonymous:
        health = client.get(f"{API}/health")
        assert health.status_code == 200, health.text
        report = health.json()
        assert report["healthy"] is True
        assert set(report["components"]) >= {"store", "queue", "workers"}
        assert report["components"]["store"] == "ok"
        assert report["workers"]["total"] >= 1
        assert 0 <= report["workers"]["utilization_percent"] <= 100

        assert anonymous.get("/healthz").status_code == 200
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200, ready.text

        metrics = anonymous.get("/metrics")
        assert metrics.status_code == 200, metrics.text
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        assert "conveyor_http_requests_total{" in text
        assert "# TYPE conveyor_queue_jobs gauge" in text
        assert "# TYPE conveyor_workers gauge" in text
        assert token not in text
