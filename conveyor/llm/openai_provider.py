"""The official ``openai`` SDK (any OpenAI-compatible ``base_url``, so local servers work)."""

from __future__ import annotations

import json
import time
from typing import Any

from conveyor.errors import ConfigurationError, TaskFailure
from conveyor.llm.types import Completion, Request, TokenUsage, ToolCall


class OpenAIProvider:
    name = "openai"
    default_model = "gpt-4o-mini"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        http_client: Any = None,
    ) -> None:
        try:
            import openai
        except ImportError as exc:  # the extra is not installed
            raise ConfigurationError("pip install 'conveyor[openai]' to use OpenAI") from exc
        self._openai = openai
        self._client = openai.AsyncOpenAI(
            api_key=api_key or "not-needed-for-local-servers",
            base_url=base_url,
            timeout=timeout_s,
            max_retries=2,
            http_client=http_client,
        )

    async def complete(self, request: Request) -> Completion:
        kwargs: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
        }
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.tools:
            kwargs["tools"] = request.tools
        started = time.perf_counter()
        try:
            response = await self._client.chat.completions.create(**kwargs)
        except self._openai.APIError as exc:
            raise TaskFailure(f"OpenAI call failed: {exc}") from exc
        latency = (time.perf_counter() - started) * 1000
        choice = response.choices[0]
        message = choice.message
        calls = [
            ToolCall(c.id, c.function.name, _arguments(c.function.arguments))
            for c in (message.tool_calls or [])
            if getattr(c, "function", None) is not None
        ]
        return Completion(
            text=message.content or "",
            model=response.model or request.model,
            provider=self.name,
            usage=usage_from_openai(response.usage),
            tool_calls=calls,
            latency_ms=latency,
            finish_reason=choice.finish_reason,
        )


def usage_from_openai(usage: Any) -> TokenUsage:
    """``prompt_tokens`` already includes the cached ones (``prompt_tokens_details``)."""
    if usage is None:
        return TokenUsage()
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) or 0
    return TokenUsage(
        input_tokens=int(usage.prompt_tokens or 0),
        output_tokens=int(usage.completion_tokens or 0),
        cached_tokens=int(cached),
    )


def _arguments(raw: str | None) -> dict[str, Any]:
    try:
        parsed = json.loads(raw or "{}")
    except json.JSONDecodeError:
        return {"_raw": raw}
    return parsed if isinstance(parsed, dict) else {"_value": parsed}
