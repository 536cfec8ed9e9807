"""Password hashing with argon2 (pwdlib), always off the event loop."""

from __future__ import annotations

import asyncio

from pwdlib import PasswordHash

from conveyor.errors import InvalidInputError

MIN_LENGTH = 8
MAX_LENGTH = 256
_hasher = PasswordHash.recommended()
# verifying against this keeps "no such user" as slow as "wrong password"
_DUMMY_HASH = _hasher.hash("conveyor-timing-equaliser")


def check_password_policy(password: str) -> None:
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise InvalidInputError(f"passwords must be {MIN_LENGTH}-{MAX_LENGTH} characters")


async def hash_password(password: str) -> str:
    check_password_policy(password)
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password: str, password_hash: str | None) -> bool:
    """Constant-effort check; ``password_hash=None`` (unknown user) always fails."""
    target = password_hash or _DUMMY_HASH
    try:
        ok = await asyncio.to_thread(_hasher.verify, password, target)
    except Exception:  # a malformed stored hash is a failed login, not a crash
        return False
    return ok and password_hash is not None
