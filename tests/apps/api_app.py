"""The app the API tests serve: small tasks and workflows covering every route."""

from __future__ import annotations

import asyncio

from conveyor import Context, Conveyor, NonRetryableError
from conveyor.domain.graph import Step
from conveyor.domain.questions import Question
from conveyor.workflows import Workflow

app = Conveyor("api-tests")


@app.task
async def add(ctx: Context, a: int, b: int) -> int:
    return a + b


@app.task(retries=0)
async def sleepy(ctx: Context, seconds: float = 30.0) -> str:
    """Sleeps until done or cancelled (checks ctx.cancelled every 50 ms)."""
    waited = 0.0
    while waited < seconds:
        if ctx.cancelled:
            ctx.raise_if_cancelled()
        await asyncio.sleep(0.05)
        waited += 0.05
        ctx.progress(100 * waited / seconds)
    return "slept"


@app.task(retries=0)
async def boom(ctx: Context) -> None:
    raise NonRetryableError("boom")


@app.task(retries=0)
async def echo(ctx: Context, text: str = "") -> str:
    return text


@app.task(retries=0)
async def ask_name(ctx: Context) -> str:
    answers = await ctx.ask(
        [Question("name", "Your name?", {"type": "string", "minLength": 2, "maxLength": 50})]
    )
    return f"hello {answers['name']}"


app.add_workflow(
    Workflow(
        "pipeline",
        [Step("first", "echo", input={"text": "one"}), Step("second", "echo", ["first"])],
        description="Two echo steps in a row.",
    )
)
app.add_workflow(Workflow("greeting", [Step("ask", "ask_name"), Step("after", "echo", ["ask"])]))
app.add_workflow(Workflow("waiting", [Step("wait", "sleepy"), Step("then", "echo", ["wait"])]))


# -- live streams (tests/streams) ---------------------------------------------------------------


@app.task(retries=0)
async def ticker(
    ctx: Context, count: int = 20, interval: float = 0.05, size: int = 0, burst: int = 1
) -> int:
    """Reports ``count`` progress events whose messages are ``"0"``, ``"1"``, ... (padded
    with dots to ``size`` characters), ``burst`` of them every ``interval`` seconds."""
    for i in range(count):
        ctx.progress(100 * (i + 1) / count, str(i).ljust(size, "."))
        if (i + 1) % burst == 0 and interval > 0:
            await asyncio.sleep(interval)
    return count


app.add_workflow(Workflow("doomed", [Step("explode", "boom")], description="Always fails."))
app.add_workflow(
    Workflow(
        "ticking",
        [
            Step("one", "ticker", input={"count": 8, "interval": 0.02}),
            Step("two", "ticker", ["one"], input={"count": 8, "interval": 0.02}),
        ],
        description="Two steps reporting progress, one after the other.",
    )
)


@app.task(retries=0)
async def write_report(ctx: Context, topic: str = "queues") -> dict[str, object]:
    """Calls the (fake) LLM and saves a versioned document: usage and documents routes."""
    completion = await ctx.llm.complete(f"Write one line about {topic}. It should be short.")
    saved = await ctx.save_document("report", f"About {topic}", completion.text)
    return {"document": saved, "cost_usd": completion.cost_usd}


app.add_workflow(Workflow("writer", [Step("write", "write_report")]))
