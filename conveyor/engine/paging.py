"""Opaque list cursors. Lists are newest first by id: ids are UUIDv7, so id order is
creation order, and a cursor is exact (no timestamp rounding between backends)."""

from __future__ import annotations

import base64
import binascii

from conveyor.domain.ids import is_valid_id
from conveyor.errors import InvalidInputError

MAX_LIMIT = 100


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInputError(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The id a cursor stands for; anything this server did not issue is a 422."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = base64.urlsafe_b64decode(padded.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        value = ""
    if not is_valid_id(value):
        raise InvalidInputError("cursor is not one this server issued")
    return value
