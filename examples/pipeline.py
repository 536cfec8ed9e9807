"""A fan-out/fan-in data pipeline: fetch -> four chunk workers -> merge."""

from __future__ import annotations

from conveyor import Context, Conveyor
from conveyor.domain.graph import Step
from conveyor.workflows import Workflow

CHUNKS = 4


def register(app: Conveyor) -> None:
    @app.task
    def fetch_numbers(ctx: Context, count: int = 100) -> list[int]:
        """Produce the dataset (a sync task: it runs in a worker thread)."""
        return list(range(1, count + 1))

    @app.task
    async def square_chunk(ctx: Context, fetch: list[int], index: int, chunks: int = CHUNKS) -> int:
        """Sum of squares of every ``chunks``-th number from ``index`` (``fetch`` is the
        output of the step named fetch)."""
        part = fetch[index::chunks]
        return sum(n * n for n in part)

    @app.task
    async def merge_chunks(ctx: Context) -> dict[str, int]:
        """Fan-in: combine the outputs of every chunk step."""
        partials = {k: v for k, v in ctx.dependencies.items() if k.startswith("chunk_")}
        return {"sum_of_squares": sum(partials.values()), "chunks": len(partials)}

    chunk_ids = [f"chunk_{i}" for i in range(CHUNKS)]
    app.add_workflow(
        Workflow(
            "data_pipeline",
            [
                Step("fetch", "fetch_numbers"),
                *[
                    Step(chunk_id, "square_chunk", ["fetch"], input={"index": i})
                    for i, chunk_id in enumerate(chunk_ids)
                ],
                Step("merge", "merge_chunks", chunk_ids),
            ],
            description="Fan-out over chunks of a dataset, then fan back in.",
        )
    )
