"""Which providers a process has, from settings and the usual environment variables."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from conveyor.errors import ConfigurationError
from conveyor.llm.client import LLMClient
from conveyor.llm.fake import FakeProvider
from conveyor.llm.prices import PriceBook
from conveyor.llm.types import Provider
from conveyor.settings import Settings

if TYPE_CHECKING:
    from conveyor.worker.context import Context

log = logging.getLogger("conveyor.llm")


class LLMService:
    """Gives each attempt its ``ctx.llm``. The fake provider is always available."""

    def __init__(self, settings: Settings, providers: dict[str, Provider] | None = None) -> None:
        self.settings = settings
        self.prices = PriceBook(settings.llm_prices)
        self.providers: dict[str, Provider] = providers or _providers(settings)
        self.default = _default_provider(settings, self.providers)
        log.info("LLM provider: %s", self.default)

    def llm_for(self, ctx: Context) -> LLMClient:
        return LLMClient(ctx, self.providers, self.default, self.prices, self.settings.llm_model)


def _secret(value: object, env: str) -> str | None:
    if value is not None:
        return str(value.get_secret_value())  # type: ignore[attr-defined]
    return os.environ.get(env) or None


def _providers(settings: Settings) -> dict[str, Provider]:
    found: dict[str, Provider] = {"fake": FakeProvider()}
    openai_key = _secret(settings.openai_api_key, "OPENAI_API_KEY")
    openai_url = settings.openai_base_url or os.environ.get("OPENAI_BASE_URL")
    if openai_key or openai_url or settings.llm_provider == "openai":
        from conveyor.llm.openai_provider import OpenAIProvider

        found["openai"] = OpenAIProvider(
            api_key=openai_key, base_url=openai_url, timeout_s=settings.llm_timeout_s
        )
    anthropic_key = _secret(settings.anthropic_api_key, "ANTHROPIC_API_KEY")
    if anthropic_key or settings.anthropic_base_url or settings.llm_provider == "anthropic":
        from conveyor.llm.anthropic_provider import AnthropicProvider

        found["anthropic"] = AnthropicProvider(
            api_key=anthropic_key,
            base_url=settings.anthropic_base_url,
            timeout_s=settings.llm_timeout_s,
        )
    return found


def _default_provider(settings: Settings, providers: dict[str, Provider]) -> str:
    if settings.llm_provider != "auto":
        if settings.llm_provider not in providers:
            raise ConfigurationError(f"LLM provider {settings.llm_provider!r} is not set up")
        return settings.llm_provider
    for name in ("openai", "anthropic"):
        if name in providers:
            return name
    return "fake"
