"""Prices per million tokens: a project table first, then ``genai-prices``.

A model nobody prices gives ``None`` (and one warning per model): the call still
happens and its raw token counts are kept, so the cost can be filled in later.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from conveyor.llm.types import TokenUsage

log = logging.getLogger("conveyor.llm.prices")

#: the fake provider costs something, so examples and tests show real arithmetic
BUILTIN_PRICES: dict[str, dict[str, float]] = {
    "fake-1": {"input_per_mtok": 0.5, "output_per_mtok": 1.5, "cached_per_mtok": 0.05},
}


@dataclass(frozen=True, slots=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float
    cached_per_mtok: float | None = None

    def cost(self, usage: TokenUsage) -> float:
        cached = min(usage.cached_tokens, usage.input_tokens)
        cached_rate = self.input_per_mtok if self.cached_per_mtok is None else self.cached_per_mtok
        total = (
            (usage.input_tokens - cached) * self.input_per_mtok
            + cached * cached_rate
            + usage.output_tokens * self.output_per_mtok
        )
        return round(total / 1_000_000, 10)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Price:
        return cls(
            float(data["input_per_mtok"]),
            float(data["output_per_mtok"]),
            None if data.get("cached_per_mtok") is None else float(data["cached_per_mtok"]),
        )


class PriceBook:
    def __init__(self, overrides: dict[str, dict[str, Any]] | None = None) -> None:
        table = {**BUILTIN_PRICES, **(overrides or {})}
        self._overrides = {model: Price.from_json(p) for model, p in table.items()}
        self._warned: set[str] = set()

    def cost(self, provider: str, model: str, usage: TokenUsage) -> tuple[float | None, str | None]:
        """``(cost in USD, where the price came from)``; ``(None, None)`` if unknown."""
        override = self._overrides.get(model) or self._overrides.get(f"{provider}/{model}")
        if override is not None:
            return override.cost(usage), "override"
        try:
            from genai_prices import Usage, calc_price

            price = calc_price(
                Usage(
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cache_read_tokens=usage.cached_tokens or None,
                    cache_write_tokens=usage.cache_write_tokens or None,
                ),
                model,
                provider_id=provider if provider in ("openai", "anthropic") else None,
            )
        except (LookupError, ValueError) as exc:
            if model not in self._warned:
                self._warned.add(model)
                log.warning(
                    "no price for model %r (%s): its cost is recorded as unknown", model, exc
                )
            return None, None
        return float(price.total_price), "genai-prices"
