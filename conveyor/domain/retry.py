"""Retry policy: how long to wait before the next attempt."""

from __future__ import annotations

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
    def exponential(cls, delay_s: float = 1.0, max_delay_s: float = 300.0) -> Backoff:
        return cls("exponential", delay_s, max_delay_s)

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
        if not data:
            return cls()
        kind = data.get("type", "exponential")
        delay = float(data.get("delay_s", 1.0))
        default_max = delay if kind == "fixed" else max(300.0, delay)
        return cls(
            kind,
            delay,
            float(data.get("max_delay_s") or default_max),
            bool(data.get("jitter", kind == "exponential")),
        )
