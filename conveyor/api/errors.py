"""Every error as RFC 9457 ``application/problem+json``; never a traceback."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor.api.middleware import SecurityHeaders
from conveyor.errors import (
    AuthenticationError,
    ConfigurationError,
    ConflictError,
    ConveyorError,
    GoneError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionFailedError,
    QuotaExceededError,
    ServiceUnavailableError,
)

log = logging.getLogger("conveyor.api")
PROBLEM_JSON = "application/problem+json"

_STATUS: list[tuple[type[ConveyorError], int]] = [
    (PreconditionFailedError, 412),
    (InvalidInputError, 422),
    (NotFoundError, 404),
    (ConflictError, 409),
    (GoneError, 410),
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (QuotaExceededError, 429),
    (ServiceUnavailableError, 503),
    (ConfigurationError, 500),
]
_TITLES = {
    400: "Bad request",
    401: "Authentication required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    410: "Gone",
    412: "Precondition failed",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


class ProblemDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "type": "about:blank",
                "title": "Not found",
                "status": 404,
                "detail": "job '01a2...' not found",
                "code": "not_found",
            }
        }
    )
    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    code: str | None = None
    errors: list[ProblemDetail] | None = Field(default=None)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error statuses (problem+json bodies)."""
    return {
        status: {
            "description": _TITLES.get(status, "Error"),
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


def problem(
    status: int,
    detail: str | None = None,
    *,
    code: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
    }
    if detail is not None:
        body["detail"] = detail
    if code is not None:
        body["code"] = code
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def status_for(exc: ConveyorError) -> int:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def allowed_methods(request: Request) -> list[str]:
    """Every method the API serves at this path (from the published OpenAPI paths, so
    routes from every router count, not only the first one that matched)."""
    table: list[tuple[re.Pattern[str], set[str]]] | None = getattr(
        request.app.state, "allow_table", None
    )
    if table is None:
        table = []
        for template, operations in request.app.openapi().get("paths", {}).items():
            pattern = re.compile("^" + re.sub(r"\{[^/]+\}", "[^/]+", template) + "$")
            table.append((pattern, {m.upper() for m in operations}))
        request.app.state.allow_table = table
    allowed: set[str] = set()
    for pattern, methods in table:
        if pattern.match(request.url.path):
            allowed |= methods
    if "GET" in allowed:
        allowed.add("HEAD")
    return sorted(allowed)


def _clean_loc(loc: Any) -> list[str | int]:
    return [p if isinstance(p, int) else str(p) for p in loc]


def install(app: FastAPI) -> None:
    @app.exception_handler(ConveyorError)
    async def conveyor_error(_: Request, exc: ConveyorError) -> JSONResponse:
        status = status_for(exc)
        headers: dict[str, str] = {}
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, QuotaExceededError) and exc.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
        if status == 503:
            headers["Retry-After"] = "5"
        if status == 500:
            log.error("configuration problem: %s", exc.message)
            return problem(500, "the server is misconfigured", code=exc.code)
        errors = [
            {"loc": _clean_loc(d.get("loc", [])), "msg": str(d.get("msg", ""))} for d in exc.details
        ] or None
        return problem(status, exc.message, code=exc.code, errors=errors, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": _clean_loc(e.get("loc", ())), "msg": str(e.get("msg", "invalid"))}
            for e in exc.errors()
        ]
        return problem(
            422, "the request does not match the API", code="invalid_request", errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # every method any route serves at this path, not just the first route's
            headers["Allow"] = ", ".join(allowed_methods(request))
        detail = exc.detail if isinstance(exc.detail, str) else None
        return problem(exc.status_code, detail, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        # this handler runs in Starlette's outermost middleware, outside SecurityHeaders
        headers = {k.decode(): v.decode() for k, v in SecurityHeaders.HEADERS}
        return problem(500, "an unexpected error occurred; it has been logged", headers=headers)
