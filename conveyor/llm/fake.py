"""A deterministic, offline provider for tests and examples.

It answers with the first sentence of each paragraph of the last user message (a crude
but honest "summary"), and counts tokens as words, so runs are reproducible and cost
something measurable.
"""

from __future__ import annotations

import re
import time

from conveyor.llm.types import Completion, Request, TokenUsage

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class FakeProvider:
    name = "fake"
    default_model = "fake-1"

    async def complete(self, request: Request) -> Completion:
        started = time.perf_counter()
        prompt = next(
            (m.content for m in reversed(request.messages) if m.role == "user"),
            request.messages[-1].content if request.messages else "",
        )
        firsts = []
        for paragraph in (p.strip() for p in prompt.split("\n") if p.strip()):
            firsts.append(_SENTENCE_END.split(paragraph, maxsplit=1)[0])
        words = " ".join(firsts).split()[: request.max_tokens]
        text = " ".join(words)
        input_tokens = sum(len(m.content.split()) for m in request.messages)
        return Completion(
            text=text,
            model=request.model,
            provider=self.name,
            usage=TokenUsage(input_tokens=input_tokens, output_tokens=len(words)),
            latency_ms=(time.perf_counter() - started) * 1000,
            finish_reason="stop",
        )
