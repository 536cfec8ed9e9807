"""/stream-tickets and /ws (the SSE streams live on the events routes)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, WebSocket
from pydantic import StringConstraints

from conveyor.api.deps import Caller, EngineDep, api_state
from conveyor.api.errors import problem_responses
from conveyor.api.schemas import Request as RequestModel
from conveyor.api.streams import websocket_session
from conveyor.errors import InvalidInputError

router = APIRouter(tags=["streams"])


class TicketIn(RequestModel):
    scope: Annotated[
        str, StringConstraints(pattern=r"^(execution|job):[0-9a-f-]{36}$", strict=True)
    ]


class TicketOut(RequestModel):
    ticket: str
    scope: str
    expires_in: int
    token_type: Literal["stream-ticket"] = "stream-ticket"


@router.post(
    "/stream-tickets",
    status_code=201,
    response_model=TicketOut,
    responses=problem_responses(401, 404, 422),
    summary="A single-use ticket for one SSE stream (for browsers)",
    description="Pass it as `?ticket=` on `GET /executions/{id}/events` or "
    "`GET /jobs/{id}/events` with `Accept: text/event-stream`; it works once, within "
    "a minute, for that stream only.",
)
async def stream_ticket(
    body: TicketIn, request: Request, caller: Caller, engine: EngineDep
) -> dict[str, Any]:
    kind, _, ident = body.scope.partition(":")
    if kind == "execution":
        await engine.get_execution(ident, owner=caller.scope)
    elif kind == "job":
        await engine.get_job(ident, owner=caller.scope)
    else:  # pragma: no cover - the pattern above allows nothing else
        raise InvalidInputError("scope must be execution:<id> or job:<id>")
    ticket, expires_in = await api_state(request).tickets.issue(caller.id, body.scope)
    return {"ticket": ticket, "scope": body.scope, "expires_in": expires_in}


@router.websocket("/ws")
async def websocket(websocket: WebSocket) -> None:
    """Authenticate with ``{"token": ...}``, then ``{"subscribe": "execution:<id>"}``,
    ``"job:<id>"`` or ``"queue:<name>"`` (with ``"after": <event id>`` to resume)."""
    await websocket_session(websocket, websocket.app.state.conveyor)
