"""Identifiers: UUIDv7 strings, time-ordered (good index locality) and unguessable."""

from __future__ import annotations

import os
import re
import time
import uuid

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def new_id() -> str:
    """Return a new UUIDv7 (RFC 9562) as a lowercase string.

    The first 48 bits are the Unix time in milliseconds, the other 74 bits are random,
    so ids sort roughly by creation time but cannot be enumerated.
    """
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a
    value |= 0x2 << 62  # variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b
    return str(uuid.UUID(int=value))


def new_token() -> str:
    """Return a fresh lease token: 128 random bits, hex."""
    return os.urandom(16).hex()


def is_valid_id(value: str) -> bool:
    """Tell whether ``value`` looks like an id this system issues (any UUID, lowercase)."""
    return bool(_UUID_RE.match(value))
