"""The example app the README uses: ``conveyor serve --app examples.app:app``.

Workflows: ``research`` (refine_question -> literature_scout -> synthesis, declared in
workflows.yaml) and ``data_pipeline`` (fan-out/fan-in). Plus a few standalone tasks.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from conveyor import Context, Conveyor
from examples import pipeline
from examples.research import tasks as research

app = Conveyor("examples")
research.register(app)
pipeline.register(app)
app.load_workflows(Path(__file__).parent / "workflows.yaml")


@app.task(retries=3, timeout=60)
async def add(ctx: Context, a: int, b: int) -> int:
    """Add two numbers (the smallest possible task)."""
    return a + b


@app.task
async def slow_count(ctx: Context, to: int = 10, delay_s: float = 0.5) -> int:
    """Count slowly, reporting progress; stops early when cancelled."""
    for i in range(1, to + 1):
        if ctx.cancelled:
            ctx.raise_if_cancelled()
        await asyncio.sleep(delay_s)
        ctx.progress(100 * i / to, f"counted {i} of {to}")
    return to


@app.task(retries=0)
def word_count(ctx: Context, text: str) -> dict[str, int]:
    """A synchronous task: it runs in a worker thread."""
    counts: dict[str, int] = {}
    for word in text.lower().split():
        counts[word] = counts.get(word, 0) + 1
    return counts
