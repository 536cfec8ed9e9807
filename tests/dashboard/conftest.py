"""The dashboard against a real ``conveyor serve``: servers, signed-in HTTP clients and a
Chromium driven by Playwright.

One server per backend serves the whole directory (tests create their own users, so
they never see each other's items). The browser is Debian's Chromium, launched from
``/usr/bin/chromium`` (never a downloaded one); without it the browser tests skip
locally and fail in CI.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import IN_CI
from tests.servers import FAKE_LLM, Server, login, own_database, start_server, stop_server

APP = "tests.apps.dashboard_app:app"
API = "/api/v1"
CHROMIUM = os.environ.get("CONVEYOR_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
# live updates take a moment more on a loaded CI machine than Playwright's default 5 s
expect.set_options(timeout=15_000)
TERMINAL = ("completed", "failed", "cancelled")


# -- servers ------------------------------------------------------------------------------------


def start_dashboard_server(database_url: str, tmp: Path, app: str = APP) -> Server:
    """``conveyor serve --app <app>`` on 127.0.0.1 with the fake LLM provider; waits for
    /readyz, logs in as admin."""
    return start_server(database_url, tmp, app=app, extra_env=FAKE_LLM)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The SQLite server every browser test uses."""
    tmp = tmp_path_factory.mktemp("dashboard-sqlite")
    running = start_dashboard_server(f"sqlite:///{tmp / 'dashboard.db'}", tmp)
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[Server]:
    """The same on PostgreSQL (``pg_url`` skips without it, or fails in CI)."""
    tmp = tmp_path_factory.mktemp("dashboard-postgres")
    with own_database("postgres", tmp, label="dashboard") as url:
        running = start_dashboard_server(url, tmp)
        try:
            yield running
        finally:
            stop_server(running)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_server(request: pytest.FixtureRequest) -> Server:
    """The HTTP tests run on both backends."""
    found: Server = request.getfixturevalue("server" if request.param == "sqlite" else "pg_server")
    return found


# -- users and HTTP clients -------------------------------------------------------------------


@dataclass
class Account:
    id: str
    username: str
    password: str
    token: str  # a bearer token, for setting things up through the API


def new_account(server: Server, role: str = "user") -> Account:
    """A user with a unique name (created by the admin through the API)."""
    name = f"{role}-{uuid.uuid4().hex[:10]}"
    password = f"pw-{uuid.uuid4().hex}"
    with server.client(server.admin_token) as admin:
        created = admin.post(
            f"{API}/users", json={"username": name, "password": password, "roles": [role]}
        )
        assert created.status_code == 201, created.text
    return Account(created.json()["id"], name, password, login(server.base, name, password))


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    found = _CSRF.search(html)
    assert found is not None, "no CSRF field on the page"
    return found.group(1)


class Web:
    """A cookie-keeping HTTP client that signs in through the dashboard's form."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.base, timeout=10.0, follow_redirects=False)
        self.csrf = ""

    def __enter__(self) -> Web:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def sign_in(self, account: Account) -> httpx.Response:
        form = self.http.get("/login")
        assert form.status_code == 200, form.text
        response = self.http.post(
            "/login",
            data={
                "csrf_token": csrf_of(form.text),
                "username": account.username,
                "password": account.password,
                "next": "/executions",
            },
        )
        assert response.status_code == 303, response.text
        self.csrf = csrf_of(self.http.get("/executions").text)
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def post(
        self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True
    ) -> httpx.Response:
        body = dict(data or {})
        if csrf:
            body.setdefault("csrf_token", self.csrf)
        return self.http.post(path, data=body)


@pytest.fixture
def web(server: Server) -> Iterator[Web]:
    with Web(server) as client:
        yield client


def api_start(server: Server, token: str, workflow: str, data: dict[str, Any]) -> dict[str, Any]:
    """Start an execution through the HTTP API (test set-up, not what is tested)."""
    with server.client(token) as client:
        response = client.post(f"{API}/executions", json={"workflow": workflow, "input": data})
        assert response.status_code == 202, response.text
        started: dict[str, Any] = response.json()
        return started


def api_wait(
    server: Server, token: str, execution_id: str, timeout: float = 20.0
) -> dict[str, Any]:
    """Poll an execution through the API until it finishes."""
    deadline = time.monotonic() + timeout
    with server.client(token) as client:
        while True:
            body: dict[str, Any] = client.get(f"{API}/executions/{execution_id}").json()
            if body["status"] in TERMINAL:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"execution never finished: {body}")
            time.sleep(0.05)


# -- the browser ----------------------------------------------------------------------------------


def chromium_missing() -> str | None:
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM}"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium under Playwright (never ``playwright install``).

    Module-scoped: Playwright's sync API keeps an event loop running in the main thread
    while it is open, and every asyncio test after it would fail to start its own."""
    problem = chromium_missing()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"the browser tests are mandatory in CI: {problem}")
        pytest.skip(problem)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Watch:
    """What a page did that it must not: dialogs (an alert() is an XSS) and content the
    CSP refused (inline script or style would be a bug)."""

    dialogs: list[str]
    csp_violations: list[str]


def watch(page: Page) -> Watch:
    seen = Watch([], [])

    def on_dialog(dialog: Any) -> None:
        seen.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def on_console(message: Any) -> None:
        if "Content Security Policy" in message.text:
            seen.csp_violations.append(message.text)

    page.on("dialog", on_dialog)
    page.on("console", on_console)
    return seen


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (its own cookies) and page; fails the test if a dialog
    opened or the CSP refused anything."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    opened = context.new_page()
    seen = watch(opened)
    try:
        yield opened
    finally:
        context.close()
    assert seen.dialogs == [], f"a dialog opened: {seen.dialogs}"
    assert seen.csp_violations == [], f"the CSP refused something: {seen.csp_violations}"


def sign_in(page: Page, server: Server, account: Account) -> None:
    """Sign in through the form (lands on the executions list)."""
    page.goto(f"{server.base}/login")
    page.fill("#username", account.username)
    page.fill("#password", account.password)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_url("**/executions")
