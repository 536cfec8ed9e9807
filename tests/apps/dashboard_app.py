"""The app the dashboard tests serve: the examples' research and data pipelines, plus an
``echo`` workflow (its output is whatever text it was given: the XSS probe) and a
``countdown`` workflow that runs long enough to be watched and cancelled."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conveyor import Context, Conveyor, NonRetryableError
from conveyor.domain.graph import Step
from conveyor.workflows import Workflow
from examples import pipeline
from examples.research import tasks as research

app = Conveyor("dashboard-tests")
research.register(app)
pipeline.register(app)
app.load_workflows(Path(__file__).resolve().parents[2] / "examples" / "workflows.yaml")


@app.task(retries=0)
async def echo(ctx: Context, text: str, fail: bool = False) -> dict[str, str]:
    """Return the text as it came (or fail with it as the error message)."""
    if fail:
        raise NonRetryableError(text)
    return {"text": text}


@app.task(retries=0)
async def countdown(ctx: Context, seconds: float = 60.0) -> str:
    """Tick for ``seconds``, reporting progress, until done or cancelled."""
    ticks = max(1, round(seconds / 0.1))
    for tick in range(1, ticks + 1):
        ctx.raise_if_cancelled()
        await asyncio.sleep(0.1)
        ctx.progress(100 * tick / ticks, f"{tick} of {ticks}")
    return "done"


app.add_workflow(Workflow("echo", [Step("echo", "echo")], description="Echo the text."))
app.add_workflow(
    Workflow(
        "countdown",
        [Step("count", "countdown"), Step("report", "echo", ["count"], input={"text": "done"})],
        description="Count down, then report.",
    )
)
