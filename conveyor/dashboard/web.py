"""What every dashboard page shares: rendering with security headers, HTML error pages
instead of problem+json, reading url-encoded forms, and CSRF checks on every POST."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute

from conveyor.api.errors import status_for
from conveyor.dashboard.session import (
    CSRF_FIELD,
    CsrfRefused,
    LoginRequired,
    Session,
    optional_session,
    require_session,
    tokens_match,
)
from conveyor.dashboard.templating import ENVIRONMENT
from conveyor.errors import ConveyorError, InvalidInputError

log = logging.getLogger("conveyor.dashboard")

#: no inline script or style anywhere: agent output that slips into the page cannot run
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
MAX_FORM_FIELDS = 200

#: short confirmations after a redirect (?notice=key); only these texts are ever shown
NOTICES = {
    "started": "Execution started.",
    "cancelled": "Cancel requested.",
    "retried": "Retry queued.",
    "answered": "Answers recorded; the step resumes.",
    "paused": "Queue paused: workers stop claiming its jobs.",
    "resumed": "Queue resumed.",
    "cleaned": "Old jobs deleted.",
    "signed-out": "Signed out.",
}

Form = dict[str, str]
SessionDep = Annotated[Session, Depends(require_session)]


def secure(response: Response) -> Response:
    """Headers of every dashboard response (pages hold private data: never cached)."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def render(
    template: str,
    *,
    session: Session | None,
    status: int = 200,
    request: Request | None = None,
    **context: Any,
) -> HTMLResponse:
    """A template rendered as a page (or a fragment), with the security headers."""
    notice = None
    if request is not None:
        notice = NOTICES.get(request.query_params.get("notice", ""))
    html = ENVIRONMENT.get_template(template).render(
        session=session,
        csrf_field=CSRF_FIELD,
        csrf=None if session is None else session.csrf,
        notice=notice,
        **context,
    )
    response = HTMLResponse(html, status_code=status)
    secure(response)
    return response


def redirect(url: str, **query: str) -> RedirectResponse:
    """303 See Other (after a POST the browser GETs the target)."""
    target = f"{url}?{urlencode(query)}" if query else url
    return RedirectResponse(target, status_code=303)


async def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    session = await optional_session(request)
    return render("error.html", session=session, status=status, code=status, message=message)


def _login_redirect(request: Request) -> Response:
    target = request.url.path
    if request.method == "GET" and request.url.query:
        target += f"?{request.url.query}"
    location = f"/login?{urlencode({'next': target})}"
    if request.headers.get("hx-request"):
        # htmx fragment requests: send the whole page to the sign-in form
        return Response(status_code=204, headers={"HX-Redirect": location})
    return RedirectResponse(location, status_code=303)


class PageRoute(APIRoute):
    """A dashboard route: errors become HTML pages (the API's handlers answer JSON), a
    missing session becomes a redirect to sign-in, and every response gets the CSP."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired:
                response = _login_redirect(request)
            except CsrfRefused:
                response = await error_page(
                    request,
                    403,
                    "This form is out of date or did not come from this dashboard. "
                    "Go back, reload the page and try again.",
                )
            except RequestValidationError as exc:
                fields = sorted({str(e.get("loc", ("?",))[-1]) for e in exc.errors()})
                response = await error_page(
                    request, 422, f"Invalid parameters: {', '.join(fields)}."
                )
            except ConveyorError as exc:
                status = status_for(exc)
                message = exc.message if status < 500 else "The server is misconfigured."
                response = await error_page(request, status, message)
            except Exception:
                log.exception("dashboard page failed")
                response = await error_page(
                    request, 500, "An unexpected error occurred; it has been logged."
                )
            return secure(response)

        return guarded


async def read_form(request: Request) -> Form:
    """An ``application/x-www-form-urlencoded`` body as a dict (the dashboard's forms
    never upload files, so no multipart parser is needed)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise InvalidInputError("forms must be sent as application/x-www-form-urlencoded")
    body = await request.body()
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise InvalidInputError("the form could not be read") from None
    form: Form = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form


async def posted_form(request: Request, session: SessionDep) -> Form:
    """FastAPI dependency of every POST: the form, once its CSRF token checks out."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise CsrfRefused
    try:
        form = await read_form(request)
    except InvalidInputError:
        raise CsrfRefused from None  # not one of our forms, so it carries no token
    if not tokens_match(session.csrf, form.get(CSRF_FIELD)):
        raise CsrfRefused
    return form


PostedForm = Annotated[Form, Depends(posted_form)]
