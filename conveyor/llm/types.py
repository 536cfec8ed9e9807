"""What a model call takes and gives, whatever the provider."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str

    @classmethod
    def of(cls, value: Message | dict[str, Any]) -> Message:
        if isinstance(value, Message):
            return value
        return cls(value["role"], str(value["content"]))


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Raw counts as the provider reported them. ``input_tokens`` includes cached ones."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    model: str
    provider: str
    usage: TokenUsage
    tool_calls: list[ToolCall] = field(default_factory=list)
    cost_usd: float | None = None
    latency_ms: float = 0.0
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Request:
    messages: list[Message]
    model: str
    max_tokens: int = 1024
    temperature: float | None = None
    tools: list[dict[str, Any]] | None = None


class Provider(Protocol):
    """A model API. ``name`` goes into usage rows (openai, anthropic, fake...)."""

    name: str
    default_model: str

    async def complete(self, request: Request) -> Completion: ...
