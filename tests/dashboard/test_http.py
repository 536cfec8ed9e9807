"""The dashboard over plain HTTP (no browser), on SQLite and PostgreSQL: sessions,
cookies, CSRF, the CSP, roles and ownership."""

from __future__ import annotations

import re
import time
import uuid

import httpx2 as httpx
import pytest

from tests.dashboard.conftest import (
    API,
    CSP,
    Account,
    Web,
    api_start,
    api_wait,
    csrf_of,
    new_account,
)
from tests.servers import Server

SSE = {"Accept": "text/event-stream"}
#: specific enough (a focus is given) that the research runs without asking
QUESTION = {"question": "How do agents use tools?", "focus": "tool use"}


def cookie_header(response: httpx.Response, name: str) -> str:
    found = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    assert len(found) == 1, response.headers.get_list("set-cookie")
    return found[0]


def test_pages_redirect_to_sign_in(any_server: Server) -> None:
    with httpx.Client(base_url=any_server.base, follow_redirects=False) as anonymous:
        page = anonymous.get("/executions?status=failed")
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=%2Fexecutions%3Fstatus%3Dfailed"
        # htmx fragment requests get the redirect as a header htmx follows
        fragment = anonymous.get("/workers/table", headers={"HX-Request": "true"})
        assert fragment.status_code == 204
        assert fragment.headers["hx-redirect"].startswith("/login?next=")
        # and a forged cookie is no session
        anonymous.cookies.set("conveyor_session", "eyJhbGciOiJIUzI1NiJ9.e30.x")
        assert anonymous.get("/executions").status_code == 303


def test_session_cookie_is_httponly_and_samesite_strict(any_server: Server) -> None:
    account = new_account(any_server)
    with Web(any_server) as web:
        form = web.get("/login")
        nonce = cookie_header(form, "conveyor_login_nonce")
        assert "HttpOnly" in nonce and "SameSite=strict" in nonce
        signed_in = web.sign_in(account)
        session = cookie_header(signed_in, "conveyor_session")
        assert "HttpOnly" in session
        assert "SameSite=strict" in session
        assert "Path=/" in session
        assert "Max-Age=" in session
        assert "Secure" not in session  # plain http here; https requests get Secure
        signed_out = web.post("/logout")
        assert signed_out.status_code == 303
        cleared = cookie_header(signed_out, "conveyor_session")
        assert 'conveyor_session=""' in cleared and "Max-Age=0" in cleared
        assert web.get("/executions").status_code == 303


def test_signing_out_ends_the_session_everywhere(any_server: Server) -> None:
    """A copy of the session cookie (another tab, a stolen value) stops working too,
    on the pages and on the API."""
    account = new_account(any_server)
    with Web(any_server) as web:
        signed_in = web.sign_in(account)
        token = signed_in.cookies["conveyor_session"]
        with httpx.Client(base_url=any_server.base, follow_redirects=False) as copy:
            copy.cookies.set("conveyor_session", token)
            assert copy.get("/executions").status_code == 200
            assert web.post("/logout").status_code == 303
            assert copy.get("/executions").status_code == 303
            bearer = {"Authorization": f"Bearer {token}"}
            assert copy.get(f"{API}/me", headers=bearer).status_code == 401


def test_sign_in_needs_the_form_token(any_server: Server) -> None:
    account = new_account(any_server)
    credentials = {"username": account.username, "password": account.password}
    with Web(any_server) as web:
        form = web.get("/login")
        missing = web.http.post("/login", data=credentials)
        assert missing.status_code == 403
        assert "conveyor_session" not in missing.headers.get("set-cookie", "")
        forged = web.http.post("/login", data={**credentials, "csrf_token": "0" * 64})
        assert forged.status_code == 403
        wrong_password = web.http.post(
            "/login", data={**credentials, "password": "nope", "csrf_token": csrf_of(form.text)}
        )
        assert wrong_password.status_code == 401
        assert "Wrong username or password." in wrong_password.text
        ok = web.http.post("/login", data={**credentials, "csrf_token": csrf_of(form.text)})
        assert ok.status_code == 303
        # the next page is only ever a local path
        hostile = web.http.get("/login?next=//evil.example/")
        assert hostile.status_code == 303 and hostile.headers["location"] == "/executions"


def test_posts_without_the_sessions_csrf_token_are_refused(any_server: Server) -> None:
    account = new_account(any_server)
    other = new_account(any_server)
    started = api_start(any_server, account.token, "countdown", {"seconds": 30})
    cancel = f"/executions/{started['id']}/cancel"
    with Web(any_server) as web, Web(any_server) as elsewhere:
        web.sign_in(account)
        elsewhere.sign_in(other)
        assert web.post(cancel, csrf=False).status_code == 403
        assert web.post(cancel, {"csrf_token": "f" * 64}).status_code == 403
        # another session's token does not fit this session
        assert web.post(cancel, {"csrf_token": elsewhere.csrf}).status_code == 403
        # a cross-site form post is refused even with the token
        cross = web.http.post(
            cancel, data={"csrf_token": web.csrf}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert cross.status_code == 403
        with any_server.client(account.token) as api:
            still = api.get(f"{API}/executions/{started['id']}").json()["status"]
            assert still in ("queued", "running")
        # with the token it works
        done = web.post(cancel)
        assert done.status_code == 303
        assert done.headers["location"] == f"/executions/{started['id']}?notice=cancelled"
    assert api_wait(any_server, account.token, started["id"])["status"] == "cancelled"


def test_every_page_has_the_strict_csp(any_server: Server) -> None:
    account = new_account(any_server, "admin")
    started = api_start(any_server, account.token, "research", QUESTION)
    finished = api_wait(any_server, account.token, started["id"])
    assert finished["status"] == "completed"
    with any_server.client(account.token) as api:
        step_job = api.get(f"{API}/executions/{started['id']}/steps").json()[0]["job_id"]
        document = api.get(f"{API}/documents").json()["items"][0]["id"]
    pages = [
        "/executions",
        f"/executions/{started['id']}",
        f"/executions/{started['id']}/live",
        "/workflows/research/start",
        "/clarifications",
        "/jobs",
        f"/jobs/{step_job}",
        f"/jobs/{step_job}/live",
        "/workers",
        "/workers/table",
        "/queues",
        "/queues/table",
        "/documents",
        f"/documents/{document}",
        f"/documents/{document}/versions/1",
        "/costs",
        f"/executions/{uuid.uuid4()}",  # a 404 page
    ]
    with Web(any_server) as web:
        assert web.get("/login").headers["content-security-policy"] == CSP
        web.sign_in(account)
        for path in pages:
            response = web.get(path)
            assert response.status_code in (200, 404), (path, response.status_code)
            assert response.headers["content-security-policy"] == CSP, path
            assert response.headers["cache-control"] == "no-store", path
            assert response.headers["x-frame-options"] == "DENY", path
            # nothing the CSP would refuse: no inline script, handler or style
            assert not re.search(r"<script(?![^>]*\ssrc=)", response.text), path
            assert not re.search(r"\s(on[a-z]+|style)=", response.text), path
        assert web.post("/logout", csrf=False).headers["content-security-policy"] == CSP
    static = httpx.get(f"{any_server.base}/static/htmx.min.js")
    assert static.status_code == 200 and "htmx" in static.text


def test_admin_actions_are_refused_to_users(any_server: Server) -> None:
    user = new_account(any_server)
    api_start(any_server, user.token, "echo", {"text": "hi"})
    with Web(any_server) as web:
        web.sign_in(user)
        for action in ("pause", "resume"):
            refused = web.post(f"/queues/default/{action}")
            assert refused.status_code == 403, action
            assert "admin role" in refused.text
        clean = web.post("/queues/default/clean", {"status": "completed", "older_than_s": "0"})
        assert clean.status_code == 403
        queues = web.get("/queues")
        assert queues.status_code == 200
        assert "/pause" not in queues.text and "/clean" not in queues.text
        assert web.get("/workers").status_code == 403
    with any_server.client(any_server.admin_token) as admin:
        assert admin.get(f"{API}/queues/default").json()["paused"] is False


def test_an_admin_cleans_a_queue(any_server: Server) -> None:
    admin = new_account(any_server, "admin")
    queue = f"clean-{uuid.uuid4().hex[:6]}"
    with any_server.client(admin.token) as api:
        job = api.post(f"{API}/jobs", json={"task": "echo", "input": {"text": "x"}, "queue": queue})
        assert job.status_code == 202
    api_wait_job(any_server, admin.token, job.json()["id"])
    with Web(any_server) as web:
        web.sign_in(admin)
        bad = web.post(f"/queues/{queue}/clean", {"status": "active", "older_than_s": "0"})
        assert bad.status_code == 422
        cleaned = web.post(f"/queues/{queue}/clean", {"status": "completed", "older_than_s": "0"})
        assert cleaned.status_code == 303
        assert cleaned.headers["location"] == "/queues?notice=cleaned&deleted=1"
        assert "Deleted 1 job." in web.get(cleaned.headers["location"]).text


def api_wait_job(server: Server, token: str, job_id: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    with server.client(token) as api:
        while api.get(f"{API}/jobs/{job_id}").json()["status"] != "completed":
            assert time.monotonic() < deadline, "the job never completed"
            time.sleep(0.05)


def test_another_users_items_answer_404(any_server: Server) -> None:
    owner = new_account(any_server)
    stranger = new_account(any_server)
    started = api_start(any_server, owner.token, "research", QUESTION)
    api_wait(any_server, owner.token, started["id"])
    with any_server.client(owner.token) as api:
        job = api.get(f"{API}/executions/{started['id']}/steps").json()[0]["job_id"]
        document = api.get(f"{API}/documents").json()["items"][0]["id"]
    with Web(any_server) as web:
        web.sign_in(stranger)
        for path in (
            f"/executions/{started['id']}",
            f"/executions/{started['id']}/live",
            f"/jobs/{job}",
            f"/jobs/{job}/live",
            f"/documents/{document}",
            f"/documents/{document}/diff",
        ):
            response = web.get(path)
            assert response.status_code == 404, path
            assert "Not found" in response.text
        assert web.post(f"/executions/{started['id']}/retry").status_code == 404
        stream = web.get(f"{API}/executions/{started['id']}/events", headers=SSE)
        assert stream.status_code == 404
        assert started["id"] not in web.get("/executions").text
        assert job not in web.get("/jobs").text
        assert document not in web.get("/documents").text
    with Web(any_server) as web:
        web.sign_in(owner)
        assert web.get(f"/executions/{started['id']}").status_code == 200


def test_another_users_questions_are_not_theirs_to_answer(any_server: Server) -> None:
    owner = new_account(any_server)
    stranger = new_account(any_server)
    asking = api_start(any_server, owner.token, "research", {"question": "AI costs"})
    with any_server.client(owner.token) as api:
        deadline = time.monotonic() + 20
        while api.get(f"{API}/clarifications").json()["items"] == []:
            assert time.monotonic() < deadline, "the research never asked"
            time.sleep(0.05)
    answer = {"in.focus": "inference cost", "in.audience": "general"}
    with Web(any_server) as web:
        web.sign_in(stranger)
        assert asking["id"] not in web.get("/clarifications").text
        refused = web.post(f"/clarifications/{asking['id']}/refine_question", answer)
        assert refused.status_code == 404
    with Web(any_server) as web:
        web.sign_in(owner)
        assert asking["id"] in web.get("/clarifications").text
        invalid = web.post(f"/clarifications/{asking['id']}/refine_question", {"in.focus": "x"})
        assert invalid.status_code == 422 and "too short" in invalid.text
        answered = web.post(f"/clarifications/{asking['id']}/refine_question", answer)
        assert answered.status_code == 303
        again = web.post(f"/clarifications/{asking['id']}/refine_question", answer)
        assert again.status_code == 409
    assert api_wait(any_server, owner.token, asking["id"])["status"] == "completed"


def test_a_start_form_sent_twice_starts_one_execution(any_server: Server) -> None:
    account = new_account(any_server)
    with Web(any_server) as web:
        web.sign_in(account)
        form = web.get("/workflows/echo/start").text
        found = re.search(r'name="submission" value="([^"]+)"', form)
        assert found is not None
        sent = {"in.text": "once", "submission": found.group(1)}
        first = web.post("/workflows/echo/start", sent)
        second = web.post("/workflows/echo/start", sent)
        assert first.status_code == second.status_code == 303
        assert first.headers["location"] == second.headers["location"]
        changed = web.post("/workflows/echo/start", {**sent, "in.text": "twice"})
        assert changed.status_code == 409
        assert "already used" in changed.text
        assert found.group(1) not in changed.text  # a fresh key for the next try


def test_event_streams_accept_the_session_cookie(any_server: Server) -> None:
    account = new_account(any_server)
    started = api_start(any_server, account.token, "echo", {"text": "streamed"})
    api_wait(any_server, account.token, started["id"])
    with Web(any_server) as web:
        web.sign_in(account)
        path = f"{API}/executions/{started['id']}/events"
        with web.http.stream("GET", path, headers=SSE) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            # read up to the last event (not to the end of the stream)
            types = []
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    types.append(line.removeprefix("event: "))
                if types[-1:] == ["execution.completed"]:
                    break
        assert types[0] == "execution.queued" and "job.completed" in types
        # the JSON routes stay bearer-only
        assert web.get(f"{API}/executions/{started['id']}/events").status_code == 401
        assert web.get(f"{API}/executions/{started['id']}").status_code == 401


def test_the_start_form_shows_problems_by_their_fields(any_server: Server) -> None:
    account = new_account(any_server)
    with Web(any_server) as web:
        web.sign_in(account)
        form = web.get("/workflows/data_pipeline/start")
        assert 'name="in.count"' in form.text and 'value="100"' in form.text
        not_a_number = web.post("/workflows/data_pipeline/start", {"in.count": "many"})
        assert not_a_number.status_code == 422
        assert "must be a whole number" in not_a_number.text
        assert 'value="many"' in not_a_number.text
        missing = web.post("/workflows/research/start", {"in.question": ""})
        assert missing.status_code == 422
        assert re.search(r'data-field="question".*?Field required', missing.text, re.S)
        bad_json = web.post("/workflows/research/start", {"raw_input": "{nope"})
        assert bad_json.status_code == 422 and "not valid JSON" in bad_json.text
        assert web.get("/workflows/nope/start").status_code == 404
        started = web.post("/workflows/data_pipeline/start", {"in.count": "10"})
        assert started.status_code == 303
    execution_id = started.headers["location"].split("/")[2].split("?")[0]
    done = api_wait(any_server, account.token, execution_id)
    assert done["status"] == "completed"
    assert done["output"]["merge"]["sum_of_squares"] == sum(n * n for n in range(1, 11))


def test_filters_and_pages(any_server: Server) -> None:
    account = new_account(any_server)
    ids = [api_start(any_server, account.token, "echo", {"text": str(i)})["id"] for i in range(27)]
    for execution_id in ids:
        api_wait(any_server, account.token, execution_id)
    with Web(any_server) as web:
        web.sign_in(account)
        first = web.get("/executions?workflow=echo&status=completed")
        assert first.status_code == 200
        assert first.text.count("data-execution=") == 25
        next_url = re.search(r'href="([^"]+)" rel="next"', first.text)
        assert next_url is not None
        second = web.get(next_url.group(1).replace("&amp;", "&"))
        assert second.text.count("data-execution=") == 2
        assert web.get("/executions?status=failed").text.count("data-execution=") == 0
        assert (
            web.get("/executions?from=2001-01-01&to=2001-01-02").text.count("data-execution=") == 0
        )
        assert web.get("/executions?status=bogus").status_code == 422
        assert web.get("/executions?from=yesterday").status_code == 422
        assert web.get("/jobs?task=echo").text.count("data-job=") == 25


def research(server: Server, account: Account, focus: str) -> str:
    started = api_start(
        server, account.token, "research", {"question": "How do agents use tools?", "focus": focus}
    )
    assert api_wait(server, account.token, started["id"])["status"] == "completed"
    return str(started["id"])


def test_document_versions_and_their_diff(any_server: Server) -> None:
    account = new_account(any_server)
    research(any_server, account, "tool use")
    research(any_server, account, "prompt injection")
    with any_server.client(account.token) as api:
        (document,) = api.get(f"{API}/documents").json()["items"]
    assert document["version"] == 2
    with Web(any_server) as web:
        web.sign_in(account)
        page = web.get(f"/documents/{document['id']}")
        assert "version 2" in page.text and "version 1" in page.text
        first = web.get(f"/documents/{document['id']}/versions/1")
        assert "On &#39;tool use&#39;" in first.text
        diff = web.get(f"/documents/{document['id']}/diff?from=1&to=2")
        assert diff.status_code == 200
        assert '<tr class="del">' in diff.text and '<tr class="add">' in diff.text
        assert "prompt injection" in diff.text
        assert web.get(f"/documents/{document['id']}/diff?from=1&to=9").status_code == 422
        assert web.get(f"/documents/{document['id']}/versions/9").status_code == 404


def test_costs_are_charted(any_server: Server) -> None:
    account = new_account(any_server)
    research(any_server, account, "tool use")
    with Web(any_server) as web:
        web.sign_in(account)
        page = web.get("/costs")
        assert page.status_code == 200
        assert page.text.count('<svg class="chart-svg') == 6
        assert "fake/fake-1" in page.text and ">research<" in page.text
        empty = web.get("/costs?from=2001-01-01&to=2001-01-31")
        assert empty.text.count("No usage recorded.") == 6


@pytest.mark.parametrize("path", ["/executions", "/jobs", "/clarifications", "/documents"])
def test_list_pages_render_empty(any_server: Server, path: str) -> None:
    with Web(any_server) as web:
        web.sign_in(new_account(any_server))
        page = web.get(path)
        assert page.status_code == 200
        assert 'class="empty"' in page.text
