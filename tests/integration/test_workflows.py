"""Workflow executions on SQLite and PostgreSQL, run by a real in-process worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from conveyor import Context, Conveyor
from conveyor.domain.graph import Step
from conveyor.domain.questions import Question
from conveyor.engine.core import Engine
from conveyor.engine.models import Execution, ExecutionSpec
from conveyor.errors import (
    AnswerValidationError,
    ConflictError,
    DependenciesNotMetError,
    GoneError,
    InvalidInputError,
    NonRetryableError,
    NotFoundError,
    UnknownTaskError,
    WorkflowDefinitionError,
)
from conveyor.runtime import Runtime
from conveyor.settings import Settings
from conveyor.workflows import Workflow
from tests.conftest import wait_until


@dataclass
class Record:
    """What the tasks of the test app did (the tests' ledger)."""

    started: list[str] = field(default_factory=list)
    runs: dict[str, int] = field(default_factory=dict)
    active: int = 0
    max_active: int = 0
    fail: set[str] = field(default_factory=set)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    expensive_calls: int = 0


def build_app(record: Record) -> Conveyor:
    app = Conveyor("wf-tests")

    @app.task(retries=0)
    async def step(ctx: Context, pause: float = 0.0) -> dict[str, Any]:
        name = ctx.step_id or ctx.job_id
        record.started.append(name)
        record.runs[name] = record.runs.get(name, 0) + 1
        record.active += 1
        record.max_active = max(record.max_active, record.active)
        try:
            if pause:
                await asyncio.sleep(pause)
            if name in record.fail:
                raise NonRetryableError(f"{name} was told to fail")
            return {"step": name, "saw": sorted(ctx.dependencies)}
        finally:
            record.active -= 1

    @app.task(retries=0)
    async def blocked(ctx: Context) -> str:
        record.started.append(ctx.step_id or "")
        await record.gate.wait()
        return "released"

    @app.task
    async def double(ctx: Context, value: int) -> int:
        return value * 2

    @app.task
    async def add_upstream(ctx: Context, left: int, right: int) -> int:
        # parameters named after dependency steps receive their outputs
        return left + right

    @app.task(retries=0)
    async def ask_topic(ctx: Context, question: str) -> str:
        answers = await ctx.ask(
            [
                Question("topic", "Which topic?", {"type": "string", "minLength": 3}),
                Question("depth", "How deep?", {"type": "integer", "minimum": 1}, default=2),
            ]
        )
        return f"{question}: {answers['topic']} x{answers['depth']}"

    @app.task(retries=0)
    async def ask_with_timeout(ctx: Context, on_timeout: str = "default") -> Any:
        answers = await ctx.ask(
            [Question("ok", "Proceed?", {"type": "boolean"}, default=False)],
            timeout_s=0.3,
            on_timeout=on_timeout,
        )
        return answers

    @app.task(retries=1, backoff=0.01)
    async def memoised(ctx: Context) -> int:
        async def expensive() -> int:
            record.expensive_calls += 1
            return 41

        value: int = await ctx.memo("llm-call", expensive)
        if ctx.attempt == 1:
            raise RuntimeError("crash after the expensive part")
        return value + 1

    app.add_workflow(
        Workflow(
            "diamond",
            [
                Step("a", "step"),
                Step("b", "step", ["a"]),
                Step("c", "step", ["a"]),
                Step("d", "step", ["b", "c"]),
            ],
        )
    )
    app.add_workflow(
        Workflow(
            "branches",
            [
                Step("a", "step"),
                Step("a2", "step", ["a"]),
                Step("b", "step"),
                Step("b2", "step", ["b"]),
            ],
            failure_policy="continue",
        )
    )
    app.add_workflow(
        Workflow(
            "math",
            [
                Step("left", "double", input={"value": 2}),
                Step("right", "double", input={"value": 5}),
                Step("sum", "add_upstream", ["left", "right"]),
            ],
        )
    )
    app.add_workflow(
        Workflow("research", [Step("refine", "ask_topic"), Step("use", "step", ["refine"])])
    )
    return app


@dataclass
class Env:
    engine: Engine
    record: Record
    app: Conveyor

    async def start(self, workflow: str | None = None, **kw: Any) -> Execution:
        spec = ExecutionSpec(workflow=workflow, **kw)
        return (await self.engine.start_execution(spec, owner=kw.pop("owner", "alice"))).execution

    async def finished(self, execution_id: str, timeout: float = 15.0) -> Execution:
        async def done() -> Execution | None:
            ex = await self.engine.get_execution(execution_id)
            return ex if ex.status in ("completed", "failed", "cancelled") else None

        result: Execution = await wait_until(done, timeout)
        return result

    async def status(self, execution_id: str, wanted: str, timeout: float = 10.0) -> Execution:
        async def reached() -> Execution | None:
            ex = await self.engine.get_execution(execution_id)
            return ex if ex.status == wanted else None

        result: Execution = await wait_until(reached, timeout)
        return result

    async def steps(self, execution_id: str) -> dict[str, str]:
        return {s.step_id: s.status for s in await self.engine.execution_steps(execution_id)}


@pytest.fixture
async def env(db_url: str) -> AsyncIterator[Env]:
    record = Record()
    app = build_app(record)
    settings = Settings(
        database_url=db_url, sweep_interval_s=0.2, poll_max_s=0.2, cancel_grace_s=0.5
    )
    runtime = Runtime(app, settings)
    engine = await runtime.open(upgrade=False)
    worker = runtime.worker(concurrency=8)
    await worker.start()
    try:
        yield Env(engine, record, app)
    finally:
        record.gate.set()
        await worker.stop()
        await runtime.close()


async def test_steps_run_in_dependency_order_and_see_their_inputs(env: Env) -> None:
    ex = await env.start("diamond")
    assert ex.status in ("queued", "running") and ex.progress.total == 4
    final = await env.finished(ex.id)
    assert final.status == "completed"
    order = env.record.started
    assert order[0] == "a" and order[-1] == "d" and set(order[1:3]) == {"b", "c"}
    assert final.output == {"d": {"step": "d", "saw": ["b", "c"]}}
    assert final.progress.percent == 100.0 and final.progress.completed == 4
    assert final.started_at is not None and final.finished_at is not None
    steps = await env.engine.execution_steps(ex.id)
    assert [s.step_id for s in steps] == ["a", "b", "c", "d"]
    assert steps[1].result == {"step": "b", "saw": ["a"]}


async def test_outputs_are_passed_to_parameters_named_after_dependencies(env: Env) -> None:
    final = await env.finished((await env.start("math")).id)
    assert final.output == {"sum": 14}


async def test_execution_input_reaches_every_step(env: Env) -> None:
    steps = [Step("first", "double"), Step("second", "double", ["first"])]
    final = await env.finished((await env.start(steps=steps, input={"value": 21})).id)
    assert final.status == "completed"
    assert final.output == {"second": 42}


async def test_input_the_steps_cannot_take_is_refused_at_start(env: Env) -> None:
    steps = [Step("left", "double"), Step("sum", "add_upstream", ["left"])]
    for bad in ({}, {"value": "21"}, {"value": 1.5}):
        with pytest.raises(InvalidInputError) as refused:
            await env.start(steps=steps, input=bad)
        assert "'left'" in refused.value.message, refused.value.message
        assert [d["loc"] for d in refused.value.details] == [["value"]]
    # parameters named after dependencies are filled when the step runs: not the
    # caller's to give ("left"); "right" is no dependency of "sum", so it is missing
    with pytest.raises(InvalidInputError) as refused:
        await env.start(steps=steps, input={"value": 2})
    assert "'sum'" in refused.value.message
    assert [d["loc"] for d in refused.value.details] == [["right"]]
    assert (await env.engine.list_executions(owner="alice")).items == []
    # a manual run gives each step its input when it runs: nothing to check at start
    manual = await env.start(steps=steps, input={}, mode="manual")
    assert manual.status == "queued"


async def test_parallelism_limit_is_never_exceeded(env: Env) -> None:
    steps = [Step(f"s{i}", "step", input={"pause": 0.05}) for i in range(12)]
    final = await env.finished((await env.start(steps=steps, parallelism=3)).id)
    assert final.status == "completed"
    assert env.record.max_active == 3


async def test_fail_fast_cancels_the_rest(env: Env) -> None:
    env.record.fail.add("b")
    steps = [
        Step("a", "step"),
        Step("b", "step", ["a"]),
        Step("slow", "blocked", ["a"]),
        Step("after", "step", ["b", "slow"]),
    ]
    ex = await env.start(steps=steps)
    final = await env.status(ex.id, "failed")
    assert final.error is not None and "b" in final.error["message"]
    await wait_until(lambda: _terminal(env, ex.id))
    states = await env.steps(ex.id)
    assert states == {"a": "completed", "b": "failed", "slow": "cancelled", "after": "cancelled"}
    assert "after" not in env.record.started


async def _terminal(env: Env, execution_id: str) -> bool:
    states = await env.steps(execution_id)
    return all(s in ("completed", "failed", "cancelled") for s in states.values())


async def test_continue_policy_finishes_independent_branches(env: Env) -> None:
    env.record.fail.add("a")
    final = await env.finished((await env.start("branches")).id)
    assert final.status == "failed"
    assert await env.steps(final.id) == {
        "a": "failed",
        "a2": "cancelled",
        "b": "completed",
        "b2": "completed",
    }


async def test_cancel_mid_run_stops_waiting_and_active_steps(env: Env) -> None:
    steps = [Step("slow", "blocked"), Step("next", "step", ["slow"])]
    ex = await env.start(steps=steps)
    await wait_until(lambda: "slow" in env.record.started)
    cancelled = await env.engine.cancel_execution(ex.id, owner="alice")
    assert cancelled.status == "cancelled"
    await wait_until(lambda: _terminal(env, ex.id))
    assert await env.steps(ex.id) == {"slow": "cancelled", "next": "cancelled"}
    assert "next" not in env.record.started
    again = await env.engine.cancel_execution(ex.id)
    assert again.status == "cancelled"  # unchanged, no error
    types = [e.type for e in await env.engine.execution_events(ex.id)]
    assert "execution.cancelled" in types and "job.cancel_requested" in types


async def test_retry_reruns_only_the_steps_that_did_not_complete(env: Env) -> None:
    env.record.fail.add("c")
    ex = await env.start("diamond")
    failed = await env.finished(ex.id)
    assert failed.status == "failed"
    assert env.record.runs == {"a": 1, "b": 1, "c": 1}
    env.record.fail.clear()
    retried = await env.engine.retry_execution(ex.id, owner="alice")
    assert retried.status == "running"
    final = await env.finished(ex.id)
    assert final.status == "completed"
    assert env.record.runs == {"a": 1, "b": 1, "c": 2, "d": 1}
    with pytest.raises(ConflictError):
        await env.engine.retry_execution(ex.id)


async def test_manual_mode_runs_a_step_only_when_asked_and_its_deps_are_done(env: Env) -> None:
    ex = await env.start("diamond", mode="manual")
    await asyncio.sleep(0.3)
    assert env.record.started == []
    assert (await env.engine.get_execution(ex.id)).status == "queued"
    with pytest.raises(DependenciesNotMetError, match="a"):
        await env.engine.run_step(ex.id, "b")
    with pytest.raises(NotFoundError):
        await env.engine.run_step(ex.id, "nope")
    job = await env.engine.run_step(ex.id, "a", input={"pause": 0.01})
    assert job.step_id == "a" and job.status == "queued"
    await wait_until(lambda: _job_done(env, job.id))
    with pytest.raises(ConflictError):
        await env.engine.run_step(ex.id, "a")  # a completed step never runs twice
    for step_id in ("b", "c", "d"):
        step_job = await env.engine.run_step(ex.id, step_id)
        await wait_until(lambda j=step_job.id: _job_done(env, j))  # type: ignore[misc]
    final = await env.finished(ex.id)
    assert final.status == "completed"
    assert env.record.started == ["a", "b", "c", "d"]
    auto = await env.start("diamond")
    with pytest.raises(ConflictError, match="automatically"):
        await env.engine.run_step(auto.id, "a")


async def _job_done(env: Env, job_id: str) -> bool:
    return (await env.engine.get_job(job_id)).status == "completed"


async def test_clarification_round_trip_with_an_invalid_answer_first(env: Env) -> None:
    ex = await env.start("research", input={"question": "Why?"})
    waiting = await env.status(ex.id, "awaiting_input")
    assert waiting.progress.awaiting_input == 1
    pending = await env.engine.list_clarifications(owner="alice")
    assert [(c.execution_id, c.step_id) for c in pending] == [(ex.id, "refine")]
    assert [q["id"] for q in pending[0].questions] == ["topic", "depth"]
    assert await env.engine.list_clarifications(owner="bob") == []
    with pytest.raises(AnswerValidationError) as bad:
        await env.engine.answer(ex.id, "refine", {"topic": "ai", "depth": 0}, actor="alice")
    locs = sorted(tuple(d["loc"]) for d in bad.value.details)
    assert locs == [("depth",), ("topic",)]
    still = await env.engine.get_clarification(ex.id, "refine")
    assert still.status == "pending"
    assert (await env.engine.get_execution(ex.id)).status == "awaiting_input"
    with pytest.raises(NotFoundError):
        await env.engine.answer(ex.id, "refine", {"topic": "economics"}, owner="bob", actor="bob")
    answered = await env.engine.answer(ex.id, "refine", {"topic": "economics"}, actor="alice")
    assert answered.status == "answered" and answered.answers == {"topic": "economics", "depth": 2}
    final = await env.finished(ex.id)
    assert final.status == "completed"
    steps = await env.engine.execution_steps(ex.id)
    assert steps[0].result == "Why?: economics x2"
    assert steps[0].attempts == 1  # waiting for a human is not a failed attempt
    with pytest.raises(ConflictError):
        await env.engine.answer(ex.id, "refine", {"topic": "again"}, actor="alice")
    types = [e.type for e in await env.engine.execution_events(ex.id)]
    for expected in (
        "clarification.requested",
        "execution.awaiting_input",
        "clarification.answered",
        "execution.completed",
    ):
        assert expected in types


async def test_clarification_timeout_uses_defaults_or_fails(env: Env) -> None:
    steps = [Step("ask", "ask_with_timeout", input={"on_timeout": "default"})]
    with_default = await env.finished((await env.start(steps=steps)).id)
    assert with_default.status == "completed"
    assert with_default.output == {"ask": {"ok": False}}
    failing = [Step("ask", "ask_with_timeout", input={"on_timeout": "fail"})]
    ex = await env.start(steps=failing)
    final = await env.finished(ex.id)
    assert final.status == "failed"
    clarification = await env.engine.get_clarification(ex.id, "ask")
    assert clarification.status == "expired"
    with pytest.raises(GoneError):
        await env.engine.answer(ex.id, "ask", {"ok": True}, actor="alice")


async def test_memo_skips_finished_work_on_retry(env: Env) -> None:
    final = await env.finished((await env.start(steps=[Step("m", "memoised")])).id)
    assert final.status == "completed"
    assert final.output == {"m": 42}
    assert env.record.expensive_calls == 1


async def test_idempotent_start_and_ownership(env: Env) -> None:
    first = await env.engine.start_execution(
        ExecutionSpec("math", idempotency_key="run-math-1"), owner="alice"
    )
    again = await env.engine.start_execution(
        ExecutionSpec("math", idempotency_key="run-math-1"), owner="alice"
    )
    assert again.execution.id == first.execution.id and not again.created
    with pytest.raises(NotFoundError):
        await env.engine.get_execution(first.execution.id, owner="bob")
    with pytest.raises(NotFoundError):
        await env.engine.execution_steps(first.execution.id, owner="bob")
    with pytest.raises(NotFoundError):
        await env.engine.cancel_execution(first.execution.id, owner="bob")
    page = await env.engine.list_executions(owner="bob")
    assert page.items == []


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        (ExecutionSpec("no-such-workflow"), NotFoundError),
        (ExecutionSpec(steps=[Step("a", "no_such_task")]), UnknownTaskError),
        (ExecutionSpec(steps=[Step("a", "step", ["a"])]), InvalidInputError),
        (ExecutionSpec(steps=[Step("a", "step", ["b"])]), InvalidInputError),
        (ExecutionSpec(steps=[Step("a", "step"), Step("a", "step")]), InvalidInputError),
        (ExecutionSpec(steps=[]), InvalidInputError),
        (ExecutionSpec("math", mode="sometimes"), InvalidInputError),
        (ExecutionSpec("math", parallelism=0), InvalidInputError),
    ],
)
async def test_bad_execution_requests_are_refused(
    env: Env, spec: ExecutionSpec, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await env.engine.start_execution(spec, owner="alice")
    assert (await env.engine.list_executions()).items == []


def test_definitions_are_validated_at_registration() -> None:
    app = Conveyor()

    @app.task
    def t(ctx: Context) -> int:
        return 1

    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: app.add_workflow(Workflow("w", [Step("a", "nope")])), "unknown task 'nope'"),
        (lambda: app.add_workflow(Workflow("w", [Step("a", "t", ["x"])])), "unknown step 'x'"),
        (
            lambda: app.add_workflow(
                Workflow("w", [Step("a", "t", ["c"]), Step("b", "t", ["a"]), Step("c", "t", ["b"])])
            ),
            "cycle: a -> b -> c -> a",
        ),
        (lambda: app.add_workflow(Workflow("w", [Step("a", "t"), Step("a", "t")])), "duplicate"),
        (lambda: app.add_workflow(Workflow("w", [])), "at least one step"),
        (lambda: app.add_workflow(Workflow("w", [Step("a", "t")], failure_policy="x")), "policy"),
    ]
    for build, message in cases:
        with pytest.raises(WorkflowDefinitionError, match=message):
            build()
    app.add_workflow(Workflow("w", [Step("a", "t")]))
    with pytest.raises(WorkflowDefinitionError, match="twice"):
        app.add_workflow(Workflow("w", [Step("a", "t")]))
