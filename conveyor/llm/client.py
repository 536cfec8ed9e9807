"""``ctx.llm``: model calls made from a step, with budgets and usage rows."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any

from conveyor.engine.usage import UsageRecord
from conveyor.errors import BudgetExceededError, InvalidInputError
from conveyor.llm.prices import PriceBook
from conveyor.llm.types import Completion, Message, Provider, Request, TokenUsage

if TYPE_CHECKING:
    from conveyor.worker.context import Context

log = logging.getLogger("conveyor.llm")
CHARS_PER_TOKEN = 4  # for the pre-call budget estimate only


class LLMClient:
    """Bound to one attempt: every call is priced, recorded and checked against the
    execution's budget."""

    def __init__(
        self,
        ctx: Context,
        providers: dict[str, Provider],
        default_provider: str,
        prices: PriceBook,
        default_model: str | None = None,
    ) -> None:
        self._ctx = ctx
        self._providers = providers
        self._default_provider = default_provider
        self._default_model = default_model
        self._prices = prices
        self._budget: float | bool | None = False  # False: not looked up yet
        self.calls = 0

    @property
    def provider(self) -> str:
        return self._default_provider

    async def complete(
        self,
        prompt: str | None = None,
        *,
        messages: list[Message | dict[str, Any]] | None = None,
        system: str | None = None,
        model: str | None = None,
        provider: str | None = None,
        max_tokens: int = 1024,
        temperature: float | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Completion:
        """Call a model. Give ``prompt`` (one user message) or ``messages``."""
        chosen = self._providers.get(provider or self._default_provider)
        if chosen is None:
            raise InvalidInputError(
                f"no LLM provider {provider!r}; configured: {', '.join(sorted(self._providers))}"
            )
        thread: list[Message] = []
        if system:
            thread.append(Message("system", system))
        if messages:
            thread.extend(Message.of(m) for m in messages)
        if prompt is not None:
            thread.append(Message("user", prompt))
        if not thread:
            raise InvalidInputError("give a prompt or messages")
        if not 1 <= max_tokens <= 1_000_000:
            raise InvalidInputError("max_tokens must be between 1 and 1000000")
        request = Request(
            messages=thread,
            model=model
            or (self._default_model if provider is None else None)
            or chosen.default_model,
            max_tokens=max_tokens,
            temperature=temperature,
            tools=tools,
        )
        await self._check_budget(chosen.name, request)
        completion = await chosen.complete(request)
        cost, source = self._prices.cost(completion.provider, completion.model, completion.usage)
        await self._record(completion, cost, source)
        self.calls += 1
        return Completion(
            text=completion.text,
            model=completion.model,
            provider=completion.provider,
            usage=completion.usage,
            tool_calls=completion.tool_calls,
            cost_usd=cost,
            latency_ms=completion.latency_ms,
            finish_reason=completion.finish_reason,
        )

    async def _check_budget(self, provider: str, request: Request) -> None:
        execution_id = self._ctx.execution_id
        if execution_id is None:
            return
        engine = self._ctx._attempt.engine
        if self._budget is False:
            self._budget = await engine.execution_budget(execution_id)
        budget = self._budget
        if budget is None or budget is True:
            return
        spent = await engine.execution_spend(execution_id)
        chars = sum(len(m.content) for m in request.messages)
        estimate, _ = self._prices.cost(
            provider,
            request.model,
            TokenUsage(
                input_tokens=math.ceil(chars / CHARS_PER_TOKEN), output_tokens=request.max_tokens
            ),
        )
        if spent + (estimate or 0.0) > float(budget):
            raise BudgetExceededError(
                f"this call could cost up to ${estimate or 0:.6f}; the execution has spent "
                f"${spent:.6f} of its ${float(budget):.6f} budget"
            )

    async def _record(self, completion: Completion, cost: float | None, source: str | None) -> None:
        ctx = self._ctx
        record = UsageRecord(
            owner=ctx.owner,
            provider=completion.provider,
            model=completion.model,
            input_tokens=completion.usage.input_tokens,
            output_tokens=completion.usage.output_tokens,
            cached_tokens=completion.usage.cached_tokens,
            cost_usd=cost,
            price_source=source,
            latency_ms=round(completion.latency_ms, 3),
            job_id=ctx.job_id,
            execution_id=ctx.execution_id,
            step_id=ctx.step_id,
            attempt=ctx.attempt,
        )
        # the money is spent whatever happens to the attempt: record it even if the
        # step is being cancelled right now
        await asyncio.shield(ctx._attempt.engine.record_usage(record))
