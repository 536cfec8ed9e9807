"""Sign-in and sign-out (built-in users), and the front page."""

from __future__ import annotations

import contextlib
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse

from conveyor.api.deps import api_state
from conveyor.dashboard.session import (
    CSRF_FIELD,
    CsrfRefused,
    clear_session_cookie,
    login_csrf,
    login_nonce,
    optional_session,
    safe_next,
    set_login_nonce,
    set_session_cookie,
    tokens_match,
)
from conveyor.dashboard.web import (
    PageRoute,
    PostedForm,
    SessionDep,
    read_form,
    redirect,
    render,
)
from conveyor.errors import AuthenticationError, ConveyorError, QuotaExceededError

router = APIRouter(route_class=PageRoute, include_in_schema=False)
NextPage = Annotated[str | None, Query(alias="next", max_length=2000)]


@router.get("/")
async def index(request: Request) -> Response:
    """The executions list for a signed-in user, else the sign-in form."""
    if await optional_session(request) is None:
        return redirect("/login")
    return redirect("/executions")


async def _login_page(
    request: Request,
    target: str,
    *,
    error: str | None = None,
    status: int = 200,
    username: str = "",
) -> HTMLResponse:
    nonce, fresh = login_nonce(request)
    response = render(
        "login.html",
        session=None,
        status=status,
        request=request,
        next=target,
        error=error,
        username=username,
        login_csrf=await login_csrf(request, nonce),
    )
    if fresh:
        set_login_nonce(request, response, nonce)
    return response


@router.get("/login")
async def login_form(request: Request, next_page: NextPage = None) -> Response:
    if await optional_session(request) is not None:
        return redirect(safe_next(next_page))
    return await _login_page(request, safe_next(next_page))


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the credentials (rate-limited per user and client) and start a session."""
    form = await read_form(request)
    nonce, fresh = login_nonce(request)
    if fresh or not tokens_match(await login_csrf(request, nonce), form.get(CSRF_FIELD)):
        raise CsrfRefused
    username = form.get("username", "").strip()[:64]
    password = form.get("password", "")[:1024]
    target = safe_next(form.get("next"))
    client = request.client.host if request.client else "-"
    try:
        token, expires_in = await api_state(request).accounts.login(username, password, client)
    except QuotaExceededError as exc:
        return await _login_page(request, target, error=exc.message, status=429, username=username)
    except AuthenticationError:
        return await _login_page(
            request, target, error="Wrong username or password.", status=401, username=username
        )
    response = redirect(target)
    set_session_cookie(request, response, token, expires_in)
    return response


@router.post("/logout")
async def logout(request: Request, session: SessionDep, form: PostedForm) -> Response:
    """End the session: its token is revoked (a copy of the cookie stops working too)."""
    with contextlib.suppress(ConveyorError):  # a token without an id expires on its own
        await api_state(request).accounts.revoke(session.token)
    response = redirect("/login", notice="signed-out")
    clear_session_cookie(request, response)
    return response
