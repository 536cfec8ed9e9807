"""FastAPI dependencies: the engine, the caller, role checks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from conveyor.api.state import ApiState
from conveyor.auth.principal import ADMIN, USER, WORKER, Principal
from conveyor.engine.core import Engine
from conveyor.errors import AuthenticationError

# auto_error=False: a missing header becomes our own problem+json 401, not FastAPI's 403
bearer = HTTPBearer(auto_error=False, description="A JWT from POST /api/v1/auth/token")


def api_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.conveyor
    return state


def engine(request: Request) -> Engine:
    return api_state(request).engine


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller, from ``Authorization: Bearer`` only (never from the URL)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthenticationError("missing bearer token")
    token = credentials.credentials.strip()
    if not token or len(token) > 8192:
        raise AuthenticationError("invalid token")
    found = await api_state(request).accounts.principal(token)
    request.state.principal = found
    return found


async def submitter(caller: Annotated[Principal, Depends(principal)]) -> Principal:
    """Users and admins create work; a worker token cannot."""
    caller.require(USER)
    return caller


async def admin(caller: Annotated[Principal, Depends(principal)]) -> Principal:
    caller.require(ADMIN)
    return caller


async def worker_agent(caller: Annotated[Principal, Depends(principal)]) -> Principal:
    caller.require(WORKER)
    return caller


Caller = Annotated[Principal, Depends(principal)]
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
Submitter = Annotated[Principal, Depends(submitter)]
Admin = Annotated[Principal, Depends(admin)]
WorkerAgent = Annotated[Principal, Depends(worker_agent)]
EngineDep = Annotated[Engine, Depends(engine)]
