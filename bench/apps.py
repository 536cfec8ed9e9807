"""The app the benchmarks run: a no-op task and a task that stamps its start time."""

from __future__ import annotations

import asyncio
import os
import time

from conveyor import Context, Conveyor

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


@app.task(retries=0)
async def beacon(ctx: Context, rate: float, duration: float, go_file: str | None = None) -> int:
    """Progress events at ``rate`` per second for ``duration`` seconds, on a fixed grid
    (no drift), once ``go_file`` exists if one is given (for at most 10 minutes). Each
    message is ``"<seq> <time.time()>"``: its sequence number and when it was published.
    Returns how many were published."""
    if go_file is not None:
        give_up = time.monotonic() + 600
        while not await asyncio.to_thread(os.path.exists, go_file):
            if time.monotonic() > give_up:
                return 0
            await asyncio.sleep(0.005)
    count = max(1, round(rate * duration))
    loop = asyncio.get_running_loop()
    origin = loop.time()
    for seq in range(count):
        delay = origin + seq / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        ctx.progress(100 * (seq + 1) / count, f"{seq} {time.time():.6f}")
    return count
