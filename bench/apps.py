"""The app the benchmarks run: a no-op task and a task that stamps its start time."""

from __future__ import annotations

import time

from conveyor import Conveyor

APP_SPEC = "bench.apps:app"

app = Conveyor("bench")

#: ``stamp`` jobs started in this process: sequence number -> ``time.perf_counter()``
STARTS: dict[int, float] = {}


@app.task
async def noop() -> None:
    """Does nothing: the whole cost of running it is the orchestrator's."""


@app.task
async def stamp(seq: int) -> float:
    """Record when the attempt started; return the wall-clock start for other processes."""
    STARTS[seq] = time.perf_counter()
    return time.time()
