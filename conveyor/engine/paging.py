"""List cursors. Lists are newest first by id: ids are UUIDv7, so id order is creation
order, and the cursor (the last id of a page) is exact on every backend."""

from __future__ import annotations

from conveyor.domain.ids import is_valid_id
from conveyor.errors import InvalidInputError

MAX_LIMIT = 100


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInputError(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def encode_cursor(last_id: str) -> str:
    return last_id


def decode_cursor(cursor: str) -> str:
    """The id a cursor stands for; anything that is not an id is a 422."""
    if not is_valid_id(cursor):
        raise InvalidInputError("cursor is not one this server issued")
    return cursor
