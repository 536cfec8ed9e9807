"""Retry policy: how long to wait before the next attempt."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Literal

from conveyor.errors import InvalidInputError

BackoffKind = Literal["exponential", "fixed"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before attempt ``n + 1`` after attempt ``n`` failed.

    ``exponential``: ``delay_s * 2**(n-1)``, capped at ``max_delay_s``, with "full jitter"
    on the upper half (the delay is drawn from ``[d/2, d]``) so a burst of failures does
    not retry in lockstep. ``fixed``: always ``delay_s`` (jitter optional).
    """

    kind: BackoffKind = "exponential"
    delay_s: float = 1.0
    max_delay_s: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("exponential", "fixed"):
            raise InvalidInputError(f"backoff type must be exponential or fixed, not {self.kind!r}")
        if not 0 <= self.delay_s <= 86_400:
            raise InvalidInputError("backoff delay_s must be between 0 and 86400")
        if not self.delay_s <= self.max_delay_s <= 7 * 86_400:
            raise InvalidInputError("backoff max_delay_s must be >= delay_s and <= 604800")

    @classmethod
    def exponential(cls, delay_s: float = 1.0, max_delay_s: float | None = None) -> Backoff:
        """Doubling from ``delay_s``, capped at ``max_delay_s`` (default: 300 s, or
        ``delay_s`` itself when that is longer)."""
        return cls(
            "exponential", delay_s, max(300.0, delay_s) if max_delay_s is None else max_delay_s
        )

    @classmethod
    def fixed(cls, delay_s: float, *, jitter: bool = False) -> Backoff:
        return cls("fixed", delay_s, max(delay_s, 0.0), jitter)

    def delay_for(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if self.kind == "fixed":
            base = self.delay_s
        else:
            base = min(self.max_delay_s, self.delay_s * (2 ** max(0, min(attempt - 1, 40))))
        if not self.jitter or base == 0:
            return base
        draw = (rng or random).random()
        return base / 2 + draw * base / 2

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "delay_s": self.delay_s,
            "max_delay_s": self.max_delay_s,
            "jitter": self.jitter,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Backoff:
        """Parse ``{type, delay_s, max_delay_s?, jitter?}``; bad values raise
        :class:`InvalidInputError`."""
        if not data:
            return cls()
        if not isinstance(data, dict):
            raise InvalidInputError("backoff must be an object {type, delay_s, max_delay_s}")
        kind = data.get("type", "exponential")
        delay = _seconds(data.get("delay_s", 1.0), "delay_s")
        default_max = delay if kind == "fixed" else max(300.0, delay)
        raw_max = data.get("max_delay_s")
        jitter = data.get("jitter", kind == "exponential")
        if not isinstance(jitter, bool):
            raise InvalidInputError("backoff jitter must be true or false")
        return cls(
            kind,
            delay,
            default_max if raw_max is None else _seconds(raw_max, "max_delay_s"),
            jitter,
        )


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInputError(f"backoff {name} must be a number of seconds")
    return float(value)
