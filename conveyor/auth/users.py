"""Built-in users, login, first-start bootstrap, and turning tokens into principals."""

from __future__ import annotations

import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from conveyor.auth.passwords import hash_password, verify_password
from conveyor.auth.principal import ROLES, Principal
from conveyor.auth.tokens import Claims, TokenService
from conveyor.domain.ids import new_id
from conveyor.errors import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    QuotaExceededError,
)
from conveyor.store.database import Database, Tx
from conveyor.store.schema import revoked_tokens, users
from conveyor.store.secrets import shared_secret
from conveyor.store.sql import db_now, dialect_insert

__all__ = ["Accounts", "LoginLimiter", "User", "check_roles", "shared_secret"]

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{1,63}\Z")
_PRINCIPAL_CACHE_S = 5.0


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    roles: list[str]
    disabled: bool
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "roles": self.roles,
            "disabled": self.disabled,
            "created_at": self.created_at.isoformat(),
        }


def _user(row: Any) -> User:
    return User(row.id, row.username, list(row.roles), bool(row.disabled), row.created_at)


def check_roles(roles: list[str]) -> list[str]:
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise InvalidInputError(f"roles must be a non-empty subset of {', '.join(ROLES)}")
    return sorted(set(roles))


class LoginLimiter:
    """Refuses logins after too many failures for one user or one client address.

    Kept in process memory: with several API replicas each counts its own failures.
    """

    def __init__(self, max_failures: int = 5, window_s: float = 300.0) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def check(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            recent = self._failures.get(key)
            if not recent:
                continue
            while recent and recent[0] < now - self.window_s:
                recent.popleft()
            if len(recent) >= self.max_failures:
                retry = max(1.0, recent[0] + self.window_s - now)
                raise QuotaExceededError(
                    "too many failed logins; try again later", retry_after_s=retry
                )

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            self._failures.setdefault(key, deque(maxlen=self.max_failures * 4)).append(now)
        if len(self._failures) > 100_000:  # bound memory under a spraying attack
            self._failures.clear()

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)


class Accounts:
    """Users in the database plus the token service: everything /auth needs."""

    def __init__(self, db: Database, tokens: TokenService, limiter: LoginLimiter) -> None:
        self.db = db
        self.tokens = tokens
        self.limiter = limiter
        #: (subject, token id) -> (valid until, the principal or why the token is refused)
        self._cache: dict[tuple[str, str | None], tuple[float, Principal | str]] = {}

    # -- users ------------------------------------------------------------------------------

    async def create_user(self, username: str, password: str, roles: list[str]) -> User:
        if not _USERNAME.match(username):
            raise InvalidInputError(
                "username must be 2-64 characters: letters, digits, _ . @ - (not first)"
            )
        checked = check_roles(roles)
        password_hash = await hash_password(password)
        user_id = new_id()

        def body(tx: Tx) -> None:
            taken = tx.conn.execute(select(users.c.id).where(users.c.username == username)).first()
            if taken is not None:
                raise ConflictError(f"username {username!r} is taken")
            tx.conn.execute(
                users.insert().values(
                    id=user_id,
                    username=username,
                    password_hash=password_hash,
                    roles=checked,
                    disabled=False,
                    created_at=db_now(),
                )
            )

        await self.db.write(body)
        return await self.get_user(user_id)

    async def get_user(self, user_id: str) -> User:
        row = await self.db.read(
            lambda c: c.execute(select(users).where(users.c.id == user_id)).first()
        )
        if row is None:
            raise NotFoundError(f"user {user_id!r} not found")
        return _user(row)

    async def find_user(self, username: str) -> User | None:
        row = await self.db.read(
            lambda c: c.execute(select(users).where(users.c.username == username)).first()
        )
        return None if row is None else _user(row)

    async def list_users(self) -> list[User]:
        rows = await self.db.read(
            lambda c: c.execute(select(users).order_by(users.c.username)).all()
        )
        return [_user(r) for r in rows]

    async def set_disabled(self, user_id: str, disabled: bool) -> User:
        def body(tx: Tx) -> None:
            changed = tx.conn.execute(
                update(users).where(users.c.id == user_id).values(disabled=disabled)
            )
            if changed.rowcount == 0:
                raise NotFoundError(f"user {user_id!r} not found")

        await self.db.write(body)
        self._cache.clear()
        return await self.get_user(user_id)

    async def count_users(self) -> int:
        count = await self.db.read(
            lambda c: c.execute(select(func.count()).select_from(users)).scalar_one()
        )
        return int(count)

    # -- login and principals ---------------------------------------------------------------

    async def login(self, username: str, password: str, client: str) -> tuple[str, int]:
        """A token for valid credentials; repeated failures are rate-limited (429)."""
        keys = (f"user:{username.lower()}", f"client:{client}")
        self.limiter.check(*keys)
        row = await self.db.read(lambda c: _credentials(c, username))
        valid = await verify_password(password, None if row is None else row.password_hash)
        if not valid or row is None or row.disabled:
            self.limiter.failed(*keys)
            raise AuthenticationError("wrong username or password")
        self.limiter.succeeded(*keys)
        return self.tokens.issue(row.id, username=row.username, roles=list(row.roles))

    async def principal(self, token: str) -> Principal:
        """The caller behind a bearer token (users and sign-outs are re-checked every few
        seconds, so a disabled user or a revoked token loses access quickly everywhere)."""
        claims = self.tokens.verify(token)
        if not claims.issued_by_us:
            return Principal(claims.subject, claims.username or claims.subject, claims.roles)
        now = time.monotonic()
        key = (claims.subject, claims.token_id)
        cached = self._cache.get(key)
        if cached is None or cached[0] < now:
            found = await self.db.read(lambda c: _principal_or_refusal(c, claims))
            if len(self._cache) > 10_000:
                self._cache.clear()
            cached = self._cache[key] = (now + _PRINCIPAL_CACHE_S, found)
        if isinstance(cached[1], str):
            raise AuthenticationError(cached[1])
        return cached[1]

    async def revoke(self, token: str) -> None:
        """Sign a token out: every replica refuses it from now on (this one at once, the
        others within the principal cache's few seconds). Idempotent."""
        claims = self.tokens.verify(token)
        if not claims.issued_by_us:
            raise InvalidInputError("this token comes from an identity provider: revoke it there")
        if claims.token_id is None:
            raise InvalidInputError("this token has no id to revoke; it expires on its own")
        token_id = claims.token_id
        # kept past the token's expiry by the verifier's leeway, then forgotten
        until = datetime.fromtimestamp(claims.expires_at + self.tokens.policy.leeway_s, UTC)

        def body(tx: Tx) -> None:
            tx.conn.execute(
                dialect_insert(tx.dialect, revoked_tokens)
                .values(token_id=token_id, owner=claims.subject, expires_at=until)
                .on_conflict_do_nothing(index_elements=["token_id"])
            )
            tx.conn.execute(delete(revoked_tokens).where(revoked_tokens.c.expires_at < db_now()))

        await self.db.write(body)
        self._cache[(claims.subject, token_id)] = (time.monotonic() + _PRINCIPAL_CACHE_S, _REVOKED)

    # -- first start ------------------------------------------------------------------------

    async def bootstrap_admin(
        self, username: str | None, password: str | None
    ) -> tuple[str, str] | None:
        """Create the first admin when no user exists. Returns ``(username, password)``
        when the password was generated (to be shown once), else ``None``."""
        if await self.count_users() > 0:
            return None
        name = username or "admin"
        generated = password is None
        secret = password or secrets.token_urlsafe(18)
        try:
            await self.create_user(name, secret, ["admin"])
        except ConflictError:  # another replica bootstrapped it at the same moment
            return None
        return (name, secret) if generated else None


_REVOKED = "this token was signed out"


def _principal_or_refusal(conn: Connection, claims: Claims) -> Principal | str:
    row = conn.execute(select(users).where(users.c.id == claims.subject)).first()
    if row is None or row.disabled:
        return "this account no longer exists or is disabled"
    if claims.token_id is not None:
        revoked = conn.execute(
            select(revoked_tokens.c.token_id).where(revoked_tokens.c.token_id == claims.token_id)
        ).first()
        if revoked is not None:
            return _REVOKED
    return Principal(row.id, row.username, frozenset(row.roles))


def _credentials(conn: Connection, username: str) -> Any:
    return conn.execute(
        select(
            users.c.id, users.c.username, users.c.password_hash, users.c.roles, users.c.disabled
        ).where(users.c.username == username)
    ).first()
