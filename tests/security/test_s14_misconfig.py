"""S14 (OWASP API8): security misconfiguration.

* CORS: ``hardened`` lists one origin (``CONVEYOR_CORS_ORIGINS``); only that origin gets
  ``Access-Control-Allow-Origin`` (preflight and simple requests), look-alikes get
  nothing; ``app_server`` lists none and grants none;
* docs: ``CONVEYOR_DOCS_ENABLED=false`` on ``hardened`` hides /docs, /redoc and
  /openapi.json (404); ``app_server`` (default) serves them — the control;
* a genuine internal error: the ``broken_schema`` workflow's step returns a type with no
  JSON Schema, so ``GET .../steps/opaque/schema`` raises inside the handler. The answer
  is a bare problem+json 500; the traceback goes to the server log only;
* every error status the API produces (400, 401, 403, 404, 405, 413, 422, 429, 500) is
  ``application/problem+json`` without stack frames, SQL or driver names, and carries
  the security headers.

Malformed JSON bodies (422) are covered in depth by
tests/api/test_auth.py::test_malformed_bodies_are_422_problems.
"""

from __future__ import annotations

import json
import time

import httpx2 as httpx
import pytest

from tests.security.conftest import (
    API,
    CORS_ORIGIN,
    PROBLEM_JSON,
    WAITING_CAP,
    Servers,
    client,
    figure,
    leaks,
    new_user,
)
from tests.servers import Server

UNLISTED = [
    "https://evil.example",
    "null",
    "https://ok.example.evil.example",
    "https://evil.example/https://ok.example",
    "http://ok.example",
    "https://ok.example:8443",
    "https://xok.example",
    "https://ok.exampl",
]
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
BROKEN = f"{API}/workflows/broken_schema/steps/opaque/schema"


def cors_grants(server: Server, token: str, origin: str) -> list[str]:
    """What ``origin`` was granted, by a preflight and by simple requests."""
    granted = []
    with client(server, token) as http:
        preflight = http.options(
            f"{API}/jobs",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        simple = http.get(f"{API}/me", headers={"Origin": origin})
        anonymous = httpx.get(f"{server.base}/healthz", headers={"Origin": origin})
    for name, response in (("preflight", preflight), ("GET", simple), ("anon", anonymous)):
        allowed = response.headers.get("access-control-allow-origin")
        if allowed is not None:
            granted.append(f"{name}: {allowed}")
            assert allowed != "*", f"{origin}: a wildcard grant"
    return granted


def test_cors_grants_only_the_listed_origin(hardened_sqlite: Server) -> None:
    server = hardened_sqlite
    _, token = new_user(server)
    listed = cors_grants(server, token, CORS_ORIGIN)
    unlisted = {o: found for o in UNLISTED if (found := cors_grants(server, token, o))}
    with client(server, token) as http:
        refused = http.options(
            f"{API}/jobs",
            headers={"Origin": UNLISTED[0], "Access-Control-Request-Method": "POST"},
        )
    figure(
        "S14",
        f"CORS grants to unlisted origins {len(unlisted)}/{len(UNLISTED)} (preflight, GET, "
        f"anonymous); listed origin granted on {len(listed)}/3; unlisted preflight -> "
        f"{refused.status_code}",
    )
    assert listed == [f"preflight: {CORS_ORIGIN}", f"GET: {CORS_ORIGIN}", f"anon: {CORS_ORIGIN}"]
    assert not unlisted, unlisted


def test_without_cors_origins_no_origin_is_granted(app_sqlite: Server) -> None:
    _, token = new_user(app_sqlite)
    granted = {
        o: found for o in [CORS_ORIGIN, *UNLISTED] if (found := cors_grants(app_sqlite, token, o))
    }
    figure("S14", f"CORS grants with no origins configured {len(granted)}/{len(UNLISTED) + 1}")
    assert not granted, granted


def test_docs_are_hidden_when_disabled(hardened_sqlite: Server) -> None:
    hidden = {
        path: httpx.get(f"{hardened_sqlite.base}{path}").status_code
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")
    }
    figure("S14", f"CONVEYOR_DOCS_ENABLED=false: {hidden}")
    assert set(hidden.values()) == {404}, hidden


def test_docs_are_served_by_default(app_sqlite: Server) -> None:
    """The control for the test above: the same paths exist when docs are enabled."""
    shown = {
        path: httpx.get(f"{app_sqlite.base}{path}").status_code
        for path in ("/docs", "/openapi.json")
    }
    assert set(shown.values()) == {200}, shown


def test_an_internal_error_shows_no_internals(hardened_sqlite: Server) -> None:
    hardened = hardened_sqlite
    _, token = new_user(hardened)
    log_before = hardened.log.read_text(errors="replace").count("Traceback")
    with client(hardened, token) as http:
        response = http.get(BROKEN)
        text_ = response.text
        assert response.status_code == 500, text_
        assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
        body = response.json()
    assert set(body) <= {"type", "title", "status", "detail", "code"}, body
    internals = [
        w
        for w in ("PydanticInvalidForJsonSchema", "CallableSchema", "opaque", "pydantic")
        if w in text_
    ] + leaks(text_)
    deadline = time.monotonic() + 5
    while hardened.log.read_text(errors="replace").count("Traceback") == log_before:
        assert time.monotonic() < deadline, "the internal error was not logged"
        time.sleep(0.05)
    # the server is still fine afterwards
    assert httpx.get(f"{hardened.base}/readyz").status_code == 200
    figure(
        "S14",
        f"internal error (a task output with no JSON Schema): 500 problem+json "
        f"{json.dumps(body)}; internals in the body {len(internals)}; traceback in the "
        f"server log only",
    )
    assert not internals, f"the 500 body shows internals: {internals}: {text_}"


@pytest.fixture(scope="module")
def error_answers(servers: Servers, request: pytest.FixtureRequest) -> dict[str, httpx.Response]:
    """One answer per error the API produces, keyed by "<status> <what>"."""
    hardened = servers.get(request, "hardened", "sqlite")
    user_id, token = new_user(hardened)
    _, flooder = new_user(hardened)
    with client(hardened, flooder) as http:
        for _ in range(WAITING_CAP):
            http.post(f"{API}/jobs", json={"task": "echo", "input": {}})
    # no keep-alive: the 500 must not affect the next request
    limits = httpx.Limits(max_keepalive_connections=0)
    json_ct = {"content-type": "application/json"}
    with (
        client(hardened, token, limits=limits) as http,
        client(hardened, limits=limits) as anon,
        client(hardened, "garbage.token.here", limits=limits) as bad,
        client(hardened, flooder, limits=limits) as flood,
    ):
        return {
            "400 body not JSON": http.post(f"{API}/jobs", content=b"\xff\xfe\x00", headers=json_ct),
            "401 no token": anon.get(f"{API}/jobs"),
            "401 bad token": bad.get(f"{API}/me"),
            "401 bad token on SSE": bad.get(
                f"{API}/jobs/x/events", headers={"Accept": "text/event-stream"}
            ),
            "403 admin route": http.get(f"{API}/users"),
            "404 unknown route": http.get(f"{API}/nothing-here"),
            "404 unknown job": http.get(f"{API}/jobs/01a20000-0000-7000-8000-000000000000"),
            "404 a user id as a job id": http.get(f"{API}/jobs/{user_id}"),
            "405 method": http.delete(f"{API}/jobs"),
            "413 body": http.post(f"{API}/jobs", content=b"x" * (2 * 1024 * 1024), headers=json_ct),
            "422 malformed JSON": http.post(f"{API}/jobs", content=b'{"task": ', headers=json_ct),
            "422 unknown task": http.post(f"{API}/jobs", json={"task": "no-such-task"}),
            "422 bad query": http.get(f"{API}/jobs", params={"limit": "lots"}),
            "422 bad header": http.post(
                f"{API}/jobs", json={"task": "echo"}, headers={"Idempotency-Key": "x"}
            ),
            "429 waiting cap": flood.post(f"{API}/jobs", json={"task": "echo", "input": {}}),
            "500 internal": http.get(BROKEN),
        }


def test_every_error_is_a_problem_without_internals(
    error_answers: dict[str, httpx.Response],
) -> None:
    answers = error_answers
    wrong: dict[str, str] = {}
    for name, response in answers.items():
        status = int(name.split()[0])
        problems = []
        if response.status_code != status:
            problems.append(f"status {response.status_code}")
        if not response.headers.get("content-type", "").startswith(PROBLEM_JSON):
            problems.append(f"content-type {response.headers.get('content-type')}")
        else:
            body = response.json()
            if body.get("status") != response.status_code or not body.get("title"):
                problems.append(f"body {body}")
        problems += leaks(response.text)
        if problems:
            wrong[name] = f"{problems}: {response.text[:200]}"
    figure(
        "S14",
        f"error answers checked {len(answers)} (400/401/403/404/405/413/422/429/500): "
        f"not problem+json or leaking traces/SQL {len(wrong)}",
    )
    assert not wrong, wrong


def test_every_error_carries_the_security_headers(
    error_answers: dict[str, httpx.Response],
) -> None:
    """``SecurityHeaders``: "conservative headers on every response" — errors included,
    whichever layer produced them; and no ``Server`` banner."""
    answers = error_answers
    wrong: dict[str, list[str]] = {}
    for name, response in answers.items():
        missing = [h for h, v in SECURITY_HEADERS.items() if response.headers.get(h) != v]
        if "server" in response.headers:
            missing.append(f"server: {response.headers['server']}")
        if missing:
            wrong[name] = missing
    figure(
        "S14",
        f"error answers without nosniff/DENY/no-referrer (or with a Server banner): "
        f"{len(wrong)}/{len(answers)} {sorted(wrong)}",
    )
    assert not wrong, wrong
