"""Documents on SQLite and PostgreSQL: versions saved by steps (run by a real in-process
worker), history, optimistic edits (If-Match), concurrent writers and ownership.

Documents only come into being through ``ctx.save_document`` in a step, so every test
starts by running a small step; edits then go through ``Engine.put_document`` as the
API does.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from conveyor import Context, Conveyor
from conveyor.domain.graph import Step
from conveyor.domain.questions import Question
from conveyor.engine.core import Engine
from conveyor.engine.documents import Document
from conveyor.engine.models import Execution, ExecutionSpec, JobSpec
from conveyor.errors import InvalidInputError, NotFoundError, PreconditionFailedError
from conveyor.runtime import Runtime
from conveyor.settings import Settings
from conveyor.store.factory import open_database
from tests.conftest import wait_until

ALICE = "alice"
BOB = "bob"


@dataclass
class Ledger:
    """What the tasks saw: the flaky step's ``(attempt, [save results])`` per attempt, the
    racers' start line, and how many times the asking step ran."""

    saves: list[tuple[int, list[dict[str, Any]]]] = field(default_factory=list)
    racers: int = 6
    barrier: asyncio.Barrier | None = None
    asked_runs: int = 0

    def start_line(self) -> asyncio.Barrier:
        if self.barrier is None:
            self.barrier = asyncio.Barrier(self.racers)
        return self.barrier


def build_app(ledger: Ledger) -> Conveyor:
    app = Conveyor("document-tests")

    @app.task(retries=0)
    async def write(
        ctx: Context,
        kind: str,
        title: str,
        content: Any,
        scope_type: str | None = None,
        scope_id: str | None = None,
        times: int = 1,
    ) -> list[dict[str, Any]]:
        saved = []
        for i in range(times):
            body = content if times == 1 else {"n": i + 1, "content": content}
            saved.append(
                await ctx.save_document(kind, title, body, scope_type=scope_type, scope_id=scope_id)
            )
        return saved

    @app.task(retries=2, backoff=0.01)
    async def flaky_write(ctx: Context, scope_id: str) -> list[dict[str, Any]]:
        """Saves twice, then crashes on attempt 1; attempt 2 also saves a third time."""
        saved = [
            await ctx.save_document(
                "notes",
                f"part {part} (attempt {ctx.attempt})",
                {"part": part, "attempt": ctx.attempt},
                scope_type="topic",
                scope_id=scope_id,
            )
            for part in (1, 2)
        ]
        if ctx.attempt > 1:
            saved.append(
                await ctx.save_document(
                    "notes",
                    "part 3",
                    {"part": 3, "attempt": ctx.attempt},
                    scope_type="topic",
                    scope_id=scope_id,
                )
            )
        ledger.saves.append((ctx.attempt, saved))
        if ctx.attempt == 1:
            raise RuntimeError("crash after saving")
        return saved

    @app.task(retries=0)
    async def race_write(ctx: Context, kind: str) -> dict[str, Any]:
        """Waits for every racer, then saves to the execution's document of ``kind``."""
        async with asyncio.timeout(20):
            await ledger.start_line().wait()
        return await ctx.save_document(kind, f"by {ctx.step_id}", {"by": ctx.step_id})

    @app.task(retries=0)
    async def save_then_ask(ctx: Context) -> dict[str, Any]:
        """Saves a draft, then asks; the step runs again from the start once answered."""
        ledger.asked_runs += 1
        draft = await ctx.save_document("draft", "Draft", {"run": ledger.asked_runs})
        answers = await ctx.ask([Question("ok", "Publish the draft?", {"type": "boolean"})])
        final = await ctx.save_document("draft", "Final", {"published": answers["ok"]})
        return {"draft": draft, "final": final}

    return app


@dataclass
class Env:
    engine: Engine
    ledger: Ledger
    db_url: str

    async def finished(self, execution_id: str, timeout: float = 15.0) -> Execution:
        async def done() -> Execution | None:
            ex = await self.engine.get_execution(execution_id)
            return ex if ex.status in ("completed", "failed", "cancelled") else None

        result: Execution = await wait_until(done, timeout)
        return result

    async def run(
        self,
        task: str,
        input: dict[str, Any],
        *,
        owner: str = ALICE,
        scope_type: str | None = None,
        scope_id: str | None = None,
    ) -> tuple[Execution, Any]:
        """Run one step ``save`` of ``task``; return the finished execution and its output."""
        spec = ExecutionSpec(
            steps=[Step("save", task, input=input)], scope_type=scope_type, scope_id=scope_id
        )
        started = (await self.engine.start_execution(spec, owner=owner)).execution
        final = await self.finished(started.id)
        assert final.status == "completed", final.error
        assert isinstance(final.output, dict)
        return final, final.output["save"]

    async def save(
        self,
        kind: str,
        content: Any,
        *,
        title: str = "A title",
        owner: str = ALICE,
        scope_type: str | None = "topic",
        scope_id: str | None = "t1",
    ) -> dict[str, Any]:
        """One saved document through a step: ``{"id", "version"}``."""
        _, output = await self.run(
            "write",
            {
                "kind": kind,
                "title": title,
                "content": content,
                "scope_type": scope_type,
                "scope_id": scope_id,
            },
            owner=owner,
        )
        (saved,) = output
        assert isinstance(saved, dict)
        return saved


@pytest.fixture
async def env(db_url: str) -> AsyncIterator[Env]:
    ledger = Ledger()
    app = build_app(ledger)
    settings = Settings(
        database_url=db_url, sweep_interval_s=0.2, poll_max_s=0.2, cancel_grace_s=0.5
    )
    runtime = Runtime(app, settings)
    engine = await runtime.open(upgrade=False)
    worker = runtime.worker(concurrency=8)
    await worker.start()
    try:
        yield Env(engine, ledger, db_url)
    finally:
        await worker.stop()
        await runtime.close()


# -- saving from steps ---------------------------------------------------------------------------


async def test_saving_twice_in_the_same_scope_adds_a_version(env: Env) -> None:
    first = await env.save("brief", {"text": "first draft"}, title="Brief v1")
    assert first["version"] == 1
    doc = await env.engine.get_document(first["id"], owner=ALICE)
    assert (doc.version, doc.title, doc.content) == (1, "Brief v1", {"text": "first draft"})
    assert (doc.scope_type, doc.scope_id, doc.type, doc.owner) == ("topic", "t1", "brief", ALICE)

    second = await env.save("brief", {"text": "second draft"}, title="Brief v2")
    assert second == {"id": first["id"], "version": 2}
    doc = await env.engine.get_document(first["id"], owner=ALICE)
    assert (doc.version, doc.title, doc.content) == (2, "Brief v2", {"text": "second draft"})
    assert doc.updated_at >= doc.created_at

    # another type, or another scope, is another document
    other_type = await env.save("summary", {"text": "x"})
    other_scope = await env.save("brief", {"text": "y"}, scope_id="t2")
    assert other_type["version"] == other_scope["version"] == 1
    assert len({first["id"], other_type["id"], other_scope["id"]}) == 3
    assert (await env.engine.get_document(first["id"])).version == 2


async def test_several_saves_in_one_step_each_add_a_version(env: Env) -> None:
    execution, output = await env.run(
        "write",
        {"kind": "log", "title": "Log", "content": "line", "scope_type": "s", "scope_id": "1"},
    )
    assert [s["version"] for s in output] == [1]
    _, output = await env.run(
        "write",
        {
            "kind": "log",
            "title": "Log",
            "content": "line",
            "scope_type": "s",
            "scope_id": "1",
            "times": 3,
        },
    )
    assert [s["version"] for s in output] == [2, 3, 4]
    versions = await env.engine.document_versions(output[0]["id"], owner=ALICE)
    assert [v.version for v in versions] == [1, 2, 3, 4]
    assert [v.content for v in versions[1:]] == [{"n": n, "content": "line"} for n in (1, 2, 3)]
    assert versions[0].execution_id == execution.id


async def test_a_retried_step_does_not_add_versions_again(env: Env) -> None:
    execution, output = await env.run("flaky_write", {"scope_id": "retry"})
    assert [attempt for attempt, _ in env.ledger.saves] == [1, 2]
    first_attempt, second_attempt = (saved for _, saved in env.ledger.saves)
    assert [s["version"] for s in first_attempt] == [1, 2]
    # the second attempt gets back the versions the first one made, then adds only the
    # save the first attempt never reached
    assert second_attempt[:2] == first_attempt
    assert second_attempt[2] == {"id": first_attempt[0]["id"], "version": 3}
    assert output == second_attempt

    document_id = first_attempt[0]["id"]
    versions = await env.engine.document_versions(document_id, owner=ALICE)
    assert [v.version for v in versions] == [1, 2, 3]
    # what each version holds is what was saved first (the repeat did not overwrite it)
    assert [v.content for v in versions] == [
        {"part": 1, "attempt": 1},
        {"part": 2, "attempt": 1},
        {"part": 3, "attempt": 2},
    ]
    assert [v.title for v in versions] == ["part 1 (attempt 1)", "part 2 (attempt 1)", "part 3"]
    doc = await env.engine.get_document(document_id, owner=ALICE)
    assert doc.version == 3 and doc.content == {"part": 3, "attempt": 2}
    assert {v.job_id for v in versions} == {versions[0].job_id}
    assert all(v.execution_id == execution.id and v.step_id == "save" for v in versions)
    saved_events = [
        e for e in await env.engine.execution_events(execution.id) if e.type == "document.saved"
    ]
    assert [e.data["version"] for e in saved_events] == [1, 2, 3]


async def test_history_lists_every_version_with_its_author(env: Env) -> None:
    saved = await env.save("brief", "v1 text", title="T1")
    await env.save("brief", "v2 text", title="T2")
    edited = await env.engine.put_document(
        saved["id"], expected_version=2, content="v3 text", owner=ALICE, actor="editor-1"
    )
    assert edited.version == 3 and edited.title == "T2"  # no title: the title is kept
    versions = await env.engine.document_versions(saved["id"], owner=ALICE)
    assert [(v.version, v.title, v.content) for v in versions] == [
        (1, "T1", "v1 text"),
        (2, "T2", "v2 text"),
        (3, "T2", "v3 text"),
    ]
    step_made = versions[:2]
    assert all(v.created_by == "step:save" and v.step_id == "save" for v in step_made)
    assert all(v.job_id is not None and v.execution_id is not None for v in step_made)
    assert step_made[0].execution_id != step_made[1].execution_id  # two runs
    api_made = versions[2]
    assert api_made.created_by == "editor-1"
    assert (api_made.job_id, api_made.execution_id, api_made.step_id) == (None, None, None)
    assert versions[0].created_at <= versions[1].created_at <= versions[2].created_at


async def test_get_a_given_version(env: Env) -> None:
    saved = await env.save("brief", {"rev": 1}, title="one")
    await env.save("brief", {"rev": 2}, title="two")
    first = await env.engine.document_version(saved["id"], 1, owner=ALICE)
    assert (first.version, first.title, first.content, first.content_type) == (
        1,
        "one",
        {"rev": 1},
        "json",
    )
    second = await env.engine.document_version(saved["id"], 2, owner=ALICE)
    assert (second.version, second.content) == (2, {"rev": 2})
    for missing in (0, 3, 99):
        with pytest.raises(NotFoundError):
            await env.engine.document_version(saved["id"], missing, owner=ALICE)


async def test_default_scopes(env: Env) -> None:
    """Without a scope a step's document belongs to its execution's scope, else to the
    execution itself; a standalone job's to the job."""
    execution, output = await env.run(
        "write", {"kind": "a", "title": "t", "content": 1}, scope_type="case", scope_id="c-9"
    )
    doc = await env.engine.get_document(output[0]["id"], owner=ALICE)
    assert (doc.scope_type, doc.scope_id, doc.execution_id) == ("case", "c-9", execution.id)

    execution, output = await env.run("write", {"kind": "a", "title": "t", "content": 2})
    doc = await env.engine.get_document(output[0]["id"], owner=ALICE)
    assert (doc.scope_type, doc.scope_id) == ("execution", execution.id)

    job = (
        await env.engine.enqueue(
            JobSpec(task="write", input={"kind": "a", "title": "t", "content": 3}), owner=ALICE
        )
    ).job

    async def job_done() -> Any:
        current = await env.engine.get_job(job.id)
        return current if current.status in ("completed", "failed") else None

    finished = await wait_until(job_done)
    assert finished.status == "completed", finished.error
    doc = await env.engine.get_document(finished.result[0]["id"], owner=ALICE)
    assert (doc.scope_type, doc.scope_id, doc.execution_id) == ("job", job.id, None)
    (version,) = await env.engine.document_versions(doc.id, owner=ALICE)
    assert version.created_by == f"job:{job.id}" and version.job_id == job.id


async def test_parallel_steps_creating_the_same_document_all_save(env: Env) -> None:
    """Parallel steps of one execution save the same type in the same (default) scope at
    the same moment: the first save creates the document, the others add versions."""
    racers = env.ledger.racers
    spec = ExecutionSpec(
        steps=[Step(f"r{i}", "race_write", input={"kind": "notes"}) for i in range(racers)]
    )
    started = (await env.engine.start_execution(spec, owner=ALICE)).execution
    final = await env.finished(started.id, timeout=30)
    steps = {s.step_id: s for s in await env.engine.execution_steps(started.id)}
    errors = {
        k: (s.status, str((s.error or {}).get("message", ""))[:200])
        for k, s in steps.items()
        if s.status != "completed"
    }
    assert final.status == "completed", errors
    page = await env.engine.list_documents(owner=ALICE, type_="notes")
    (row,) = page.items
    assert (row.scope_type, row.scope_id, row.version) == ("execution", started.id, racers)
    versions = await env.engine.document_versions(row.id, owner=ALICE)
    assert [v.version for v in versions] == list(range(1, racers + 1))
    assert sorted(v.step_id or "" for v in versions) == sorted(steps)
    assert sorted(s.result["version"] for s in steps.values()) == list(range(1, racers + 1))


async def test_a_step_resumed_after_a_clarification_does_not_save_twice(env: Env) -> None:
    spec = ExecutionSpec(steps=[Step("ask", "save_then_ask")])
    started = (await env.engine.start_execution(spec, owner=ALICE)).execution

    async def waiting() -> bool:
        return (await env.engine.get_execution(started.id)).status == "awaiting_input"

    await wait_until(waiting)
    (row,) = (await env.engine.list_documents(owner=ALICE, type_="draft")).items
    assert row.version == 1
    await env.engine.answer(started.id, "ask", {"ok": True}, owner=ALICE, actor=ALICE)
    final = await env.finished(started.id)
    assert final.status == "completed", final.error
    assert env.ledger.asked_runs == 2  # the step really ran again from the start
    assert final.output == {
        "ask": {"draft": {"id": row.id, "version": 1}, "final": {"id": row.id, "version": 2}}
    }
    versions = await env.engine.document_versions(row.id, owner=ALICE)
    assert [(v.version, v.content) for v in versions] == [
        (1, {"run": 1}),
        (2, {"published": True}),
    ]


# -- edits through put_document --------------------------------------------------------------


async def test_put_with_the_current_version_adds_one(env: Env) -> None:
    saved = await env.save("brief", {"text": "draft"}, title="Draft")
    doc = await env.engine.put_document(
        saved["id"],
        expected_version=1,
        content={"text": "edited"},
        title="Edited",
        owner=ALICE,
        actor="u-alice",
    )
    assert (doc.version, doc.title, doc.content) == (2, "Edited", {"text": "edited"})
    again = await env.engine.put_document(
        saved["id"], expected_version=2, content="now text", owner=ALICE, actor="u-alice"
    )
    assert (again.version, again.content, again.content_type) == (3, "now text", "text")
    fetched = await env.engine.get_document(saved["id"], owner=ALICE)
    assert (fetched.version, fetched.content, fetched.title) == (3, "now text", "Edited")
    assert [v.version for v in await env.engine.document_versions(saved["id"])] == [1, 2, 3]


async def test_put_with_a_stale_version_is_refused_and_overwrites_nothing(env: Env) -> None:
    saved = await env.save("brief", {"text": "one"}, title="One")
    await env.save("brief", {"text": "two"}, title="Two")
    before = await env.engine.get_document(saved["id"], owner=ALICE)
    for stale in (1, 3, 0):
        with pytest.raises(PreconditionFailedError, match="version 2"):
            await env.engine.put_document(
                saved["id"],
                expected_version=stale,
                content={"text": "lost?"},
                title="Overwritten",
                owner=ALICE,
                actor="u-alice",
            )
    after = await env.engine.get_document(saved["id"], owner=ALICE)
    assert after == before
    versions = await env.engine.document_versions(saved["id"], owner=ALICE)
    assert [(v.version, v.content) for v in versions] == [
        (1, {"text": "one"}),
        (2, {"text": "two"}),
    ]


async def test_put_checks_its_content(env: Env) -> None:
    saved = await env.save("brief", "x")
    with pytest.raises(InvalidInputError):
        await env.engine.put_document(
            saved["id"], expected_version=1, content="y", title="", owner=ALICE, actor="a"
        )
    with pytest.raises(InvalidInputError):
        await env.engine.put_document(
            saved["id"],
            expected_version=1,
            content="z" * (4 * 1_048_576 + 1),
            owner=ALICE,
            actor="a",
        )
    assert (await env.engine.get_document(saved["id"])).version == 1


def _put_from_another_connection(
    db_url: str, document_id: str, expected: int | None, name: str, barrier: threading.Barrier
) -> tuple[str, int]:
    """One writer with its own Database and event loop (in its own thread).

    ``expected=None``: read-modify-write (append ``name`` to the list), retrying on 412
    until it lands; returns ("ok", number of 412s). Otherwise one blind write at
    ``expected``: ("ok", version) or ("412", 0).
    """

    async def go() -> tuple[str, int]:
        db = open_database(db_url)
        engine = Engine(db)
        try:
            await engine.get_document(document_id)  # connect before the race starts
            await asyncio.to_thread(barrier.wait, 30)
            if expected is not None:
                try:
                    doc = await engine.put_document(
                        document_id,
                        expected_version=expected,
                        content=[name],
                        owner=ALICE,
                        actor=name,
                    )
                except PreconditionFailedError:
                    return "412", 0
                return "ok", doc.version
            conflicts = 0
            while True:
                current = await engine.get_document(document_id, owner=ALICE)
                try:
                    await engine.put_document(
                        document_id,
                        expected_version=current.version,
                        content=[*current.content, name],
                        owner=ALICE,
                        actor=name,
                    )
                    return "ok", conflicts
                except PreconditionFailedError:
                    conflicts += 1
        finally:
            await db.close()

    return asyncio.run(go())


async def _race(
    db_url: str, document_id: str, expected: int | None, names: list[str]
) -> list[tuple[str, int]]:
    """Run one writer per name, each in its own thread, released together."""
    barrier = threading.Barrier(len(names))
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        return list(
            await asyncio.gather(
                *(
                    loop.run_in_executor(
                        pool,
                        _put_from_another_connection,
                        db_url,
                        document_id,
                        expected,
                        name,
                        barrier,
                    )
                    for name in names
                )
            )
        )


async def test_concurrent_writers_at_the_same_version_one_wins(env: Env) -> None:
    writers = 8
    saved = await env.save("shared", [], title="Shared")
    await env.save("shared", [], title="Shared")
    expected = 2
    names = [f"writer-{i}" for i in range(writers)]
    results = await _race(env.db_url, saved["id"], expected, names)
    winners = [name for name, (outcome, _) in zip(names, results, strict=True) if outcome == "ok"]
    assert len(winners) == 1, results
    assert sorted(outcome for outcome, _ in results) == ["412"] * (writers - 1) + ["ok"]
    assert [version for outcome, version in results if outcome == "ok"] == [expected + 1]
    doc = await env.engine.get_document(saved["id"], owner=ALICE)
    assert doc.version == expected + 1 and doc.content == [winners[0]]
    versions = await env.engine.document_versions(saved["id"], owner=ALICE)
    assert [v.version for v in versions] == [1, 2, 3]
    assert versions[-1].created_by == winners[0]


async def test_concurrent_read_modify_write_loses_no_update(env: Env) -> None:
    writers = 6
    saved = await env.save("shared", [], title="Shared")
    names = [f"writer-{i}" for i in range(writers)]
    results = await _race(env.db_url, saved["id"], None, names)
    assert all(outcome == "ok" for outcome, _ in results), results
    doc = await env.engine.get_document(saved["id"], owner=ALICE)
    assert doc.version == 1 + writers
    assert sorted(doc.content) == sorted(names)  # every writer's change is there, once
    versions = await env.engine.document_versions(saved["id"], owner=ALICE)
    assert [v.version for v in versions] == list(range(1, writers + 2))
    # each version extends the one before it by exactly its author's name
    for previous, current in itertools.pairwise(versions):
        assert current.content == [*previous.content, current.created_by]


# -- ownership, listing, content types -------------------------------------------------------


async def test_another_owner_sees_nothing(env: Env) -> None:
    saved = await env.save("brief", {"secret": True})
    document_id = saved["id"]
    with pytest.raises(NotFoundError):
        await env.engine.get_document(document_id, owner=BOB)
    with pytest.raises(NotFoundError):
        await env.engine.document_versions(document_id, owner=BOB)
    with pytest.raises(NotFoundError):
        await env.engine.document_version(document_id, 1, owner=BOB)
    with pytest.raises(NotFoundError):
        await env.engine.put_document(
            document_id, expected_version=1, content={"secret": False}, owner=BOB, actor="bob"
        )
    page = await env.engine.list_documents(owner=BOB)
    assert page.items == []
    # nothing changed, and the owner (and an admin, owner=None) still see it
    doc = await env.engine.get_document(document_id, owner=ALICE)
    assert (doc.version, doc.content) == (1, {"secret": True})
    assert (await env.engine.get_document(document_id)).owner == ALICE
    with pytest.raises(NotFoundError):
        await env.engine.get_document("not-an-id", owner=ALICE)

    # the same scope and type for bob is bob's own document
    bobs = await env.save("brief", {"mine": "bob"}, owner=BOB)
    assert bobs["id"] != document_id and bobs["version"] == 1
    assert (await env.engine.get_document(document_id, owner=ALICE)).version == 1


async def test_list_filters_by_scope_and_type(env: Env) -> None:
    made: dict[tuple[str, str, str], str] = {}
    for scope_type, scope_id, kind in [
        ("topic", "a", "brief"),
        ("topic", "a", "summary"),
        ("topic", "b", "brief"),
        ("case", "a", "brief"),
    ]:
        saved = await env.save(kind, {"k": kind}, scope_type=scope_type, scope_id=scope_id)
        made[(scope_type, scope_id, kind)] = saved["id"]
    await env.save("brief", {"k": "bob"}, owner=BOB, scope_type="topic", scope_id="a")

    async def ids(**filters: str) -> set[str]:
        page = await env.engine.list_documents(owner=ALICE, limit=100, **filters)
        assert page.next_cursor is None
        return {row.id for row in page.items}

    def expect(**filters: str) -> set[str]:
        keys = {"scope_type": 0, "scope_id": 1, "type_": 2}
        return {
            doc_id
            for key, doc_id in made.items()
            if all(key[keys[name]] == value for name, value in filters.items())
        }

    cases: list[dict[str, str]] = [
        {},
        {"scope_type": "topic"},
        {"scope_type": "topic", "scope_id": "a"},
        {"scope_id": "a"},
        {"type_": "brief"},
        {"scope_type": "topic", "scope_id": "a", "type_": "brief"},
        {"scope_type": "nothing"},
    ]
    for filters in cases:
        assert await ids(**filters) == expect(**filters), filters
    assert len(await ids()) == 4

    # pages of 3 then 1, newest first, no duplicates
    first = await env.engine.list_documents(owner=ALICE, limit=3)
    assert len(first.items) == 3 and first.next_cursor is not None
    rest = await env.engine.list_documents(owner=ALICE, limit=3, cursor=first.next_cursor)
    assert len(rest.items) == 1 and rest.next_cursor is None
    listed = [row.id for row in [*first.items, *rest.items]]
    assert listed == sorted(made.values(), reverse=True)
    row = next(r for r in [*first.items, *rest.items] if r.id == made[("topic", "a", "brief")])
    assert (row.type, row.scope_type, row.scope_id, row.version, row.owner) == (
        "brief",
        "topic",
        "a",
        1,
        ALICE,
    )


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        ({"title": "Ünïcödé ✓", "n": 3, "ratio": 0.25, "ok": True, "none": None}, "json"),
        ({"nested": {"list": [1, "two", {"three": [3.5]}]}}, "json"),
        ([1, 2, 3], "json"),
        (42, "json"),
        ("# Markdown\n\n- item ✓\n", "text"),
        ('{"looks": "like json"}', "text"),
        ("", "text"),
    ],
)
async def test_content_round_trips_as_json_or_text(
    env: Env, content: Any, content_type: str
) -> None:
    saved = await env.save("roundtrip", content)
    doc: Document = await env.engine.get_document(saved["id"], owner=ALICE)
    assert doc.content_type == content_type
    assert doc.content == content and type(doc.content) is type(content)
    version = await env.engine.document_version(saved["id"], 1, owner=ALICE)
    assert version.content == content and version.content_type == content_type
    # and the same through an edit
    edited = await env.engine.put_document(
        saved["id"], expected_version=1, content=content, owner=ALICE, actor="a"
    )
    assert (edited.content, edited.content_type, edited.version) == (content, content_type, 2)
