"""Dashboard sign-in sessions and CSRF tokens.

The session is the JWT that ``Accounts.login`` issues, kept in an HttpOnly,
SameSite=Strict cookie, so the same token (and the same expiry and account checks) backs
the pages and the same-origin EventSource streams. Every form carries a CSRF token: an
HMAC, under a server key shared by all replicas, of the session token (or, before
sign-in, of a random nonce in a short-lived cookie), checked on every POST.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request, Response

from conveyor.api.deps import api_state
from conveyor.api.streams import SESSION_COOKIE
from conveyor.auth.principal import Principal
from conveyor.errors import AuthenticationError
from conveyor.store.secrets import shared_secret

#: before sign-in, the login form's CSRF token is bound to this random nonce
LOGIN_NONCE_COOKIE = "conveyor_login_nonce"
CSRF_FIELD = "csrf_token"
_MAX_TOKEN_CHARS = 8192
_KEY_NAME = "dashboard_csrf"


class LoginRequired(Exception):
    """No valid session: the page redirects to the sign-in form."""


class CsrfRefused(Exception):
    """A POST without the form's CSRF token (or with a wrong one)."""


@dataclass(frozen=True, slots=True)
class Session:
    """The signed-in user of one request."""

    principal: Principal
    token: str
    csrf: str

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin

    @property
    def scope(self) -> str | None:
        """The owner filter for reads, exactly as the API applies it."""
        return self.principal.scope


async def csrf_key(request: Request) -> bytes:
    """The server's CSRF key: generated once and kept in the database, so every replica
    signs and checks the same tokens (cached on the application)."""
    key: bytes | None = getattr(request.app.state, "dashboard_csrf_key", None)
    if key is None:
        secret = await shared_secret(api_state(request).engine.db, _KEY_NAME)
        key = hashlib.sha256(secret.encode()).digest()
        request.app.state.dashboard_csrf_key = key
    return key


def sign(key: bytes, binding: str) -> str:
    """The CSRF token for ``binding`` (a session token or a login nonce)."""
    return hmac.new(key, f"csrf|{binding}".encode(), hashlib.sha256).hexdigest()


def tokens_match(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


async def optional_session(request: Request) -> Session | None:
    """The session of the request's cookie, or ``None`` (no cookie, expired, disabled)."""
    cached: Session | None = getattr(request.state, "dashboard_session", None)
    if cached is not None:
        return cached
    token = request.cookies.get(SESSION_COOKIE, "").strip()
    if not token or len(token) > _MAX_TOKEN_CHARS:
        return None
    try:
        principal = await api_state(request).accounts.principal(token)
    except AuthenticationError:
        return None
    found = Session(principal, token, sign(await csrf_key(request), token))
    # the error pages show the navigation of whoever is signed in
    request.state.dashboard_session = found
    return found


async def require_session(request: Request) -> Session:
    """FastAPI dependency: the signed-in user, or a redirect to the sign-in form."""
    found = await optional_session(request)
    if found is None:
        raise LoginRequired
    return found


def set_session_cookie(request: Request, response: Response, token: str, max_age: int) -> None:
    """Start the session: the token in a cookie scripts cannot read and other sites
    cannot make the browser send; it lives as long as the token."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(LOGIN_NONCE_COOKIE, path="/login")


def clear_session_cookie(request: Request, response: Response) -> None:
    """End the session in this browser (the token itself stays valid until it expires:
    tokens are not revocable, so sessions are as short as the configured token TTL)."""
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def login_nonce(request: Request) -> tuple[str, bool]:
    """The sign-in form's nonce: the browser's, or a fresh one (``True``: set it)."""
    nonce = request.cookies.get(LOGIN_NONCE_COOKIE, "")
    if 32 <= len(nonce) <= 128:
        return nonce, False
    return secrets.token_urlsafe(32), True


def set_login_nonce(request: Request, response: Response, nonce: str) -> None:
    """Keep the sign-in form's nonce for the POST that follows (on /login only)."""
    response.set_cookie(
        LOGIN_NONCE_COOKIE,
        nonce,
        max_age=3600,
        path="/login",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


async def login_csrf(request: Request, nonce: str) -> str:
    """The sign-in form's CSRF token (bound to the nonce cookie: there is no session)."""
    return sign(await csrf_key(request), f"login|{nonce}")


def safe_next(target: str | None) -> str:
    """Where to go after sign-in: a local path only (never another site)."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(c) < 32 for c in target)
        or len(target) > 2000
    ):
        return "/executions"
    return target
