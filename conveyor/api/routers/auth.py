"""/auth/token, /me, /users."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from conveyor.api.deps import Admin, BearerCredentials, Caller, api_state
from conveyor.api.errors import problem_responses
from conveyor.api.routers.common import API_PREFIX
from conveyor.api.schemas import MeOut, TokenOut, TokenRequest, UserCreate, UserOut
from conveyor.errors import NotFoundError

router = APIRouter(tags=["auth"])


@router.post(
    "/auth/token",
    response_model=TokenOut,
    responses=problem_responses(401, 404, 422, 429),
    summary="Exchange a username and password for a bearer token",
    openapi_extra={"security": []},
)
async def token(body: TokenRequest, request: Request) -> dict[str, Any]:
    accounts = api_state(request).accounts
    if not accounts.tokens.can_issue:
        raise NotFoundError("this server does not issue tokens; use your identity provider")
    client = request.client.host if request.client else "unknown"
    access_token, expires_in = await accounts.login(body.username, body.password, client)
    return {"access_token": access_token, "token_type": "bearer", "expires_in": expires_in}


@router.post(
    "/auth/logout",
    status_code=204,
    responses=problem_responses(401, 422),
    summary="Sign out: the bearer token used is refused from now on, by every replica",
)
async def logout(caller: Caller, credentials: BearerCredentials, request: Request) -> Response:
    # ``caller`` has checked the token (a revoked one is already a 401)
    token = credentials.credentials.strip() if credentials is not None else ""
    await api_state(request).accounts.revoke(token)
    return Response(status_code=204)


@router.get("/me", response_model=MeOut, responses=problem_responses(401))
async def me(caller: Caller) -> dict[str, Any]:
    return {"id": caller.id, "username": caller.username, "roles": sorted(caller.roles)}


@router.post(
    "/users",
    status_code=201,
    response_model=UserOut,
    responses=problem_responses(401, 403, 409, 422),
    tags=["users"],
)
async def create_user(
    body: UserCreate, request: Request, response: Response, caller: Admin
) -> dict[str, Any]:
    user = await api_state(request).accounts.create_user(
        body.username, body.password, list(body.roles)
    )
    response.headers["Location"] = f"{API_PREFIX}/users/{user.id}"
    return user.to_json()


@router.get(
    "/users", response_model=list[UserOut], responses=problem_responses(401, 403), tags=["users"]
)
async def list_users(request: Request, caller: Admin) -> list[dict[str, Any]]:
    return [u.to_json() for u in await api_state(request).accounts.list_users()]


@router.get(
    "/users/{user_id}",
    response_model=UserOut,
    responses=problem_responses(401, 403, 404),
    tags=["users"],
)
async def get_user(user_id: str, request: Request, caller: Admin) -> dict[str, Any]:
    return (await api_state(request).accounts.get_user(user_id)).to_json()
