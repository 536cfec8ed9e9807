"""S11: a canary secret in a ``SecretStr`` task parameter appears nowhere.

``use_secret`` (``tests/security/app.py``) receives a fresh canary and is driven through
success, a retry whose first attempt raises with the secret in its message, a failure
whose message (and chained cause) holds the secret, a manual retry of that failed job,
a cancel while it runs, and a workflow execution whose input carries the secret. Then
the canary is searched for in the server's log (API and embedded worker), every row of
every table, the raw SQLite files, the SSE transcripts of every job and the execution,
the JSON answers (get, list, events, steps) and /metrics. It must appear nowhere, while
the task did receive it (it returns a fingerprint of the value) and the recorded errors
show ``***`` where the secret was.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from tests.security.app import fingerprint
from tests.security.conftest import (
    API,
    client,
    dump_database,
    figure,
    new_user,
    sse_transcript,
    wait_job,
)
from tests.servers import Server

TERMINAL = ("completed", "failed", "cancelled")


def submit(server: Server, token: str, secret: str, mode: str) -> str:
    with client(server, token) as http:
        response = http.post(
            f"{API}/jobs", json={"task": "use_secret", "input": {"api_key": secret, "mode": mode}}
        )
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["input"]["api_key"] == "***", body
        job_id: str = body["id"]
    return job_id


def wait_execution(server: Server, token: str, execution_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    with client(server, token) as http:
        while True:
            body: dict[str, Any] = http.get(f"{API}/executions/{execution_id}").json()
            if body["status"] in TERMINAL:
                return body
            assert time.monotonic() < deadline, body
            time.sleep(0.05)


def sqlite_files(database_url: str) -> list[Path]:
    if not database_url.startswith("sqlite"):
        return []
    path = Path(database_url.removeprefix("sqlite:///"))
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


def places(
    server: Server, token: str, job_ids: list[str], execution_ids: list[str]
) -> dict[str, str]:
    """Every text a canary could hide in, by where it came from."""
    found: dict[str, str] = {}
    with client(server, token) as http, client(server, server.admin_token) as admin:
        for job_id in job_ids:
            found[f"GET job {job_id}"] = http.get(f"{API}/jobs/{job_id}").text
            found[f"GET job {job_id} events"] = http.get(f"{API}/jobs/{job_id}/events").text
            found[f"SSE job {job_id}"] = sse_transcript(
                server, token, f"{API}/jobs/{job_id}/events"
            )
        for execution_id in execution_ids:
            base = f"{API}/executions/{execution_id}"
            found[f"GET execution {execution_id}"] = http.get(base).text
            found[f"GET execution {execution_id} steps"] = http.get(f"{base}/steps").text
            found[f"GET execution {execution_id} events"] = http.get(f"{base}/events").text
            found[f"SSE execution {execution_id}"] = sse_transcript(server, token, f"{base}/events")
        found["list jobs"] = http.get(f"{API}/jobs", params={"limit": 100}).text
        found["list jobs (admin)"] = admin.get(f"{API}/jobs", params={"limit": 100}).text
        found["list executions"] = http.get(f"{API}/executions").text
        found["queues"] = admin.get(f"{API}/queues").text
        found["metrics"] = admin.get("/metrics").text
    found["server log (API and worker)"] = server.log.read_text(errors="replace")
    for table, rows in dump_database(server.database_url).items():
        found[f"table {table}"] = rows
    for path in sqlite_files(server.database_url):
        found[f"file {path.name}"] = path.read_bytes().decode("latin-1")
    return found


def occurrences(found: dict[str, str], canary: str) -> dict[str, int]:
    return {where: n for where, text_ in found.items() if (n := text_.count(canary))}


def test_a_secret_parameter_never_leaves_its_sealed_column(app_server: Server) -> None:
    canary = f"cnry-{uuid.uuid4().hex}"
    user_id, token = new_user(app_server)
    ok = submit(app_server, token, canary, "ok")
    retried = submit(app_server, token, canary, "retry")
    failing = submit(app_server, token, canary, "fail")
    sleeping = submit(app_server, token, canary, "sleep")
    with client(app_server, token) as http:
        started = http.post(
            f"{API}/executions", json={"workflow": "secret_flow", "input": {"api_key": canary}}
        )
        assert started.status_code == 202, started.text
        assert started.json()["input"] == {"api_key": "***"}
        execution = started.json()["id"]

        wait_job(http, sleeping, ("active",))
        cancelled = http.post(f"{API}/jobs/{sleeping}/cancel")
        assert cancelled.status_code == 200, cancelled.text

        jobs = {
            name: wait_job(http, j, TERMINAL)
            for name, j in (("ok", ok), ("retry", retried), ("fail", failing), ("sleep", sleeping))
        }
        # the failed job, retried by hand: still sealed, still scrubbed
        again = http.post(f"{API}/jobs/{failing}/retry")
        assert again.status_code == 202, again.text
        time.sleep(0.2)
        jobs["fail"] = wait_job(http, failing, ("failed",))
        done = wait_execution(app_server, token, execution)
        steps = http.get(f"{API}/executions/{execution}/steps").json()

    # the task received the secret, intact
    expected = {"fingerprint": fingerprint(canary), "length": len(canary)}
    assert (jobs["ok"]["status"], jobs["ok"]["result"]) == ("completed", expected), jobs["ok"]
    assert jobs["retry"]["status"] == "completed" and jobs["retry"]["attempts"] == 2, jobs
    assert jobs["retry"]["result"] == expected
    assert done["status"] == "completed", done
    assert steps[0]["result"] == expected, steps
    assert jobs["sleep"]["status"] == "cancelled", jobs["sleep"]
    # the errors were recorded, with *** where the secret was
    failed = jobs["fail"]
    assert failed["status"] == "failed" and failed["attempts"] >= 2, failed
    assert failed["error"]["type"] == "RuntimeError", failed
    assert "api_key='***'" in failed["error"]["message"], failed["error"]

    job_ids = [ok, retried, failing, sleeping, steps[0]["job_id"]]
    found = places(app_server, token, job_ids, [execution])
    retrying_event = found[f"GET job {retried} events"]
    assert "job.retrying" in retrying_event, retrying_event
    assert "refused the key ***" in retrying_event, retrying_event
    leaked = occurrences(found, canary)
    searched_bytes = sum(len(t) for t in found.values())
    figure(
        "S11",
        f"canary occurrences {sum(leaked.values())} in {len(found)} places "
        f"({searched_bytes // 1024} KiB: log, {sum(1 for k in found if k.startswith('table'))} "
        f"tables, {sum(1 for k in found if k.startswith('SSE'))} SSE transcripts, JSON, "
        f"/metrics) after success, retry, failure, manual retry, cancel, execution "
        f"[{app_server.database_url.split(':')[0]}]",
    )
    assert not leaked, f"the canary leaked: {leaked} (user {user_id})"


def test_a_secret_in_an_ad_hoc_steps_input_is_sealed_too(app_sqlite: Server) -> None:
    """The same parameter, given in an ad-hoc execution's per-step ``input`` (the other
    way a client passes a step its arguments) instead of the execution's input."""
    app_server = app_sqlite
    canary = f"cnry-{uuid.uuid4().hex}"
    _, token = new_user(app_server)
    with client(app_server, token) as http:
        started = http.post(
            f"{API}/executions",
            json={"steps": [{"id": "use", "task": "use_secret", "input": {"api_key": canary}}]},
        )
        assert started.status_code == 202, started.text
        execution = started.json()["id"]
        done = wait_execution(app_server, token, execution)
        steps = http.get(f"{API}/executions/{execution}/steps").json()
    assert done["status"] == "completed", done
    assert steps[0]["result"] == {"fingerprint": fingerprint(canary), "length": len(canary)}
    found = places(app_server, token, [steps[0]["job_id"]], [execution])
    leaked = occurrences(found, canary)
    figure(
        "S11",
        f"ad-hoc step input: canary occurrences {sum(leaked.values())} in "
        f"{len(leaked)}/{len(found)} places {sorted(leaked)} "
        f"[{app_server.database_url.split(':')[0]}]",
    )
    assert not leaked, f"the canary leaked: {leaked}"
