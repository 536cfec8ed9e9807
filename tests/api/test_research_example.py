"""The research example (``examples.app:app``) end to end over real HTTP, on both backends.

A real ``conveyor serve --app examples.app:app`` per backend, with the offline fake LLM
provider (it prices its calls, so costs are real numbers). A vague question makes
``refine_question`` ask for a focus; the answer resumes the run; ``literature_scout``
makes one LLM call; ``synthesis`` saves the report as a versioned document.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import httpx2 as httpx
import pytest

from conveyor.domain.ids import new_id
from conveyor.llm.prices import BUILTIN_PRICES
from tests.api.conftest import CONVEYOR, ROOT, wait_json
from tests.conftest import reset_pg
from tests.servers import FAKE_LLM, Server, start_server, stop_server

API = "/api/v1"
EXAMPLES_APP = "examples.app:app"
VAGUE_QUESTION = "AI costs"
FOCUS = "cost-aware routing between language models"
CLEAR_QUESTION = "How do language model agents use tools safely?"


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("research-api")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'research.db'}"
    else:
        url = request.getfixturevalue("pg_url")
        reset_pg(url)
    running = start_server(url, tmp, app=EXAMPLES_APP, extra_env=FAKE_LLM)
    try:
        yield running
    finally:
        stop_server(running)


def check_response(response: httpx.Response) -> None:
    response.read()
    where = f"{response.request.method} {response.request.url}"
    assert response.status_code < 500, f"{where} -> {response.status_code}: {response.text}"
    assert "Traceback" not in response.text, f"{where} leaks a traceback"


def api(server: Server, token: str) -> httpx.Client:
    client = server.client(token)
    client.event_hooks = {"request": [], "response": [check_response]}
    return client


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    return response.json()


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def status_is(*statuses: str) -> Callable[[dict[str, Any]], bool]:
    return lambda body: body.get("status") in statuses


FINAL = ("completed", "failed", "cancelled")


def run_to_end(client: httpx.Client, execution_id: str) -> dict[str, Any]:
    done = wait_json(client, f"{API}/executions/{execution_id}", status_is(*FINAL), timeout=60)
    assert done["status"] == "completed", done
    return done


def steps_of(client: httpx.Client, execution_id: str) -> dict[str, dict[str, Any]]:
    return {s["step_id"]: s for s in ok(client.get(f"{API}/executions/{execution_id}/steps"))}


def all_events(client: httpx.Client, execution_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        page = ok(
            client.get(
                f"{API}/executions/{execution_id}/events", params={"after": after, "limit": 100}
            )
        )
        found += page["items"]
        if page["next_cursor"] is None:
            return found
        after = int(page["next_cursor"])


def fake_cost(input_tokens: int, output_tokens: int) -> float:
    price = BUILTIN_PRICES["fake-1"]
    return (input_tokens * price["input_per_mtok"] + output_tokens * price["output_per_mtok"]) / (
        1_000_000
    )


def test_research_with_a_clarification_end_to_end(server: Server) -> None:
    user_id, token = server.new_user()
    with api(server, token) as client:
        assert "research" in {w["name"] for w in ok(client.get(f"{API}/workflows"))}
        started = ok(
            client.post(
                f"{API}/executions",
                json={"workflow": "research", "input": {"question": VAGUE_QUESTION}},
            ),
            202,
        )
        eid = started["id"]
        assert started["workflow"] == "research" and started["owner"] == user_id

        # the question is vague: refine_question asks, the run waits for the answer
        waiting = wait_json(
            client, f"{API}/executions/{eid}", status_is("awaiting_input", *FINAL), timeout=30
        )
        assert waiting["status"] == "awaiting_input", waiting
        url = f"{API}/executions/{eid}/steps/refine_question/clarification"
        asked = ok(client.get(url))
        assert asked["status"] == "pending"
        assert [q["id"] for q in asked["questions"]] == ["focus", "audience"]
        assert VAGUE_QUESTION in asked["questions"][0]["text"]
        assert asked["questions"][1]["schema"]["enum"] == ["general", "expert"]
        steps = steps_of(client, eid)
        assert steps["refine_question"]["status"] == "awaiting_input"
        assert steps["literature_scout"]["status"] == "pending"

        # invalid answers are refused and change nothing
        too_short = problem(client.post(url, json={"answers": {"focus": "x"}}), 422)
        assert any("focus" in e["loc"] for e in too_short["errors"]), too_short
        problem(client.post(url, json={"answers": {"focus": FOCUS, "audience": "kids"}}), 422)
        assert ok(client.get(url))["status"] == "pending"
        assert ok(client.get(f"{API}/executions/{eid}"))["status"] == "awaiting_input"

        answered = ok(client.post(url, json={"answers": {"focus": FOCUS, "audience": "expert"}}))
        assert answered["status"] == "answered"
        assert answered["answers"] == {"focus": FOCUS, "audience": "expert"}

        done = run_to_end(client, eid)
        steps = steps_of(client, eid)
        assert {s["status"] for s in steps.values()} == {"completed"}
        refined = steps["refine_question"]["result"]
        assert (refined["question"], refined["focus"], refined["audience"]) == (
            VAGUE_QUESTION,
            FOCUS,
            "expert",
        )
        assert {"routing", "cost-aware", "costs"} <= set(refined["keywords"])
        scouted = steps["literature_scout"]["result"]
        assert scouted["searched"] == 20 and scouted["papers"]
        assert "p05" in [p["id"] for p in scouted["papers"]]  # cost-aware routing
        assert scouted["summary"]  # the LLM's text
        report = done["output"]["synthesis"]
        assert report["title"] == f"Research brief: {VAGUE_QUESTION}"
        assert report["audience"] == "expert"
        assert any(r.startswith("[p05]") for r in report["references"])

        # the report is a document of this run
        listed = ok(client.get(f"{API}/documents", params={"type": "report"}))
        (item,) = listed["items"]
        assert listed["next_cursor"] is None
        assert item["type"] == "report"
        assert (item["scope_type"], item["scope_id"]) == ("research-question", VAGUE_QUESTION)
        assert item["execution_id"] == eid and item["version"] == 1
        assert ok(client.get(f"{API}/documents", params={"type": "nothing"}))["items"] == []
        scoped = ok(
            client.get(
                f"{API}/documents",
                params={"scope_type": "research-question", "scope_id": VAGUE_QUESTION},
            )
        )
        assert [d["id"] for d in scoped["items"]] == [item["id"]]

        response = client.get(f"{API}/documents/{item['id']}")
        document = ok(response)
        assert response.headers["etag"] == '"1"'
        assert document["content_type"] == "text"
        markdown = document["content"]
        assert isinstance(markdown, str)
        assert markdown.startswith(f"# Research brief: {VAGUE_QUESTION}\n")
        assert "*Audience: expert*" in markdown
        assert "## Findings" in markdown and "## References" in markdown
        assert "[p05]" in markdown
        assert document["title"] == report["title"]
        assert document["owner"] == user_id
        (version,) = ok(client.get(f"{API}/documents/{item['id']}/versions"))
        assert version["version"] == 1
        assert version["created_by"] == "step:synthesis" and version["step_id"] == "synthesis"
        assert version["job_id"] == steps["synthesis"]["job_id"]
        first = ok(client.get(f"{API}/documents/{item['id']}/versions/1"))
        assert first["content"] == markdown and first["execution_id"] == eid

        # the one LLM call (literature_scout's summary) and what it cost
        costs = ok(client.get(f"{API}/telemetry/executions/{eid}/costs"))
        assert costs["execution_id"] == eid
        (call,) = costs["steps"]
        assert (call["step_id"], call["provider"], call["model"]) == (
            "literature_scout",
            "fake",
            "fake-1",
        )
        assert call["calls"] == 1 and costs["calls"] == 1
        assert call["input_tokens"] > 0 and call["output_tokens"] > 0
        assert call["cost_usd"] > 0
        assert call["cost_usd"] == pytest.approx(
            fake_cost(call["input_tokens"], call["output_tokens"]), abs=1e-9
        )
        assert costs["cost_usd"] == pytest.approx(call["cost_usd"], abs=1e-9)
        execution = ok(client.get(f"{API}/executions/{eid}"))
        assert execution["cost_usd"] == pytest.approx(costs["cost_usd"], abs=1e-9)

        events = all_events(client, eid)
        types = [e["type"] for e in events]
        assert "clarification.requested" in types and "clarification.answered" in types
        assert types.count("usage.recorded") == 1 and types.count("document.saved") == 1
        assert types[-1] == "execution.completed"

        summary = ok(client.get(f"{API}/telemetry/summary"))
        assert summary["calls"] == 1
        assert summary["cost_usd"] == pytest.approx(costs["cost_usd"], abs=1e-9)
        assert [w["workflow"] for w in summary["by_workflow"]] == ["research"]
        assert [(m["provider"], m["model"]) for m in summary["by_model"]] == [("fake", "fake-1")]
        later = ok(client.get(f"{API}/telemetry/summary", params={"from": "2999-01-01T00:00:00Z"}))
        assert later["calls"] == 0 and later["cost_usd"] is None
        earlier = ok(
            client.get(
                f"{API}/telemetry/summary",
                params={"from": "2000-01-01T00:00:00+02:00", "to": "2999-01-01T00:00:00Z"},
            )
        )
        assert earlier["calls"] == 1
        problem(client.get(f"{API}/telemetry/summary", params={"from": "2024-01-01T00:00:00"}), 422)
        stats = ok(client.get(f"{API}/telemetry/workflows/research/stats"))
        assert stats["runs"] == 1 and stats["by_status"] == {"completed": 1}
        assert stats["success_rate"] == 1.0 and stats["calls"] == 1
        assert stats["duration_p50_s"] is not None and stats["duration_p50_s"] > 0

    # none of it is visible to someone else
    _, other_token = server.new_user()
    with api(server, other_token) as other:
        assert ok(other.get(f"{API}/documents", params={"type": "report"}))["items"] == []
        problem(other.get(f"{API}/documents/{item['id']}"), 404)
        problem(other.get(f"{API}/documents/{item['id']}/versions"), 404)
        problem(other.get(f"{API}/telemetry/executions/{eid}/costs"), 404)
        assert ok(other.get(f"{API}/telemetry/summary"))["calls"] == 0


def test_report_edits_need_the_current_version(server: Server) -> None:
    """A clear question runs without asking; its report is then edited over HTTP with
    If-Match, and a re-run of the same question adds a version to the same document."""
    _, token = server.new_user()
    with api(server, token) as client:
        body = {"workflow": "research", "input": {"question": CLEAR_QUESTION}}
        eid = ok(client.post(f"{API}/executions", json=body), 202)["id"]
        done = run_to_end(client, eid)
        assert done["output"]["synthesis"]["audience"] == "general"
        events = all_events(client, eid)
        assert "clarification.requested" not in [e["type"] for e in events]

        (item,) = ok(client.get(f"{API}/documents", params={"type": "report"}))["items"]
        doc_url = f"{API}/documents/{item['id']}"
        original = ok(client.get(doc_url))["content"]

        edited = client.put(
            doc_url,
            json={"content": original + "\nReviewed.\n", "title": "Reviewed brief"},
            headers={"If-Match": '"1"'},
        )
        assert ok(edited)["version"] == 2
        assert edited.headers["etag"] == '"2"'
        assert edited.json()["title"] == "Reviewed brief"

        stale = problem(
            client.put(doc_url, json={"content": "overwrite"}, headers={"If-Match": '"1"'}), 412
        )
        assert "version 2" in stale["detail"]
        missing = client.put(doc_url, json={"content": "overwrite"})
        assert missing.status_code in (422, 428), missing.text
        current = ok(client.get(doc_url))
        assert current["version"] == 2 and current["content"].endswith("Reviewed.\n")

        # the same question again: the report gets a third version, from the step
        again = ok(client.post(f"{API}/executions", json=body), 202)["id"]
        run_to_end(client, again)
        versions = ok(client.get(f"{doc_url}/versions"))
        assert [v["version"] for v in versions] == [1, 2, 3]
        assert [v["created_by"] for v in versions][::2] == ["step:synthesis"] * 2
        assert versions[1]["step_id"] is None and versions[1]["job_id"] is None
        latest = ok(client.get(doc_url))
        assert latest["version"] == 3 and latest["execution_id"] in (eid, again)
        assert latest["content"] == original

    _, other_token = server.new_user()
    with api(server, other_token) as other:
        problem(other.put(doc_url, json={"content": "mine"}, headers={"If-Match": '"3"'}), 404)


def cli(*args: str, remote: tuple[str, str] | None = None, database_url: str | None = None) -> str:
    """``conveyor ARGS`` through the server (``remote`` = (url, token)) or on the database;
    the output, after checking it exited 0 without a traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    if database_url is not None:
        env["CONVEYOR_DATABASE_URL"] = database_url
    prefix = [] if remote is None else ["--server", remote[0], "--token", remote[1]]
    done = subprocess.run(
        [CONVEYOR, *prefix, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    where = f"conveyor {' '.join(args)}"
    assert done.returncode == 0, f"{where} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, f"{where}:\n{done.stderr}"
    return done.stdout


def test_readme_quick_start_through_the_cli(server: Server) -> None:
    """The README's research quick start, command by command: start a vague question,
    answer the clarification, read the report and its cost."""
    _, token = server.new_user()
    remote = (server.base, token)
    started = json.loads(
        cli(
            "run",
            "research",
            "--input",
            json.dumps({"question": VAGUE_QUESTION}),
            "--json",
            remote=remote,
        )
    )
    eid = started["id"]
    with api(server, token) as client:
        wait_json(client, f"{API}/executions/{eid}", status_is("awaiting_input"), timeout=30)
    pending = json.loads(cli("clarifications", "--json", remote=remote))
    assert [(c["execution_id"], c["step_id"]) for c in pending] == [(eid, "refine_question")]
    answers = json.dumps({"focus": FOCUS, "audience": "general"})
    cli("answer", eid, "refine_question", "--answers", answers, remote=remote)
    with api(server, token) as client:
        done = run_to_end(client, eid)

    listed = json.loads(cli("documents", "list", "--execution", eid, "--json", remote=remote))
    (report,) = listed["items"]
    assert report["type"] == "report" and report["title"] == f"Research brief: {VAGUE_QUESTION}"
    shown = cli("documents", "show", report["id"], remote=remote)
    assert f"Research brief: {VAGUE_QUESTION} (version 1)" in shown
    assert "Findings" in shown and "References" in shown
    current = json.loads(cli("documents", "show", report["id"], "--json", remote=remote))
    first = json.loads(
        cli("documents", "show", report["id"], "--version", "1", "--json", remote=remote)
    )
    assert first["content"] == current["content"] and first["step_id"] == "synthesis"
    unknown = cli("documents", "list", "--execution", new_id(), "--json", remote=remote)
    assert json.loads(unknown)["items"] == []

    costs = json.loads(cli("costs", "--json", remote=remote))
    assert costs["calls"] == 1
    assert costs["cost_usd"] == pytest.approx(done["cost_usd"], abs=1e-9)
    table = cli("costs", "--by", "model", remote=remote)
    assert "fake-1" in table

    # the same reads straight from the database (the operator's view: every owner)
    local = json.loads(
        cli("documents", "list", "--execution", eid, "--json", database_url=server.database_url)
    )
    assert [d["id"] for d in local["items"]] == [report["id"]]
