"""LLM usage, budgets and telemetry on SQLite and PostgreSQL.

Steps call ``ctx.llm.complete`` on a real in-process worker. Two providers are set up:
the offline fake one, and the official OpenAI SDK whose HTTP transport is a
``MockTransport`` answering with chat.completions bodies (the only thing mocked). The
telemetry tests seed ``usage`` and ``executions`` rows with chosen timestamps and check
every report against sums computed here, in Python, from the same rows.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx2
import pytest
from sqlalchemy import select

from conveyor import Context, Conveyor
from conveyor.domain.graph import Step
from conveyor.domain.ids import new_id
from conveyor.engine.core import Engine
from conveyor.engine.models import Execution, ExecutionSpec
from conveyor.engine.usage import UsageRecord
from conveyor.errors import InvalidInputError, NotFoundError
from conveyor.llm.fake import FakeProvider
from conveyor.llm.openai_provider import OpenAIProvider
from conveyor.llm.prices import BUILTIN_PRICES
from conveyor.llm.service import LLMService
from conveyor.llm.types import Provider
from conveyor.runtime import Runtime
from conveyor.settings import Settings
from conveyor.store.database import Tx
from conveyor.store.schema import executions, usage
from conveyor.worker.runtime import Worker, WorkerSettings
from conveyor.workflows import Workflow
from tests.conftest import wait_until

ALICE = "alice"
BOB = "bob"
GPT_4O_MINI = {"input": 0.15, "output": 0.60, "cache_read": 0.075}  # USD per MTok, published
FAKE = BUILTIN_PRICES["fake-1"]
ANSWERED_BY = "gpt-4o-mini-2024-07-18"


def per_mtok(tokens: int, price: float) -> float:
    return tokens * price / 1_000_000


def gpt_4o_mini_cost(prompt: int, completion: int, cached: int) -> float:
    return (
        per_mtok(prompt - cached, GPT_4O_MINI["input"])
        + per_mtok(cached, GPT_4O_MINI["cache_read"])
        + per_mtok(completion, GPT_4O_MINI["output"])
    )


@dataclass
class OpenAIMock:
    """Answers chat.completions with the usage in ``usage`` (changed by tests)."""

    usage: dict[str, int] = field(
        default_factory=lambda: {"prompt": 2_000, "completion": 100, "cached": 1_536}
    )
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        u = self.usage
        return httpx2.Response(
            200,
            json={
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": 1741570283,
                "model": ANSWERED_BY,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": f"answer {len(self.requests)}",
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": u["prompt"],
                    "completion_tokens": u["completion"],
                    "total_tokens": u["prompt"] + u["completion"],
                    "prompt_tokens_details": {"cached_tokens": u["cached"], "audio_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
                },
                "service_tier": "default",
                "system_fingerprint": "fp_test",
            },
        )


def build_app() -> Conveyor:
    app = Conveyor("usage-tests")

    @app.task(retries=2, backoff=0.01)
    async def chat(
        ctx: Context,
        prompts: list[str],
        provider: str | None = None,
        model: str | None = None,
        system: str | None = None,
        max_tokens: int = 64,
    ) -> list[dict[str, Any]]:
        answers = []
        for prompt in prompts:
            completion = await ctx.llm.complete(
                prompt, provider=provider, model=model, system=system, max_tokens=max_tokens
            )
            answers.append(
                {
                    "text": completion.text,
                    "provider": completion.provider,
                    "model": completion.model,
                    "input_tokens": completion.usage.input_tokens,
                    "output_tokens": completion.usage.output_tokens,
                    "cached_tokens": completion.usage.cached_tokens,
                    "cost_usd": completion.cost_usd,
                }
            )
        return answers

    @app.task(retries=1, backoff=0.01)
    async def chat_then_crash(ctx: Context) -> float | None:
        """One call per attempt; the first attempt crashes after its call."""
        completion = await ctx.llm.complete(f"Attempt {ctx.attempt} speaking.")
        if ctx.attempt == 1:
            raise RuntimeError("crash after the call")
        return completion.cost_usd

    app.add_workflow(
        Workflow(
            "llm-flow",
            [
                Step(
                    "draft",
                    "chat",
                    input={
                        "prompts": ["Alpha beta gamma. Delta.", "One two.\nThree four five."],
                        "system": "Be brief please.",
                    },
                ),
                Step(
                    "polish",
                    "chat",
                    ["draft"],
                    input={"prompts": ["Polish it."], "provider": "openai"},
                ),
            ],
        )
    )
    return app


@dataclass
class Env:
    engine: Engine
    openai: OpenAIMock

    async def run(
        self, steps: list[Step] | None = None, *, workflow: str | None = None, **kw: Any
    ) -> Execution:
        owner = kw.pop("owner", ALICE)
        spec = ExecutionSpec(workflow=workflow, steps=steps, **kw)
        started = (await self.engine.start_execution(spec, owner=owner)).execution

        async def done() -> Execution | None:
            ex = await self.engine.get_execution(started.id)
            return ex if ex.status in ("completed", "failed", "cancelled") else None

        finished: Execution = await wait_until(done, 20.0)
        return finished

    async def usage_rows(self, execution_id: str) -> list[dict[str, Any]]:
        rows = await self.engine.db.read(
            lambda c: c.execute(
                select(usage)
                .where(usage.c.execution_id == execution_id)
                .order_by(usage.c.created_at, usage.c.id)
            ).all()
        )
        return [dict(r._mapping) for r in rows]

    async def steps(self, execution_id: str) -> dict[str, Any]:
        return {s.step_id: s for s in await self.engine.execution_steps(execution_id)}


@pytest.fixture
async def env(db_url: str) -> AsyncIterator[Env]:
    app = build_app()
    settings = Settings(
        database_url=db_url,
        sweep_interval_s=0.2,
        poll_max_s=0.2,
        cancel_grace_s=0.5,
        llm_provider="fake",
    )
    mock = OpenAIMock()
    providers: dict[str, Provider] = {
        "fake": FakeProvider(),
        "openai": OpenAIProvider(
            api_key="sk-test",
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(mock)),
        ),
    }
    runtime = Runtime(app, settings)
    engine = await runtime.open(upgrade=False)
    worker = Worker(
        engine,
        app.tasks,
        WorkerSettings(concurrency=4, poll_max_s=0.2, sweep_interval_s=0.2, cancel_grace_s=0.5),
        services=LLMService(settings, providers),
    )
    await worker.start()
    try:
        yield Env(engine, mock)
    finally:
        await worker.stop()
        await runtime.close()


def fake_usage(system: str | None, prompt: str, max_tokens: int = 64) -> tuple[int, int]:
    """What the fake provider counts: words in, words of each paragraph's first sentence out."""
    words_in = len(prompt.split()) + (len(system.split()) if system else 0)
    firsts = []
    for paragraph in (p.strip() for p in prompt.split("\n") if p.strip()):
        end = min((paragraph.find(c) for c in ".!?" if c in paragraph), default=-1)
        firsts.append(paragraph if end < 0 else paragraph[: end + 1])
    return words_in, min(len(" ".join(firsts).split()), max_tokens)


# -- usage rows -------------------------------------------------------------------------------


async def test_each_call_records_one_usage_row_and_the_execution_cost_is_their_sum(
    env: Env,
) -> None:
    execution = await env.run(workflow="llm-flow")
    assert execution.status == "completed", execution.error
    steps = await env.steps(execution.id)
    rows = await env.usage_rows(execution.id)
    assert len(rows) == 3

    draft_rows = [r for r in rows if r["step_id"] == "draft"]
    (polish_row,) = [r for r in rows if r["step_id"] == "polish"]
    assert len(draft_rows) == 2

    # the fake provider: tokens counted independently, priced at the built-in fake-1 rate
    prompts = ["Alpha beta gamma. Delta.", "One two.\nThree four five."]
    for row, prompt in zip(draft_rows, prompts, strict=True):
        words_in, words_out = fake_usage("Be brief please.", prompt)
        assert (row["provider"], row["model"]) == ("fake", "fake-1")
        assert (row["input_tokens"], row["output_tokens"], row["cached_tokens"]) == (
            words_in,
            words_out,
            0,
        )
        expected = per_mtok(words_in, FAKE["input_per_mtok"]) + per_mtok(
            words_out, FAKE["output_per_mtok"]
        )
        assert row["cost_usd"] == pytest.approx(expected, abs=1e-12)
        assert row["price_source"] == "override"
    assert [a["text"] for a in steps["draft"].result] == [
        "Alpha beta gamma.",
        "One two. Three four five.",
    ]

    # OpenAI through the SDK: the model that answered, usage incl. cached tokens, priced by
    # genai-prices at the published gpt-4o-mini rates
    assert (polish_row["provider"], polish_row["model"]) == ("openai", ANSWERED_BY)
    assert (
        polish_row["input_tokens"],
        polish_row["output_tokens"],
        polish_row["cached_tokens"],
    ) == (2_000, 100, 1_536)
    assert polish_row["cost_usd"] == pytest.approx(gpt_4o_mini_cost(2_000, 100, 1_536), rel=1e-9)
    assert polish_row["price_source"] == "genai-prices"
    (sent,) = env.openai.requests
    assert sent["model"] == "gpt-4o-mini"  # the provider's default model
    assert sent["messages"] == [{"role": "user", "content": "Polish it."}]
    assert sent["max_tokens"] == 64

    # where each call happened
    for row in rows:
        step = steps[row["step_id"]]
        assert row["owner"] == ALICE
        assert row["execution_id"] == execution.id
        assert row["job_id"] == step.job_id
        assert row["workflow"] == "llm-flow"
        assert row["attempt"] == 1
        assert isinstance(row["latency_ms"], float) and row["latency_ms"] >= 0
    # what the step got back is what was recorded
    answers = [*steps["draft"].result, *steps["polish"].result]
    for row, answer in zip(rows, answers, strict=True):
        assert answer["cost_usd"] == pytest.approx(row["cost_usd"], abs=1e-12)
        assert answer["input_tokens"] == row["input_tokens"]
        assert answer["cached_tokens"] == row["cached_tokens"]

    # one usage.recorded event per call, in the execution's events
    recorded = [
        e for e in await env.engine.execution_events(execution.id) if e.type == "usage.recorded"
    ]
    assert len(recorded) == 3
    assert [(e.step_id, e.data["model"], e.data["input_tokens"]) for e in recorded] == [
        (r["step_id"], r["model"], r["input_tokens"]) for r in rows
    ]
    assert all(e.owner == ALICE for e in recorded)
    assert [e.data["cost_usd"] for e in recorded] == pytest.approx([r["cost_usd"] for r in rows])

    total = sum(r["cost_usd"] for r in rows)
    assert execution.cost_usd == pytest.approx(total, abs=1e-8)
    assert (await env.engine.get_execution(execution.id, owner=ALICE)).cost_usd == pytest.approx(
        total, abs=1e-8
    )

    costs = await env.engine.execution_costs(execution.id, owner=ALICE)
    assert costs["execution_id"] == execution.id
    assert costs["calls"] == 3
    assert costs["cost_usd"] == pytest.approx(total, abs=1e-8)
    assert costs["input_tokens"] == sum(r["input_tokens"] for r in rows)
    assert costs["cached_tokens"] == 1_536
    by_step = {(s["step_id"], s["provider"], s["model"]): s for s in costs["steps"]}
    assert set(by_step) == {("draft", "fake", "fake-1"), ("polish", "openai", ANSWERED_BY)}
    draft = by_step[("draft", "fake", "fake-1")]
    assert draft["calls"] == 2
    assert draft["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in draft_rows), abs=1e-8)
    assert draft["output_tokens"] == sum(r["output_tokens"] for r in draft_rows)
    assert by_step[("polish", "openai", ANSWERED_BY)]["calls"] == 1
    with pytest.raises(NotFoundError):
        await env.engine.execution_costs(execution.id, owner=BOB)


async def test_every_attempt_s_calls_are_recorded_and_paid_for(env: Env) -> None:
    execution = await env.run([Step("flaky", "chat_then_crash")])
    assert execution.status == "completed", execution.error
    rows = await env.usage_rows(execution.id)
    assert [r["attempt"] for r in rows] == [1, 2]
    assert len({r["job_id"] for r in rows}) == 1
    assert all(r["step_id"] == "flaky" for r in rows)
    assert execution.cost_usd == pytest.approx(sum(r["cost_usd"] for r in rows), abs=1e-8)
    costs = await env.engine.execution_costs(execution.id)
    (step,) = costs["steps"]
    assert step["calls"] == 2 and costs["calls"] == 2


async def test_a_model_without_a_price_is_recorded_with_an_unknown_cost(env: Env) -> None:
    execution = await env.run(
        [
            Step("known", "chat", input={"prompts": ["Priced words here."]}),
            Step("unknown", "chat", input={"prompts": ["Not priced."], "model": "mystery-9"}),
        ]
    )
    assert execution.status == "completed", execution.error
    rows = {r["step_id"]: r for r in await env.usage_rows(execution.id)}
    assert rows["unknown"]["model"] == "mystery-9"
    assert rows["unknown"]["cost_usd"] is None and rows["unknown"]["price_source"] is None
    assert (rows["unknown"]["input_tokens"], rows["unknown"]["output_tokens"]) == (2, 2)
    assert rows["unknown"]["workflow"] is None  # an ad-hoc execution
    assert execution.cost_usd == pytest.approx(rows["known"]["cost_usd"], abs=1e-12)
    only_unknown = await env.run(
        [Step("u", "chat", input={"prompts": ["x"], "model": "mystery-9"})]
    )
    assert only_unknown.status == "completed"
    assert only_unknown.cost_usd is None  # nothing priced: unknown, not zero


# -- budgets ----------------------------------------------------------------------------------


async def test_a_call_estimated_above_the_budget_fails_the_execution(env: Env) -> None:
    # estimate: ~2 prompt tokens at $0.15/MTok + 1000 output tokens at $0.60/MTok ~ $0.0006
    step = Step(
        "ask", "chat", input={"prompts": ["Hi there"], "provider": "openai", "max_tokens": 1000}
    )
    execution = await env.run([step], budget_usd=0.0005)
    assert execution.status == "failed"
    assert execution.error is not None
    assert execution.error["reason"] == "budget_exceeded", execution.error
    assert execution.budget_usd == 0.0005
    ask = (await env.steps(execution.id))["ask"]
    assert ask.status == "failed"
    assert ask.error is not None and ask.error["type"] == "BudgetExceededError", ask.error
    assert ask.attempts == 1 and ask.max_attempts == 3  # not retried
    assert env.openai.requests == []  # refused before any request
    assert await env.usage_rows(execution.id) == []
    assert execution.cost_usd is None

    # the same call within a budget that covers the estimate goes through
    allowed = await env.run([step], budget_usd=0.001)
    assert allowed.status == "completed", allowed.error
    assert len(env.openai.requests) == 1


async def test_a_spent_budget_refuses_the_next_call(env: Env) -> None:
    # the call is estimated cheap, but the model reports a big prompt: $0.0156 > $0.01
    env.openai.usage = {"prompt": 100_000, "completion": 1_000, "cached": 0}
    spent = gpt_4o_mini_cost(100_000, 1_000, 0)
    assert spent > 0.01
    execution = await env.run(
        [
            Step("spend", "chat", input={"prompts": ["Read it all."], "provider": "openai"}),
            Step("more", "chat", ["spend"], input={"prompts": ["More."], "provider": "openai"}),
        ],
        budget_usd=0.01,
    )
    assert execution.status == "failed"
    assert execution.error is not None and execution.error["reason"] == "budget_exceeded"
    steps = await env.steps(execution.id)
    assert steps["spend"].status == "completed"
    assert steps["more"].status == "failed" and steps["more"].attempts == 1
    assert steps["more"].error is not None
    assert steps["more"].error["type"] == "BudgetExceededError"
    assert len(env.openai.requests) == 1
    rows = await env.usage_rows(execution.id)
    assert [r["step_id"] for r in rows] == ["spend"]
    # what was spent is recorded and shown, even past the budget
    assert execution.cost_usd == pytest.approx(spent, abs=1e-8)


async def test_the_budget_is_checked_before_each_call_of_a_step(env: Env) -> None:
    env.openai.usage = {"prompt": 100_000, "completion": 1_000, "cached": 0}
    execution = await env.run(
        [Step("both", "chat", input={"prompts": ["First.", "Second."], "provider": "openai"})],
        budget_usd=0.01,
    )
    assert execution.status == "failed"
    assert execution.error is not None and execution.error["reason"] == "budget_exceeded"
    both = (await env.steps(execution.id))["both"]
    assert both.attempts == 1 and both.error is not None
    assert both.error["type"] == "BudgetExceededError"
    assert len(env.openai.requests) == 1
    assert len(await env.usage_rows(execution.id)) == 1


async def test_a_step_failing_for_another_reason_is_not_a_budget_failure(env: Env) -> None:
    execution = await env.run(
        [Step("bad", "chat", input={"prompts": ["x"], "provider": "nope"})], budget_usd=1.0
    )
    assert execution.status == "failed"
    assert execution.error is not None and execution.error["reason"] == "step_failed"


# -- telemetry over seeded rows -------------------------------------------------------------------

MODELS = [
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-haiku-4-5"),
    ("fake", "fake-1"),
    ("fake", "mystery"),  # never priced
]
WORKFLOWS = ["wf-a", "wf-b", None]


def seed_usage(start: datetime, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` usage rows over 10 days from ``start``, for alice and bob."""
    rng = random.Random(seed)
    execution_ids = [new_id() for _ in range(8)]
    rows = []
    for i in range(count):
        provider, model = rng.choice(MODELS)
        input_tokens = rng.randint(0, 50_000)
        cached = rng.randint(0, input_tokens)
        output_tokens = rng.randint(0, 5_000)
        created = start + timedelta(days=rng.randint(0, 9), seconds=rng.randint(0, 86_399))
        if i == 0:
            created = start  # exactly midnight, UTC
        rows.append(
            {
                "id": new_id(),
                "owner": ALICE if rng.random() < 0.75 else BOB,
                "provider": provider,
                "model": model,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cached_tokens": cached,
                "cost_usd": None if model == "mystery" else rng.randint(1, 500_000) / 1e7,
                "price_source": None if model == "mystery" else "genai-prices",
                "latency_ms": rng.randint(50_000, 3_000_000) / 1000,
                "job_id": None,
                "execution_id": rng.choice([*execution_ids, None]),
                "step_id": rng.choice(["s1", "s2"]),
                "workflow": rng.choice(WORKFLOWS),
                "attempt": 1,
                "created_at": created,
            }
        )
    return rows


async def insert(engine: Engine, table: Any, rows: list[dict[str, Any]]) -> None:
    def body(tx: Tx) -> None:
        tx.conn.execute(table.insert(), rows)

    await engine.db.write(body)


def expected_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    costs = [r["cost_usd"] for r in rows if r["cost_usd"] is not None]
    return {
        "calls": len(rows),
        "input_tokens": sum(r["input_tokens"] for r in rows),
        "output_tokens": sum(r["output_tokens"] for r in rows),
        "cached_tokens": sum(r["cached_tokens"] for r in rows),
        "cost_usd": sum(costs) if costs else None,
        "avg_latency_ms": sum(r["latency_ms"] for r in rows) / len(rows) if rows else None,
        "executions": len({r["execution_id"] for r in rows if r["execution_id"] is not None}),
    }


def assert_totals(actual: dict[str, Any], rows: list[dict[str, Any]], where: str) -> None:
    expected = expected_totals(rows)
    for key in ("calls", "input_tokens", "output_tokens", "cached_tokens", "executions"):
        assert actual[key] == expected[key], (where, key, actual, expected)
    for key, tolerance in (("cost_usd", 1e-7), ("avg_latency_ms", 1e-3)):
        if expected[key] is None:
            assert actual[key] is None, (where, key, actual)
        else:
            assert actual[key] == pytest.approx(expected[key], abs=tolerance), (where, key)


def group(rows: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict[Any, Any]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


def check_summary(
    summary: dict[str, Any],
    rows: list[dict[str, Any]],
    start: datetime | None,
    end: datetime | None,
) -> None:
    where = f"[{start}, {end})"
    assert summary["from"] == (None if start is None else start.isoformat())
    assert summary["to"] == (None if end is None else end.isoformat())
    assert_totals(summary, rows, where)
    expected = expected_totals(rows)
    cost, calls, runs = expected["cost_usd"], expected["calls"], expected["executions"]
    if cost is None or not calls:
        assert summary["avg_cost_per_call_usd"] is None
    else:
        assert summary["avg_cost_per_call_usd"] == pytest.approx(cost / calls, abs=1e-7)
    if cost is None or not runs:
        assert summary["avg_cost_per_execution_usd"] is None
    else:
        assert summary["avg_cost_per_execution_usd"] == pytest.approx(cost / runs, abs=1e-7)

    by_workflow = {w["workflow"]: w for w in summary["by_workflow"]}
    expected_workflows = group(rows, lambda r: r["workflow"])
    assert set(by_workflow) == set(expected_workflows), where
    for name, members in expected_workflows.items():
        assert_totals(by_workflow[name], members, f"{where} workflow {name}")

    by_model = {(m["provider"], m["model"]): m for m in summary["by_model"]}
    expected_models = group(rows, lambda r: (r["provider"], r["model"]))
    assert set(by_model) == set(expected_models), where
    for model, members in expected_models.items():
        assert_totals(by_model[model], members, f"{where} model {model}")

    expected_days = group(rows, lambda r: r["created_at"].astimezone(UTC).date().isoformat())
    days = [d["day"] for d in summary["by_day"]]
    assert days == sorted(expected_days), where
    for day in summary["by_day"]:
        members = expected_days[day["day"]]
        costs = [r["cost_usd"] for r in members if r["cost_usd"] is not None]
        assert day["calls"] == len(members)
        assert day["input_tokens"] == sum(r["input_tokens"] for r in members)
        assert day["output_tokens"] == sum(r["output_tokens"] for r in members)
        if costs:
            assert day["cost_usd"] == pytest.approx(sum(costs), abs=1e-7), (where, day)
        else:
            assert day["cost_usd"] is None


def midnight(days_ago: int) -> datetime:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days_ago)


async def test_telemetry_summary_equals_the_sums_of_the_usage_rows(env: Env) -> None:
    start = midnight(12)
    rows = seed_usage(start, 120, seed=11)
    await insert(env.engine, usage, rows)
    ordered = sorted(rows, key=lambda r: r["created_at"])
    windows: list[tuple[datetime | None, datetime | None]] = [
        (None, None),
        (start, start + timedelta(days=10)),
        (start + timedelta(days=2), start + timedelta(days=5)),
        (start + timedelta(days=3), start + timedelta(days=4)),  # one UTC day
        (None, start + timedelta(days=4, hours=12)),
        (start + timedelta(days=6, hours=6), None),
        # bounds on rows' own timestamps: from is inclusive, to exclusive
        (ordered[10]["created_at"], ordered[60]["created_at"]),
        (ordered[0]["created_at"], ordered[0]["created_at"]),  # empty
        (start + timedelta(days=30), start + timedelta(days=40)),  # after everything
        # the same instants in another time zone
        (
            (start + timedelta(days=2)).astimezone(timezone(timedelta(hours=5, minutes=30))),
            (start + timedelta(days=5)).astimezone(UTC),
        ),
    ]
    for window_start, window_end in windows:
        for owner in (None, ALICE, BOB, "nobody"):
            selected = [
                r
                for r in rows
                if (owner is None or r["owner"] == owner)
                and (window_start is None or r["created_at"] >= window_start)
                and (window_end is None or r["created_at"] < window_end)
            ]
            summary = await env.engine.telemetry_summary(
                owner=owner, start=window_start, end=window_end
            )
            check_summary(summary, selected, window_start, window_end)
    # the seeded set is not trivial: every window above is checked against real data
    assert len({r["created_at"].date() for r in rows}) == 10
    assert {r["owner"] for r in rows} == {ALICE, BOB}
    assert any(r["cost_usd"] is None for r in rows)


async def test_telemetry_windows_must_be_aware_and_ordered(env: Env) -> None:
    with pytest.raises(InvalidInputError):
        await env.engine.telemetry_summary(start=datetime(2024, 1, 1))
    with pytest.raises(InvalidInputError):
        await env.engine.telemetry_summary(
            start=datetime(2024, 1, 2, tzinfo=UTC), end=datetime(2024, 1, 1, tzinfo=UTC)
        )
    empty = await env.engine.telemetry_summary()
    assert empty["calls"] == 0 and empty["cost_usd"] is None
    assert empty["by_workflow"] == empty["by_model"] == empty["by_day"] == []


async def test_record_usage_fills_the_workflow_and_emits_an_event(env: Env) -> None:
    execution = await env.run(workflow="llm-flow")
    usage_id = await env.engine.record_usage(
        UsageRecord(
            owner=ALICE,
            provider="openai",
            model="gpt-4o-mini",
            input_tokens=10,
            output_tokens=5,
            cached_tokens=2,
            cost_usd=0.25,
            price_source="override",
            latency_ms=12.5,
            execution_id=execution.id,
            step_id="extra",
        )
    )
    rows = {r["id"]: r for r in await env.usage_rows(execution.id)}
    assert rows[usage_id]["workflow"] == "llm-flow"
    assert rows[usage_id]["job_id"] is None
    events = [
        e
        for e in await env.engine.execution_events(execution.id)
        if e.type == "usage.recorded" and e.step_id == "extra"
    ]
    assert len(events) == 1 and events[0].data["cost_usd"] == 0.25
    after = await env.engine.get_execution(execution.id)
    assert after.cost_usd == pytest.approx((execution.cost_usd or 0) + 0.25, abs=1e-8)


def percentile(values: list[float], pct: float) -> float:
    """Linear interpolation between the closest ranks (rank = (n - 1) * pct / 100)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def seed_executions(
    rng: random.Random, workflow: str, owner: str, statuses: dict[str, int], base: datetime
) -> list[dict[str, Any]]:
    rows = []
    for status, count in statuses.items():
        for _ in range(count):
            created = base + timedelta(seconds=rng.randint(0, 5 * 86_400))
            started = None if status == "queued" else created + timedelta(seconds=rng.randint(0, 9))
            finished = None
            if status in ("completed", "failed", "cancelled"):
                assert started is not None
                finished = started + timedelta(milliseconds=rng.randint(200, 600_000))
            rows.append(
                {
                    "id": new_id(),
                    "workflow": workflow,
                    "workflow_version": "1",
                    "status": status,
                    "mode": "auto",
                    "failure_policy": "fail_fast",
                    "priority": 2,
                    "steps": [],
                    "owner": owner,
                    "created_at": created,
                    "started_at": started,
                    "finished_at": finished,
                }
            )
    return rows


def expected_stats(executions_: list[dict[str, Any]], usage_: list[dict[str, Any]]) -> Any:
    by_status: dict[str, int] = {}
    for row in executions_:
        by_status[row["status"]] = by_status.get(row["status"], 0) + 1
    durations = [
        (r["finished_at"] - r["started_at"]).total_seconds()
        for r in executions_
        if r["status"] == "completed"
    ]
    finished = by_status.get("completed", 0) + by_status.get("failed", 0)
    costs = [r["cost_usd"] for r in usage_ if r["cost_usd"] is not None]
    return by_status, durations, finished, (sum(costs) if costs else None), len(usage_)


async def test_workflow_stats_from_seeded_executions(env: Env) -> None:
    rng = random.Random(5)
    base = midnight(20)
    alice_runs = seed_executions(
        rng,
        "stats-wf",
        ALICE,
        {"completed": 17, "failed": 4, "cancelled": 2, "running": 2, "queued": 1},
        base,
    )
    bob_runs = seed_executions(rng, "stats-wf", BOB, {"completed": 5, "failed": 1}, base)
    solo = seed_executions(rng, "solo-wf", ALICE, {"completed": 1}, base)
    await insert(env.engine, executions, [*alice_runs, *bob_runs, *solo])
    spend = [
        {
            **row,
            "workflow": "stats-wf",
            "execution_id": rng.choice(alice_runs if row["owner"] == ALICE else bob_runs)["id"],
        }
        for row in seed_usage(base, 40, seed=3)
    ]
    await insert(env.engine, usage, spend)

    for owner, runs in ((ALICE, alice_runs), (BOB, bob_runs), (None, [*alice_runs, *bob_runs])):
        owned_usage = [r for r in spend if owner is None or r["owner"] == owner]
        by_status, durations, finished, cost, calls = expected_stats(runs, owned_usage)
        stats = await env.engine.workflow_stats("stats-wf", owner=owner)
        where = f"owner={owner}"
        assert stats["workflow"] == "stats-wf"
        assert stats["runs"] == len(runs), where
        assert stats["by_status"] == by_status, where
        assert stats["success_rate"] == pytest.approx(
            by_status["completed"] / finished, abs=1e-4
        ), where
        assert stats["duration_p50_s"] == pytest.approx(percentile(durations, 50), abs=1e-3), where
        assert stats["duration_p95_s"] == pytest.approx(percentile(durations, 95), abs=1e-3), where
        assert stats["calls"] == calls, where
        assert cost is not None
        assert stats["cost_usd"] == pytest.approx(cost, abs=1e-7), where
        assert stats["avg_cost_per_run_usd"] == pytest.approx(cost / len(runs), abs=1e-7), where

    # p95 is not just the maximum, p50 not just the mean, for this data
    alice_durations = expected_stats(alice_runs, [])[1]
    assert percentile(alice_durations, 95) < max(alice_durations)

    single = await env.engine.workflow_stats("solo-wf", owner=ALICE)
    (only,) = solo
    duration = (only["finished_at"] - only["started_at"]).total_seconds()
    assert single["runs"] == 1 and single["success_rate"] == 1.0
    assert single["duration_p50_s"] == pytest.approx(duration, abs=1e-3)
    assert single["duration_p95_s"] == pytest.approx(duration, abs=1e-3)
    assert single["cost_usd"] is None and single["calls"] == 0
    assert single["avg_cost_per_run_usd"] is None

    assert (await env.engine.workflow_stats("solo-wf", owner=BOB))["runs"] == 0
    nothing = await env.engine.workflow_stats("no-such-workflow")
    assert nothing["runs"] == 0 and nothing["by_status"] == {}
    assert nothing["success_rate"] is None
    assert nothing["duration_p50_s"] is None and nothing["duration_p95_s"] is None
    assert nothing["cost_usd"] is None and nothing["calls"] == 0
