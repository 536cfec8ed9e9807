"""Identifiers: UUIDv7 strings, time-ordered (good index locality) and unguessable."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_RAND_BITS = 74
_RAND_MASK = (1 << _RAND_BITS) - 1
_lock = threading.Lock()
_last = (0, 0)  # (millis, random part) of the previous id


def new_id() -> str:
    """Return a new UUIDv7 (RFC 9562) as a lowercase string.

    The first 48 bits are the Unix time in milliseconds and 74 bits are random, so ids
    cannot be enumerated. Within one process ids strictly increase (RFC 9562's monotonic
    random method: inside one millisecond the random part is incremented), so the steps
    of a workflow created together keep their declaration order.
    """
    global _last
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big") & _RAND_MASK
    with _lock:
        last_millis, last_rand = _last
        if millis <= last_millis:
            millis = last_millis
            # keep 32 random bits of headroom below the increment: still unguessable
            rand = last_rand + 1 + (rand & 0xFFFF_FFFF)
            if rand > _RAND_MASK:
                millis, rand = last_millis + 1, rand & 0xFFFF_FFFF
        _last = (millis, rand)
    value = (millis & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= (rand >> 62) << 64  # rand_a (12 bits)
    value |= 0x2 << 62  # variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b (62 bits)
    return str(uuid.UUID(int=value))


def new_token() -> str:
    """Return a fresh lease token: 128 random bits, hex."""
    return os.urandom(16).hex()


def is_valid_id(value: str) -> bool:
    """Tell whether ``value`` looks like an id this system issues (any UUID, lowercase)."""
    return bool(_UUID_RE.match(value))
