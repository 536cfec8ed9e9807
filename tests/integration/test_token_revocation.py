"""Signing a token out, on both backends: every replica refuses it, nothing else changes."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import jwt
import pytest
from sqlalchemy import select

from conveyor.auth.tokens import TokenPolicy, TokenService
from conveyor.auth.users import Accounts, LoginLimiter
from conveyor.errors import AuthenticationError, InvalidInputError
from conveyor.store.database import Database
from conveyor.store.schema import revoked_tokens

SECRET = "r" * 48


def accounts(db: Database) -> Accounts:
    """One API replica's view of the users (its own principal cache)."""
    return Accounts(db, TokenService(TokenPolicy(), secret=SECRET), LoginLimiter())


async def test_a_signed_out_token_is_refused_by_every_replica(
    db: Database, open_db: Callable[[], Database]
) -> None:
    here = accounts(db)
    other_db = open_db()
    try:
        there = accounts(other_db)
        user = await here.create_user("signout", "a-good-password", ["user"])
        kept, _ = await here.login("signout", "a-good-password", "test")
        gone, _ = await here.login("signout", "a-good-password", "test")
        assert here.tokens.verify(kept).token_id != here.tokens.verify(gone).token_id
        # both replicas have seen (and cached) the token before it is signed out
        assert (await there.principal(gone)).id == user.id
        assert (await here.principal(gone)).id == user.id

        await here.revoke(gone)
        await here.revoke(gone)  # idempotent

        with pytest.raises(AuthenticationError, match="signed out"):
            await here.principal(gone)
        there._cache.clear()  # what the few seconds of its cache do on their own
        with pytest.raises(AuthenticationError, match="signed out"):
            await there.principal(gone)
        # the user's other token is untouched
        assert (await there.principal(kept)).id == user.id
        assert (await here.principal(kept)).id == user.id
    finally:
        await other_db.close()


async def test_revocations_are_forgotten_once_their_tokens_expired(db: Database) -> None:
    here = accounts(db)
    user = await here.create_user("expiring", "a-good-password", ["user"])
    long_ago = datetime(2000, 1, 1, tzinfo=UTC)
    await db.write(
        lambda tx: tx.conn.execute(
            revoked_tokens.insert().values(token_id="old", owner=user.id, expires_at=long_ago)
        )
    )
    token, _ = await here.login("expiring", "a-good-password", "test")
    await here.revoke(token)
    left = await db.read(lambda c: c.execute(select(revoked_tokens.c.token_id)).scalars().all())
    assert left == [here.tokens.verify(token).token_id]


async def test_only_our_own_tokens_with_an_id_can_be_revoked(db: Database) -> None:
    here = accounts(db)
    user = await here.create_user("old-token", "a-good-password", ["user"])
    now = int(time.time())
    claims = {"sub": user.id, "iat": now, "exp": now + 600, "roles": ["user"]}
    # issued before tokens carried an id: valid until it expires, nothing to revoke
    without_id = jwt.encode({**claims, "iss": "conveyor", "aud": "conveyor"}, SECRET, "HS256")
    assert (await here.principal(without_id)).id == user.id
    with pytest.raises(InvalidInputError, match="no id"):
        await here.revoke(without_id)
    # a token this server does not accept (another issuer) is not revoked either
    foreign = jwt.encode({**claims, "iss": "idp", "aud": "conveyor", "jti": "x"}, SECRET, "HS256")
    with pytest.raises(AuthenticationError):
        await here.revoke(foreign)
