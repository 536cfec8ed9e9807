"""Opaque list cursors and page-size bounds."""

from __future__ import annotations

import base64
import re
import uuid

import pytest

from conveyor.domain.ids import new_id
from conveyor.engine.paging import MAX_LIMIT, check_limit, decode_cursor, encode_cursor
from conveyor.errors import InvalidInputError


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


SAMPLE_ID = "0190f0e4-7b1c-7d3e-8a2a-1234567890ab"


def test_cursor_round_trip() -> None:
    for last_id in [SAMPLE_ID, str(uuid.uuid4()), *(new_id() for _ in range(50))]:
        cursor = encode_cursor(last_id)
        assert decode_cursor(cursor) == last_id


def test_cursor_is_the_last_id_and_url_safe() -> None:
    # the cursor is the page's last id: exact on both backends, and its format (a UUID)
    # is published, so a client can tell a valid cursor from garbage
    last_id = new_id()
    cursor = encode_cursor(last_id)
    assert cursor == last_id
    assert re.fullmatch(r"[0-9a-f-]+", cursor), cursor


def test_distinct_ids_give_distinct_cursors() -> None:
    ids = [new_id() for _ in range(500)]
    cursors = {encode_cursor(i) for i in ids}
    assert len(cursors) == len(ids)


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("", id="empty"),
        pytest.param("!!!!", id="punctuation"),
        pytest.param("not a cursor", id="text"),
        pytest.param("a", id="impossible-length"),
        pytest.param("é", id="non-ascii"),
        pytest.param(_b64(b"hello world"), id="b64-text"),
        pytest.param(_b64(b"\xff\xfe\xfd\xfc\xfb\xfa"), id="b64-not-utf8"),
        pytest.param(_b64(b"' OR 1=1 --"), id="b64-sql"),
        pytest.param(_b64(SAMPLE_ID.upper().encode()), id="b64-uppercase-id"),
        pytest.param(_b64(SAMPLE_ID.replace("-", "").encode()), id="b64-hex-id"),
        pytest.param(_b64((SAMPLE_ID + "\n").encode()), id="b64-id-newline"),
        pytest.param(_b64((SAMPLE_ID + "x").encode()), id="b64-id-suffix"),
        pytest.param(_b64(b"12345"), id="b64-number"),
    ],
)
def test_foreign_cursors_are_invalid_input(cursor: str) -> None:
    with pytest.raises(InvalidInputError):
        decode_cursor(cursor)


def test_tampered_cursor_is_rejected() -> None:
    cursor = encode_cursor(new_id())
    with pytest.raises(InvalidInputError):
        decode_cursor(cursor[:-4])
    with pytest.raises(InvalidInputError):
        decode_cursor(cursor + "AAAA")


@pytest.mark.parametrize("limit", [1, 2, 50, MAX_LIMIT])
def test_check_limit_accepts_the_range(limit: int) -> None:
    assert check_limit(limit) == limit


@pytest.mark.parametrize("limit", [0, -1, -100, MAX_LIMIT + 1, 10**9])
def test_check_limit_rejects_out_of_range(limit: int) -> None:
    with pytest.raises(InvalidInputError):
        check_limit(limit)


def test_max_limit_is_a_sane_page_size() -> None:
    assert 10 <= MAX_LIMIT <= 1000
