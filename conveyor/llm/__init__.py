"""LLM calls from steps: a provider protocol, OpenAI/Anthropic adapters (optional
extras), a deterministic fake provider, prices, and usage recording (``ctx.llm``)."""

from conveyor.llm.client import LLMClient
from conveyor.llm.types import Completion, Message, Provider, Request, TokenUsage, ToolCall

__all__ = ["Completion", "LLMClient", "Message", "Provider", "Request", "TokenUsage", "ToolCall"]
