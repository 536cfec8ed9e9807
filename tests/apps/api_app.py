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
