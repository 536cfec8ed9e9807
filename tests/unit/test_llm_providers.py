"""The OpenAI and Anthropic adapters through the official SDKs, offline.

Each SDK gets an ``httpx2.AsyncClient`` over a ``MockTransport`` whose handler checks
the request the adapter sent and answers with a body shaped like the real API's. Then
the fake provider's determinism, and the price book.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import httpx2
import pytest

from conveyor.errors import TaskFailure
from conveyor.llm.anthropic_provider import AnthropicProvider
from conveyor.llm.fake import FakeProvider
from conveyor.llm.openai_provider import OpenAIProvider
from conveyor.llm.prices import BUILTIN_PRICES, PriceBook
from conveyor.llm.types import Message, Request, TokenUsage, ToolCall

Handler = Callable[[httpx2.Request], httpx2.Response]

WEATHER_TOOL_OPENAI: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
WEATHER_TOOL_ANTHROPIC: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}

# published prices, USD per million tokens
GPT_4O_MINI = {"input": 0.15, "output": 0.60, "cache_read": 0.075}
CLAUDE_HAIKU_45 = {"input": 1.00, "output": 5.00, "cache_read": 0.10, "cache_write": 1.25}


class Recorder:
    """A MockTransport handler that keeps every request and answers from a script."""

    def __init__(self, *responses: httpx2.Response) -> None:
        self.responses = list(responses)
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if len(self.responses) > 1:
            return self.responses.pop(0)
        return self.responses[0]

    def client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=httpx2.MockTransport(self))

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


def json_response(status: int, body: dict[str, Any], **headers: str) -> httpx2.Response:
    return httpx2.Response(status, json=body, headers={"x-request-id": "req_test", **headers})


def request(
    *messages: Message,
    model: str,
    max_tokens: int = 256,
    temperature: float | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> Request:
    return Request(
        messages=list(messages),
        model=model,
        max_tokens=max_tokens,
        temperature=temperature,
        tools=tools,
    )


# -- OpenAI -----------------------------------------------------------------------------------


def openai_completion(
    *,
    content: str | None,
    tool_calls: list[dict[str, Any]] | None = None,
    finish_reason: str = "stop",
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cached_tokens: int = 0,
    model: str = "gpt-4o-mini-2024-07-18",
) -> dict[str, Any]:
    """A chat.completions response body as api.openai.com sends it."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "refusal": None,
        "annotations": [],
    }
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }


def openai_provider(recorder: Recorder) -> OpenAIProvider:
    return OpenAIProvider(api_key="sk-test-key", http_client=recorder.client())


async def test_openai_text_completion_and_usage_with_cached_tokens() -> None:
    recorder = Recorder(
        json_response(
            200,
            openai_completion(
                content="Paris is the capital of France.",
                prompt_tokens=2006,
                completion_tokens=300,
                cached_tokens=1920,
            ),
        )
    )
    provider = openai_provider(recorder)
    completion = await provider.complete(
        request(
            Message("system", "Be brief."),
            Message("user", "Capital of France?"),
            model="gpt-4o-mini",
            max_tokens=300,
        )
    )
    assert completion.text == "Paris is the capital of France."
    assert completion.provider == "openai"
    assert completion.model == "gpt-4o-mini-2024-07-18"  # the model that answered
    assert completion.finish_reason == "stop"
    assert completion.tool_calls == []
    # prompt_tokens already includes the cached ones
    assert completion.usage == TokenUsage(
        input_tokens=2006, output_tokens=300, cached_tokens=1920, cache_write_tokens=0
    )
    assert completion.latency_ms >= 0
    assert completion.cost_usd is None  # priced by the client, not the adapter

    (sent,) = recorder.requests
    assert sent.method == "POST"
    assert sent.url == "https://api.openai.com/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test-key"
    assert sent.headers["content-type"] == "application/json"
    body = json.loads(sent.content)
    assert body == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
        ],
        "max_tokens": 300,
    }


async def test_openai_sends_temperature_and_tools_only_when_given() -> None:
    recorder = Recorder(json_response(200, openai_completion(content="ok")))
    provider = openai_provider(recorder)
    await provider.complete(
        request(
            Message("user", "hi"),
            Message("assistant", "hello"),
            Message("user", "weather?"),
            model="gpt-4o",
            max_tokens=10,
            temperature=0.2,
            tools=[WEATHER_TOOL_OPENAI],
        )
    )
    (body,) = recorder.bodies
    assert body["temperature"] == 0.2
    assert body["tools"] == [WEATHER_TOOL_OPENAI]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["model"] == "gpt-4o" and body["max_tokens"] == 10


async def test_openai_tool_calls() -> None:
    recorder = Recorder(
        json_response(
            200,
            openai_completion(
                content=None,
                tool_calls=[
                    {
                        "id": "call_abc123",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_def456",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": '{"city": "Oslo", "unit": "c"}',
                        },
                    },
                ],
                finish_reason="tool_calls",
                prompt_tokens=82,
                completion_tokens=17,
            ),
        )
    )
    completion = await openai_provider(recorder).complete(
        request(Message("user", "Weather?"), model="gpt-4o-mini", tools=[WEATHER_TOOL_OPENAI])
    )
    assert completion.text == ""
    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls == [
        ToolCall("call_abc123", "get_weather", {"city": "Paris"}),
        ToolCall("call_def456", "get_weather", {"city": "Oslo", "unit": "c"}),
    ]
    assert completion.usage == TokenUsage(input_tokens=82, output_tokens=17, cached_tokens=0)


async def test_openai_tool_call_arguments_that_are_not_an_object_are_kept() -> None:
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}},
        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "[1, 2]"}},
        {"id": "c3", "type": "function", "function": {"name": "h", "arguments": ""}},
    ]
    recorder = Recorder(
        json_response(
            200, openai_completion(content=None, tool_calls=calls, finish_reason="tool_calls")
        )
    )
    completion = await openai_provider(recorder).complete(
        request(Message("user", "x"), model="gpt-4o-mini")
    )
    assert completion.tool_calls == [
        ToolCall("c1", "f", {"_raw": "{not json"}),
        ToolCall("c2", "g", {"_value": [1, 2]}),
        ToolCall("c3", "h", {}),
    ]


async def test_openai_usage_without_details_counts_no_cached_tokens() -> None:
    body = openai_completion(content="ok", prompt_tokens=12, completion_tokens=3)
    del body["usage"]["prompt_tokens_details"]
    del body["usage"]["completion_tokens_details"]
    recorder = Recorder(json_response(200, body))
    completion = await openai_provider(recorder).complete(
        request(Message("user", "x"), model="local-model")
    )
    assert completion.usage == TokenUsage(input_tokens=12, output_tokens=3, cached_tokens=0)


async def test_openai_bad_request_becomes_a_task_failure_without_retrying() -> None:
    recorder = Recorder(
        json_response(
            400,
            {
                "error": {
                    "message": "Invalid value for 'max_tokens': must be at most 16384.",
                    "type": "invalid_request_error",
                    "param": "max_tokens",
                    "code": "invalid_value",
                }
            },
        )
    )
    with pytest.raises(TaskFailure, match="must be at most 16384") as caught:
        await openai_provider(recorder).complete(
            request(Message("user", "x"), model="gpt-4o-mini", max_tokens=100_000)
        )
    assert "OpenAI" in str(caught.value)
    assert len(recorder.requests) == 1  # a 400 is not retried by the SDK


async def test_openai_server_error_becomes_a_task_failure_after_the_sdk_retries() -> None:
    recorder = Recorder(
        json_response(
            500,
            {
                "error": {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            },
            **{"retry-after-ms": "1"},
        )
    )
    with pytest.raises(TaskFailure, match="server had an error"):
        await openai_provider(recorder).complete(request(Message("user", "x"), model="gpt-4o"))
    assert len(recorder.requests) >= 2  # the SDK retried the 5xx
    assert len({r.content for r in recorder.requests}) == 1  # the same request each time


async def test_openai_recovers_when_a_retry_succeeds() -> None:
    recorder = Recorder(
        json_response(
            503,
            {"error": {"message": "overloaded", "type": "server_error", "param": None}},
            **{"retry-after-ms": "1"},
        ),
        json_response(200, openai_completion(content="fine", prompt_tokens=5)),
    )
    completion = await openai_provider(recorder).complete(
        request(Message("user", "x"), model="gpt-4o-mini")
    )
    assert completion.text == "fine" and completion.usage.input_tokens == 5
    assert len(recorder.requests) == 2


# -- Anthropic --------------------------------------------------------------------------------


def anthropic_message(
    content: list[dict[str, Any]],
    *,
    stop_reason: str = "end_turn",
    input_tokens: int = 0,
    output_tokens: int = 0,
    cache_read: int | None = 0,
    cache_write: int | None = 0,
    model: str = "claude-haiku-4-5-20251001",
) -> dict[str, Any]:
    """A Messages API response body as api.anthropic.com sends it."""
    usage: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    if cache_read is not None:
        usage["cache_read_input_tokens"] = cache_read
    if cache_write is not None:
        usage["cache_creation_input_tokens"] = cache_write
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": cache_write,
            "ephemeral_1h_input_tokens": 0,
        }
    usage["service_tier"] = "standard"
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def anthropic_provider(recorder: Recorder) -> AnthropicProvider:
    return AnthropicProvider(api_key="sk-ant-test", http_client=recorder.client())


async def test_anthropic_text_and_usage_with_cache_reads_and_writes() -> None:
    recorder = Recorder(
        json_response(
            200,
            anthropic_message(
                [{"type": "text", "text": "Hello"}, {"type": "text", "text": ", world."}],
                input_tokens=21,
                output_tokens=95,
                cache_read=1800,
                cache_write=248,
            ),
        )
    )
    completion = await anthropic_provider(recorder).complete(
        request(
            Message("system", "You are terse."),
            Message("user", "Greet me."),
            Message("assistant", "Hi?"),
            Message("system", "Use English."),
            Message("user", "Properly."),
            model="claude-haiku-4-5",
            max_tokens=512,
        )
    )
    assert completion.text == "Hello, world."
    assert completion.provider == "anthropic"
    assert completion.model == "claude-haiku-4-5-20251001"
    assert completion.finish_reason == "end_turn"
    assert completion.tool_calls == []
    # our input_tokens is the whole prompt: uncached + cache reads + cache writes
    assert completion.usage == TokenUsage(
        input_tokens=21 + 1800 + 248, output_tokens=95, cached_tokens=1800, cache_write_tokens=248
    )

    (sent,) = recorder.requests
    assert sent.method == "POST"
    assert sent.url == "https://api.anthropic.com/v1/messages"
    # the key goes in x-api-key or as a bearer token, depending on the SDK version
    assert sent.headers.get("x-api-key") == "sk-ant-test" or (
        sent.headers.get("authorization") == "Bearer sk-ant-test"
    )
    assert sent.headers["anthropic-version"]
    body = json.loads(sent.content)
    assert body == {
        "model": "claude-haiku-4-5",
        "max_tokens": 512,
        # system messages go to the top-level system field, joined
        "system": "You are terse.\n\nUse English.",
        "messages": [
            {"role": "user", "content": "Greet me."},
            {"role": "assistant", "content": "Hi?"},
            {"role": "user", "content": "Properly."},
        ],
    }


async def test_anthropic_without_system_or_cache_fields() -> None:
    recorder = Recorder(
        json_response(
            200,
            anthropic_message(
                [{"type": "text", "text": "ok"}],
                input_tokens=9,
                output_tokens=2,
                cache_read=None,
                cache_write=None,
            ),
        )
    )
    completion = await anthropic_provider(recorder).complete(
        request(Message("user", "hi"), model="claude-haiku-4-5", max_tokens=5)
    )
    assert completion.text == "ok"
    assert completion.usage == TokenUsage(input_tokens=9, output_tokens=2)
    (body,) = recorder.bodies
    assert body == {
        "model": "claude-haiku-4-5",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    }


async def test_anthropic_call_with_a_temperature_does_not_crash() -> None:
    """``ctx.llm.complete(temperature=...)`` is part of the client API: with Anthropic it
    must reach the model (or be left out), not blow up inside the SDK call."""
    recorder = Recorder(
        json_response(
            200,
            anthropic_message([{"type": "text", "text": "ok"}], input_tokens=3, output_tokens=1),
        )
    )
    completion = await anthropic_provider(recorder).complete(
        request(Message("user", "hi"), model="claude-haiku-4-5", max_tokens=5, temperature=0.3)
    )
    assert completion.text == "ok"
    (body,) = recorder.bodies
    assert body.get("temperature", 0.3) == 0.3


async def test_anthropic_tool_use() -> None:
    recorder = Recorder(
        json_response(
            200,
            anthropic_message(
                [
                    {"type": "text", "text": "Let me check the weather."},
                    {
                        "type": "tool_use",
                        "id": "toolu_01A09q90qw90lq917835lq9",
                        "name": "get_weather",
                        "input": {"city": "Paris", "unit": "celsius"},
                    },
                ],
                stop_reason="tool_use",
                input_tokens=472,
                output_tokens=89,
            ),
        )
    )
    completion = await anthropic_provider(recorder).complete(
        request(
            Message("user", "Weather in Paris?"),
            model="claude-haiku-4-5",
            tools=[WEATHER_TOOL_ANTHROPIC],
        )
    )
    assert completion.text == "Let me check the weather."
    assert completion.finish_reason == "tool_use"
    assert completion.tool_calls == [
        ToolCall(
            "toolu_01A09q90qw90lq917835lq9", "get_weather", {"city": "Paris", "unit": "celsius"}
        )
    ]
    assert completion.usage == TokenUsage(input_tokens=472, output_tokens=89)
    (body,) = recorder.bodies
    assert body["tools"] == [WEATHER_TOOL_ANTHROPIC]


async def test_anthropic_bad_request_becomes_a_task_failure_without_retrying() -> None:
    recorder = Recorder(
        json_response(
            400,
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "message": "max_tokens: 100000 > 8192, which is the maximum allowed",
                },
                "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
            },
        )
    )
    with pytest.raises(TaskFailure, match="which is the maximum allowed") as caught:
        await anthropic_provider(recorder).complete(
            request(Message("user", "x"), model="claude-haiku-4-5", max_tokens=100_000)
        )
    assert "Anthropic" in str(caught.value)
    assert len(recorder.requests) == 1


async def test_anthropic_server_error_becomes_a_task_failure() -> None:
    recorder = Recorder(
        json_response(
            500,
            {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}},
            **{"retry-after-ms": "1"},
        )
    )
    with pytest.raises(TaskFailure, match="Internal server error"):
        await anthropic_provider(recorder).complete(
            request(Message("user", "x"), model="claude-haiku-4-5")
        )
    assert len(recorder.requests) >= 2
    assert len({r.content for r in recorder.requests}) == 1


# -- the fake provider --------------------------------------------------------------------------


async def test_fake_provider_is_deterministic() -> None:
    provider = FakeProvider()
    prompt = (
        "Durable workflows survive crashes. They replay from a log.\n"
        "\n"
        "Budgets stop runaway costs! Nobody likes surprises.\n"
        "Short line"
    )
    req = request(Message("system", "Be brief."), Message("user", prompt), model="fake-1")
    first = await provider.complete(req)
    second = await provider.complete(req)
    assert (
        first.text
        == second.text
        == ("Durable workflows survive crashes. Budgets stop runaway costs! Short line")
    )
    assert first.usage == second.usage
    input_words = len("Be brief.".split()) + len(prompt.split())
    assert first.usage == TokenUsage(input_tokens=input_words, output_tokens=10)
    assert (first.provider, first.model, first.finish_reason) == ("fake", "fake-1", "stop")

    short = await provider.complete(request(Message("user", prompt), model="fake-1", max_tokens=3))
    assert short.text == "Durable workflows survive"
    assert short.usage.output_tokens == 3
    # the last user message is the one summarised
    thread = await provider.complete(
        request(
            Message("user", "Old question. Ignore."),
            Message("assistant", "Old answer."),
            Message("user", "New question. Really."),
            model="fake-1",
        )
    )
    assert thread.text == "New question."


# -- prices --------------------------------------------------------------------------------------


def per_mtok(tokens: int, price: float) -> float:
    return tokens * price / 1_000_000


def test_override_table_wins_over_genai_prices() -> None:
    book = PriceBook(
        {
            "gpt-4o-mini": {"input_per_mtok": 1.0, "output_per_mtok": 2.0, "cached_per_mtok": 0.5},
            "openai/gpt-4o": {"input_per_mtok": 3.0, "output_per_mtok": 4.0},
        }
    )
    usage = TokenUsage(input_tokens=10_000, output_tokens=2_000, cached_tokens=4_000)
    cost, source = book.cost("openai", "gpt-4o-mini", usage)
    assert source == "override"
    expected = per_mtok(6_000, 1.0) + per_mtok(4_000, 0.5) + per_mtok(2_000, 2.0)
    assert cost == pytest.approx(expected, abs=1e-12)
    # "provider/model" keys work too; without a cached rate, cached tokens cost the input rate
    cost, source = book.cost("openai", "gpt-4o", usage)
    assert source == "override"
    assert cost == pytest.approx(per_mtok(10_000, 3.0) + per_mtok(2_000, 4.0), abs=1e-12)
    # the table is consulted first only for the models it names
    _, source = book.cost("openai", "gpt-4o-2024-08-06", usage)
    assert source == "genai-prices"


def test_builtin_price_of_the_fake_model() -> None:
    price = BUILTIN_PRICES["fake-1"]
    cost, source = PriceBook().cost(
        "fake", "fake-1", TokenUsage(input_tokens=300, output_tokens=70)
    )
    assert source == "override"
    expected = per_mtok(300, price["input_per_mtok"]) + per_mtok(70, price["output_per_mtok"])
    assert cost == pytest.approx(expected, abs=1e-12)
    assert cost is not None and cost > 0


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4o-mini-2024-07-18"])
def test_genai_prices_for_gpt_4o_mini(model: str) -> None:
    usage = TokenUsage(input_tokens=120_000, output_tokens=8_000, cached_tokens=100_000)
    cost, source = PriceBook().cost("openai", model, usage)
    assert source == "genai-prices"
    expected = (
        per_mtok(20_000, GPT_4O_MINI["input"])
        + per_mtok(100_000, GPT_4O_MINI["cache_read"])
        + per_mtok(8_000, GPT_4O_MINI["output"])
    )
    assert cost == pytest.approx(expected, rel=1e-9)
    uncached, _ = PriceBook().cost(
        "openai", model, TokenUsage(input_tokens=120_000, output_tokens=8_000)
    )
    assert uncached == pytest.approx(
        per_mtok(120_000, GPT_4O_MINI["input"]) + per_mtok(8_000, GPT_4O_MINI["output"]),
        rel=1e-9,
    )
    assert cost is not None and uncached is not None and cost < uncached


def test_genai_prices_for_claude_with_cache_reads_and_writes() -> None:
    usage = TokenUsage(
        input_tokens=21 + 1_800 + 248, output_tokens=95, cached_tokens=1_800, cache_write_tokens=248
    )
    cost, source = PriceBook().cost("anthropic", "claude-haiku-4-5-20251001", usage)
    assert source == "genai-prices"
    expected = (
        per_mtok(21, CLAUDE_HAIKU_45["input"])
        + per_mtok(1_800, CLAUDE_HAIKU_45["cache_read"])
        + per_mtok(248, CLAUDE_HAIKU_45["cache_write"])
        + per_mtok(95, CLAUDE_HAIKU_45["output"])
    )
    assert cost == pytest.approx(expected, rel=1e-9)


async def test_an_adapters_usage_is_priced_end_to_end() -> None:
    recorder = Recorder(
        json_response(
            200,
            openai_completion(
                content="x", prompt_tokens=50_000, completion_tokens=1_000, cached_tokens=40_000
            ),
        )
    )
    completion = await openai_provider(recorder).complete(
        request(Message("user", "x"), model="gpt-4o-mini")
    )
    cost, source = PriceBook().cost(completion.provider, completion.model, completion.usage)
    assert source == "genai-prices"
    assert cost == pytest.approx(
        per_mtok(10_000, GPT_4O_MINI["input"])
        + per_mtok(40_000, GPT_4O_MINI["cache_read"])
        + per_mtok(1_000, GPT_4O_MINI["output"]),
        rel=1e-9,
    )


@pytest.mark.parametrize(
    ("provider", "model"),
    [("openai", "no-such-model-9000"), ("fake", "mystery-model"), ("anthropic", "claude-0")],
)
def test_unknown_model_costs_none_and_warns_once(
    provider: str, model: str, caplog: pytest.LogCaptureFixture
) -> None:
    book = PriceBook()
    usage = TokenUsage(input_tokens=1_000, output_tokens=10)
    with caplog.at_level(logging.WARNING, logger="conveyor.llm.prices"):
        assert book.cost(provider, model, usage) == (None, None)
        assert book.cost(provider, model, usage) == (None, None)
        assert book.cost(provider, model, TokenUsage()) == (None, None)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert model in warnings[0].getMessage()
    # another unknown model warns once more
    with caplog.at_level(logging.WARNING, logger="conveyor.llm.prices"):
        assert book.cost(provider, f"{model}-b", usage) == (None, None)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
