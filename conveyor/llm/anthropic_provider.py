"""The official ``anthropic`` SDK."""

from __future__ import annotations

import logging
import time
from typing import Any

from conveyor.errors import ConfigurationError, TaskFailure
from conveyor.llm.types import Completion, Request, TokenUsage, ToolCall

log = logging.getLogger("conveyor.llm.anthropic")


class AnthropicProvider:
    name = "anthropic"
    default_model = "claude-haiku-4-5"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        http_client: Any = None,
    ) -> None:
        try:
            import anthropic
        except ImportError as exc:
            raise ConfigurationError("pip install 'conveyor[anthropic]' to use Anthropic") from exc
        self._anthropic = anthropic
        self._warned_temperature = False
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout_s,
            max_retries=2,
            http_client=http_client,
        )

    async def complete(self, request: Request) -> Completion:
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        kwargs: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": [
                {"role": m.role, "content": m.content}
                for m in request.messages
                if m.role in ("user", "assistant")
            ],
        }
        if system:
            kwargs["system"] = system
        if request.temperature is not None and not self._warned_temperature:
            # the Messages API this SDK speaks has no sampling temperature any more
            self._warned_temperature = True
            log.warning("Anthropic: temperature is not supported by this API; ignored")
        if request.tools:
            kwargs["tools"] = request.tools
        started = time.perf_counter()
        try:
            response = await self._client.messages.create(**kwargs)
        except self._anthropic.APIError as exc:
            raise TaskFailure(f"Anthropic call failed: {exc}") from exc
        latency = (time.perf_counter() - started) * 1000
        texts = [b.text for b in response.content if getattr(b, "type", None) == "text"]
        calls = [
            ToolCall(b.id, b.name, dict(b.input or {}))
            for b in response.content
            if getattr(b, "type", None) == "tool_use"
        ]
        return Completion(
            text="".join(texts),
            model=response.model or request.model,
            provider=self.name,
            usage=usage_from_anthropic(response.usage),
            tool_calls=calls,
            latency_ms=latency,
            finish_reason=response.stop_reason,
        )


def usage_from_anthropic(usage: Any) -> TokenUsage:
    """Anthropic reports cache reads and writes apart from ``input_tokens``; the row keeps
    the total input (so it compares with OpenAI's) and the cached part."""
    if usage is None:
        return TokenUsage()
    cache_read = int(getattr(usage, "cache_read_input_tokens", None) or 0)
    cache_write = int(getattr(usage, "cache_creation_input_tokens", None) or 0)
    return TokenUsage(
        input_tokens=int(usage.input_tokens or 0) + cache_read + cache_write,
        output_tokens=int(usage.output_tokens or 0),
        cached_tokens=cache_read,
        cache_write_tokens=cache_write,
    )
