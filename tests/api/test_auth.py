"""Authentication, authorisation and hostile input, over real HTTP (RELIABILITY.md S1-S8).

Tokens are forged with PyJWT and the server's own secret, so every refusal below is about
one broken property of an otherwise valid token (the valid control token is accepted).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import jwt
import pytest
from sqlalchemy import create_engine, update

from conveyor.store.schema import users
from conveyor.store.url import sync_url
from tests.servers import JWT_SECRET, Server, assert_problem, start_server, stop_server
from tests.servers import claims as user_claims

API = "/api/v1"
INTERNAL_FIELDS = ("lease_token", "password_hash", "request_hash")
PUBLIC_PATHS = {f"{API}/auth/token", "/healthz", "/readyz", "/metrics"}
OTHER_SECRET = "y" * 48
MiB = 1024 * 1024


# -- helpers -----------------------------------------------------------------------------------


def check_response(response: httpx.Response) -> None:
    """Invariants of every answer: no 5xx, no traceback, no internal field."""
    response.read()
    text = response.text
    try:
        sent = response.request.content.decode("utf-8", "replace")
    except httpx.RequestNotRead:  # a streamed request body
        sent = ""
    where = f"{response.request.method} {response.request.url}"
    assert response.status_code < 500, f"{where} -> {response.status_code}: {text}"
    assert "Traceback" not in text, f"{where} leaks a traceback: {text}"
    assert 'File "' not in text, f"{where} leaks a stack frame: {text}"
    for field in INTERNAL_FIELDS:
        if field not in sent:  # a 422 may name a field the request itself sent
            assert field not in text, f"{where} leaks {field}: {text}"


def api(server: Server, token: str | None) -> httpx.Client:
    client = server.client(token)
    client.event_hooks = {"request": [], "response": [check_response]}
    return client


def assert_unauthorized(response: httpx.Response) -> dict[str, Any]:
    body = assert_problem(response, 401)
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer"), (
        response.headers
    )
    return body


def claims(subject: str, **changes: Any) -> dict[str, Any]:
    """Valid admin claims for ``subject``; a change to ``None`` removes the claim."""
    return user_claims(subject, **{"roles": ["admin"], **changes})


def sign(
    payload: dict[str, Any],
    key: str = JWT_SECRET,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns about short keys for HS384/HS512
        return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any], alg: str = "none") -> str:
    return f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(payload)}."


def fill_path(path: str) -> str:
    """An OpenAPI path template with every parameter set to a dummy value."""
    parts = []
    for part in path.split("/"):
        parts.append("dummy-id" if part.startswith("{") and part.endswith("}") else part)
    return "/".join(parts)


@pytest.fixture(scope="module")
def admin_id(server: Server) -> str:
    with api(server, server.admin_token) as admin:
        found: str = admin.get(f"{API}/me").json()["id"]
    return found


@pytest.fixture(scope="module")
def user(server: Server) -> tuple[str, str]:
    return server.new_user()


@pytest.fixture(scope="module")
def worker(server: Server) -> tuple[str, str]:
    return server.new_user("worker")


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """SQLite only: few allowed login failures and a 2 KiB body cap."""
    tmp: Path = tmp_path_factory.mktemp("strict")
    running = start_server(
        f"sqlite:///{tmp / 'strict.db'}",
        tmp,
        extra_env={"CONVEYOR_LOGIN_MAX_FAILURES": "3", "CONVEYOR_MAX_BODY_BYTES": "2048"},
    )
    try:
        yield running
    finally:
        stop_server(running)


# -- every route needs a token -----------------------------------------------------------------


def test_every_protected_route_needs_a_token(server: Server) -> None:
    with api(server, None) as anonymous:
        spec = anonymous.get("/openapi.json")
        assert spec.status_code == 200, spec.text
        paths: dict[str, dict[str, Any]] = spec.json()["paths"]
        expected = {
            f"{API}/me",
            f"{API}/users",
            f"{API}/jobs",
            f"{API}/jobs/{{job_id}}",
            f"{API}/jobs/{{job_id}}/cancel",
            f"{API}/jobs/{{job_id}}/events",
            f"{API}/workflows",
            f"{API}/executions",
            f"{API}/executions/{{execution_id}}/steps",
            f"{API}/clarifications",
            f"{API}/workers",
            f"{API}/queues",
            f"{API}/queues/{{name}}/pause",
            f"{API}/health",
        }
        assert expected <= set(paths), sorted(set(paths))
        checked = 0
        for path, operations in paths.items():
            if path in PUBLIC_PATHS:
                continue
            for method in operations:
                if method not in ("get", "post", "put", "patch", "delete"):
                    continue
                sent: dict[str, Any] | None = {} if method in ("post", "put", "patch") else None
                response = anonymous.request(method.upper(), fill_path(path), json=sent)
                problem = assert_unauthorized(response)
                assert problem["detail"], problem
                checked += 1
        assert checked >= 30

        for public in ("/healthz", "/readyz", "/metrics"):
            assert anonymous.get(public).status_code == 200, public


def test_a_valid_forged_token_is_the_control(server: Server, admin_id: str) -> None:
    """The forging helper makes tokens the server accepts, so the refusals below are real."""
    with api(server, sign(claims(admin_id))) as client:
        me = client.get(f"{API}/me")
        assert me.status_code == 200, me.text
        assert me.json()["id"] == admin_id


BAD_TOKENS: dict[str, Any] = {
    "expired": lambda sub: sign(
        claims(sub, iat=int(time.time()) - 7200, nbf=None, exp=int(time.time()) - 300)
    ),
    "wrong signature": lambda sub: sign(claims(sub), key=OTHER_SECRET),
    "alg none": lambda sub: unsigned(claims(sub)),
    "alg None capitalised": lambda sub: unsigned(claims(sub), alg="None"),
    "alg none with our signature kept": lambda sub: (
        unsigned(claims(sub)) + sign(claims(sub)).rsplit(".", 1)[1]
    ),
    "HS512 with our secret (algorithm from header)": lambda sub: sign(
        claims(sub), algorithm="HS512"
    ),
    "no exp": lambda sub: sign(claims(sub, exp=None)),
    "no iat": lambda sub: sign(claims(sub, iat=None)),
    "no sub": lambda sub: sign(claims(sub, sub=None)),
    "empty sub": lambda sub: sign(claims(sub, sub="")),
    "unknown sub": lambda sub: sign(claims(sub, sub=str(uuid.uuid4()))),
    "wrong audience": lambda sub: sign(claims(sub, aud="someone-else")),
    "no audience": lambda sub: sign(claims(sub, aud=None)),
    "wrong issuer": lambda sub: sign(claims(sub, iss="evil")),
    "no issuer": lambda sub: sign(claims(sub, iss=None)),
    "not yet valid": lambda sub: sign(claims(sub, nbf=int(time.time()) + 3600)),
    "lifetime over a day": lambda sub: sign(
        claims(sub, iat=int(time.time()), exp=int(time.time()) + 86_400 + 3600)
    ),
    "foreign key in jwk header": lambda sub: sign(
        claims(sub),
        key=OTHER_SECRET,
        headers={
            "jwk": {"kty": "oct", "k": base64.urlsafe_b64encode(OTHER_SECRET.encode()).decode()},
            "kid": "../../../../etc/passwd",
            "jku": "http://127.0.0.1:1/jwks.json",
        },
    ),
    "garbage": lambda sub: "not-a-jwt",
    "two segments": lambda sub: ".".join(sign(claims(sub)).split(".")[:2]),
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_bad_tokens_are_refused(server: Server, admin_id: str, kind: str) -> None:
    token: str = BAD_TOKENS[kind](admin_id)
    with api(server, token) as client:
        assert_unauthorized(client.get(f"{API}/me"))
        assert_unauthorized(client.get(f"{API}/users"))
        assert_unauthorized(client.post(f"{API}/jobs", json={"task": "add", "input": {}}))


def test_token_is_never_taken_from_the_url_or_other_schemes(
    server: Server, user: tuple[str, str]
) -> None:
    _, token = user
    with api(server, None) as anonymous:
        for name in ("token", "access_token", "jwt", "auth"):
            assert_unauthorized(anonymous.get(f"{API}/me", params={name: token}))
            assert_unauthorized(anonymous.get(f"{API}/jobs", params={name: token}))
        assert_unauthorized(anonymous.get(f"{API}/me", headers={"Authorization": f"Basic {token}"}))
        assert_unauthorized(anonymous.get(f"{API}/me", headers={"Authorization": token}))
        assert_unauthorized(anonymous.get(f"{API}/me", headers={"Authorization": "Bearer"}))
    with api(server, None) as with_cookie:
        with_cookie.cookies.set("access_token", token)
        with_cookie.cookies.set("token", token)
        assert_unauthorized(with_cookie.get(f"{API}/me"))
    with api(server, token) as client:
        assert client.get(f"{API}/me").status_code == 200


def test_access_log_never_shows_a_token_from_a_query_string(server: Server) -> None:
    """S4: whatever the parameter is called, a JWT sent in a URL must not reach the log
    (uvicorn's own access log would print the query string whole)."""
    _, token = server.new_user()
    marker = uuid.uuid4().hex
    with api(server, None) as anonymous:
        for name in ("token", "access_token", "jwt", "auth", "bearer"):
            # the marker rides in a parameter whose value the access log keeps
            assert_unauthorized(anonymous.get(f"{API}/me", params={name: token, "status": marker}))
    deadline = time.monotonic() + 5
    while server.log.read_text().count(marker) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.log.read_text()
    assert log.count(marker) == 5, "the requests were not logged"
    leaked = [line for line in log.splitlines() if token in line]
    assert not leaked, f"the access log shows a bearer token: {leaked}"


# -- roles -------------------------------------------------------------------------------------


def test_user_token_on_admin_routes_is_403(server: Server, user: tuple[str, str]) -> None:
    user_id, token = user
    with api(server, token) as client, api(server, server.admin_token) as admin:
        new_user = {"username": f"x-{uuid.uuid4().hex[:8]}", "password": "a-long-password"}
        assert_problem(client.post(f"{API}/users", json=new_user), 403)
        assert_problem(client.post(f"{API}/users", json={**new_user, "roles": ["admin"]}), 403)
        assert_problem(client.get(f"{API}/users"), 403)
        assert_problem(client.get(f"{API}/users/{user_id}"), 403)
        assert_problem(client.post(f"{API}/queues/default/pause"), 403)
        assert_problem(client.post(f"{API}/queues/default/resume"), 403)
        clean = {"status": "completed", "older_than_s": 0}
        assert_problem(client.post(f"{API}/queues/default/clean", json=clean), 403)
        assert_problem(client.get(f"{API}/workers"), 403)
        assert_problem(
            client.post(f"{API}/workers", json={"hostname": "h", "max_concurrency": 1}), 403
        )
        # nothing happened
        assert not any(q["paused"] for q in admin.get(f"{API}/queues").json()["items"])
        names = {u["username"] for u in admin.get(f"{API}/users").json()}
        assert new_user["username"] not in names
        me = client.get(f"{API}/me").json()
        assert me["roles"] == ["user"]


def test_worker_token_cannot_submit_work(server: Server, worker: tuple[str, str]) -> None:
    _, token = worker
    with api(server, token) as client:
        assert_problem(client.post(f"{API}/jobs", json={"task": "add", "input": {}}), 403)
        assert_problem(client.post(f"{API}/executions", json={"workflow": "pipeline"}), 403)
        assert_problem(client.get(f"{API}/users"), 403)
        assert client.get(f"{API}/workers").status_code == 200


def test_forged_role_claims_do_not_grant_admin(server: Server, user: tuple[str, str]) -> None:
    """Roles of our own users come from the database, not from the token's claims."""
    user_id, _ = user
    forged = sign(claims(user_id, roles=["admin", "user", "worker"]))
    with api(server, forged) as client:
        assert client.get(f"{API}/me").json()["roles"] == ["user"]
        assert_problem(client.get(f"{API}/users"), 403)


# -- login -------------------------------------------------------------------------------------


def test_login(server: Server) -> None:
    name = f"login-{uuid.uuid4().hex[:8]}"
    password = "the-right-password"
    with api(server, server.admin_token) as admin, api(server, None) as anonymous:
        created = admin.post(
            f"{API}/users", json={"username": name, "password": password, "roles": ["user"]}
        )
        assert created.status_code == 201, created.text
        user_id = created.json()["id"]

        wrong = assert_unauthorized(
            anonymous.post(f"{API}/auth/token", json={"username": name, "password": "nope!"})
        )
        unknown = assert_unauthorized(
            anonymous.post(
                f"{API}/auth/token", json={"username": f"ghost-{name}", "password": password}
            )
        )
        assert wrong["detail"] == unknown["detail"]  # no user enumeration

        ok = anonymous.post(f"{API}/auth/token", json={"username": name, "password": password})
        assert ok.status_code == 200, ok.text
        issued = ok.json()
        assert issued["token_type"] == "bearer"
        assert 60 <= issued["expires_in"] <= 86_400
        decoded = jwt.decode(
            issued["access_token"],
            JWT_SECRET,
            algorithms=["HS256"],
            audience="conveyor",
            issuer="conveyor",
        )
        assert decoded["sub"] == user_id
        assert decoded["exp"] - decoded["iat"] == issued["expires_in"]
        assert password not in ok.text

        assert_problem(anonymous.post(f"{API}/auth/token", json={"username": name}), 422)
        assert_problem(
            anonymous.post(
                f"{API}/auth/token",
                json={"username": name, "password": password, "remember": True},
            ),
            422,
        )


def test_disabled_user_cannot_log_in_or_use_a_token(server: Server) -> None:
    name = f"disabled-{uuid.uuid4().hex[:8]}"
    password = "the-right-password"
    with api(server, server.admin_token) as admin, api(server, None) as anonymous:
        created = admin.post(
            f"{API}/users", json={"username": name, "password": password, "roles": ["user"]}
        )
        assert created.status_code == 201, created.text
        login = anonymous.post(f"{API}/auth/token", json={"username": name, "password": password})
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]

        # there is no API route to disable a user yet: flip the flag in the database
        engine = create_engine(sync_url(server.database_url))
        try:
            with engine.begin() as conn:
                conn.execute(
                    update(users).where(users.c.id == created.json()["id"]).values(disabled=True)
                )
        finally:
            engine.dispose()

        assert_unauthorized(
            anonymous.post(f"{API}/auth/token", json={"username": name, "password": password})
        )
        with api(server, token) as client:  # never used before, so not cached
            assert_unauthorized(client.get(f"{API}/me"))


def test_logout_revokes_only_the_token_it_was_called_with(server: Server) -> None:
    name, password = f"logout-{uuid.uuid4().hex[:8]}", "the-right-password"
    with api(server, server.admin_token) as admin, api(server, None) as anonymous:
        created = admin.post(
            f"{API}/users", json={"username": name, "password": password, "roles": ["user"]}
        )
        assert created.status_code == 201, created.text
        tokens = [
            anonymous.post(
                f"{API}/auth/token", json={"username": name, "password": password}
            ).json()["access_token"]
            for _ in range(2)
        ]
    with api(server, tokens[0]) as leaving, api(server, tokens[1]) as staying:
        assert leaving.get(f"{API}/jobs").status_code == 200
        out = leaving.post(f"{API}/auth/logout")
        assert out.status_code == 204, out.text
        assert_unauthorized(leaving.get(f"{API}/me"))
        assert_unauthorized(leaving.get(f"{API}/jobs"))
        assert_unauthorized(leaving.post(f"{API}/auth/logout"))
        me = staying.get(f"{API}/me")
        assert me.status_code == 200 and me.json()["username"] == name, me.text


def test_repeated_login_failures_are_rate_limited(strict_server: Server) -> None:
    name = f"victim-{uuid.uuid4().hex[:8]}"
    password = "the-right-password"
    with api(strict_server, strict_server.admin_token) as admin:
        created = admin.post(
            f"{API}/users", json={"username": name, "password": password, "roles": ["user"]}
        )
        assert created.status_code == 201, created.text
    with api(strict_server, None) as anonymous:
        wrong = {"username": name, "password": "guess-123"}
        for _ in range(3):
            assert_unauthorized(anonymous.post(f"{API}/auth/token", json=wrong))
        limited = anonymous.post(f"{API}/auth/token", json=wrong)
        assert_problem(limited, 429)
        assert int(limited.headers["retry-after"]) >= 1
        # even the right password waits until the window has passed
        right = anonymous.post(f"{API}/auth/token", json={"username": name, "password": password})
        assert_problem(right, 429)
        assert "access_token" not in right.text
        assert int(right.headers["retry-after"]) >= 1


# -- hostile bodies ----------------------------------------------------------------------------


def test_body_over_one_mebibyte_is_413(server: Server, user: tuple[str, str]) -> None:
    _, token = user
    big = json.dumps({"task": "echo", "input": {"text": "x" * (MiB + 100)}}).encode()
    with api(server, token) as client, api(server, None) as anonymous:
        before = client.get(f"{API}/jobs", params={"limit": 100}).json()["items"]
        response = client.post(
            f"{API}/jobs", content=big, headers={"content-type": "application/json"}
        )
        assert_problem(response, 413)
        # refused before parsing (invalid JSON) and before authentication
        broken = b"{" + b"x" * (MiB + 100)
        response = anonymous.post(
            f"{API}/jobs", content=broken, headers={"content-type": "application/json"}
        )
        assert_problem(response, 413)
        after = client.get(f"{API}/jobs", params={"limit": 100}).json()["items"]
        assert len(after) == len(before)


def test_small_body_limit(strict_server: Server) -> None:
    with api(strict_server, strict_server.admin_token) as client:
        fits = {"task": "echo", "input": {"text": "x" * 1500}}
        response = client.post(f"{API}/jobs", json=fits)
        assert response.status_code == 202, response.text
        too_big = {"task": "echo", "input": {"text": "x" * 3000}}
        assert_problem(client.post(f"{API}/jobs", json=too_big), 413)
        assert_problem(
            client.post(
                f"{API}/executions", json={"workflow": "pipeline", "input": {"t": "x" * 3000}}
            ),
            413,
        )


def test_chunked_body_over_the_limit_is_413(strict_server: Server) -> None:
    """No Content-Length: the cap must still hold while the body streams in."""

    def chunks() -> Iterator[bytes]:
        yield b'{"task": "echo", "input": {"text": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}}'

    with api(strict_server, strict_server.admin_token) as client:
        response = client.post(
            f"{API}/jobs", content=chunks(), headers={"content-type": "application/json"}
        )
        assert "content-length" not in response.request.headers
        assert_problem(response, 413)


@pytest.mark.parametrize(
    "field",
    ["owner", "status", "attempts", "lease_token", "created_at", "id", "worker_id", "result"],
)
def test_unknown_job_fields_are_refused(server: Server, user: tuple[str, str], field: str) -> None:
    _, token = user
    with api(server, token) as client:
        before = client.get(f"{API}/jobs", params={"limit": 100}).json()["items"]
        body = {"task": "add", "input": {"a": 1, "b": 2}, field: "completed"}
        problem = assert_problem(client.post(f"{API}/jobs", json=body), 422)
        assert any(field in e["loc"] for e in problem["errors"]), problem
        after = client.get(f"{API}/jobs", params={"limit": 100}).json()["items"]
        assert len(after) == len(before)


def test_unknown_fields_elsewhere_are_refused(server: Server, user: tuple[str, str]) -> None:
    _, token = user
    with api(server, token) as client, api(server, server.admin_token) as admin:
        before = client.get(f"{API}/executions", params={"limit": 100}).json()["items"]
        for field in ("owner", "status", "output"):
            body = {"workflow": "pipeline", field: "x"}
            assert_problem(client.post(f"{API}/executions", json=body), 422)
        after = client.get(f"{API}/executions", params={"limit": 100}).json()["items"]
        assert len(after) == len(before)
        for field in ("id", "disabled", "password_hash"):
            user_body: dict[str, Any] = {
                "username": f"m-{uuid.uuid4().hex[:8]}",
                "password": "long-enough",
                field: 1,
            }
            assert_problem(admin.post(f"{API}/users", json=user_body), 422)
        register = {"hostname": "h", "max_concurrency": 1, "status": "busy"}
        assert_problem(admin.post(f"{API}/workers", json=register), 422)


@pytest.mark.parametrize(
    "body",
    [
        b'{"task": ',
        b'{"task": "add",}',
        b"[1, 2]",
        b"null",
        b'"add"',
        b"",
        b'{"task": "add", "input": {"a": NaN}}',
        b'{"task": "add", "priority": 5}',
        b'{"task": "add", "max_attempts": "3"}',
        b'{"task": "add", "delay_s": 10, "run_at": "2030-01-01T00:00:00Z"}',
        b'{"task": "no_such_task"}',
    ],
)
def test_malformed_bodies_are_422_problems(
    server: Server, user: tuple[str, str], body: bytes
) -> None:
    _, token = user
    with api(server, token) as client:
        response = client.post(
            f"{API}/jobs", content=body, headers={"content-type": "application/json"}
        )
        problem = assert_problem(response, 422)
        assert "Traceback" not in response.text and "pydantic" not in response.text.lower()
        assert problem["detail"]


def test_undecodable_body_is_a_client_error(server: Server, user: tuple[str, str]) -> None:
    """Bytes that are no text at all (a UTF-16 BOM, then an odd byte): 400 or 422."""
    _, token = user
    with api(server, token) as client:
        response = client.post(
            f"{API}/jobs", content=b"\xff\xfe\x00", headers={"content-type": "application/json"}
        )
        assert response.status_code in (400, 422), response.text
        assert_problem(response, response.status_code)


def test_hostile_query_parameters(server: Server, user: tuple[str, str]) -> None:
    _, token = user
    with api(server, token) as client:
        assert_problem(client.get(f"{API}/jobs", params={"status": "completed' OR 1=1 --"}), 422)
        injected = client.get(f"{API}/jobs", params={"task": "x' OR '1'='1"})
        assert injected.status_code == 200, injected.text
        assert injected.json()["items"] == []
        assert_problem(client.get(f"{API}/jobs", params={"limit": 1_000_000}), 422)
        assert_problem(client.get(f"{API}/jobs", params={"cursor": "x" * 500}), 422)
        garbage_cursor = client.get(f"{API}/jobs", params={"cursor": "not-a-cursor"})
        assert garbage_cursor.status_code in (200, 422), garbage_cursor.text


def test_unsupported_methods_and_unknown_routes(server: Server, user: tuple[str, str]) -> None:
    _, token = user
    with api(server, token) as client:
        for method, path in [
            ("DELETE", f"{API}/jobs"),
            ("PUT", f"{API}/jobs/some-id"),
            ("PATCH", f"{API}/me"),
            ("DELETE", f"{API}/auth/token"),
        ]:
            response = client.request(method, path)
            assert_problem(response, 405)
            assert response.headers.get("allow"), response.headers
        assert_problem(client.get(f"{API}/no-such-route"), 404)


def test_responses_never_expose_internal_fields(
    server: Server, user: tuple[str, str], worker: tuple[str, str]
) -> None:
    """Walk the read routes after real work; :func:`check_response` checks each answer."""
    _, token = user
    with (
        api(server, token) as client,
        api(server, server.admin_token) as admin,
        api(server, worker[1]) as agent,
    ):
        jobs = []
        for body in ({"task": "add", "input": {"a": 1, "b": 2}}, {"task": "boom"}):
            response = client.post(
                f"{API}/jobs", json=body, headers={"Idempotency-Key": uuid.uuid4().hex}
            )
            assert response.status_code == 202, response.text
            jobs.append(response.json()["id"])
        execution = client.post(f"{API}/executions", json={"workflow": "pipeline"}).json()["id"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [client.get(f"{API}/jobs/{j}").json()["status"] for j in jobs]
            ex = client.get(f"{API}/executions/{execution}").json()["status"]
            if set(states) <= {"completed", "failed"} and ex == "completed":
                break
            time.sleep(0.05)
        failed = client.get(f"{API}/jobs/{jobs[1]}").json()
        assert failed["status"] == "failed"
        assert "traceback" not in json.dumps(failed).lower()
        for job_id in jobs:
            client.get(f"{API}/jobs/{job_id}/events")
        client.get(f"{API}/jobs", params={"limit": 100})
        client.get(f"{API}/executions/{execution}")
        client.get(f"{API}/executions/{execution}/steps")
        client.get(f"{API}/executions/{execution}/events")
        client.get(f"{API}/executions")
        admin.get(f"{API}/jobs", params={"limit": 100})
        listed = admin.get(f"{API}/users")
        assert listed.status_code == 200
        assert all(
            set(u) == {"id", "username", "roles", "disabled", "created_at"} for u in (listed.json())
        )
        agent.get(f"{API}/workers")
        admin.get(f"{API}/queues")
        admin.get("/metrics")
