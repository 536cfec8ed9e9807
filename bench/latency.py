"""Latency: jobs submitted one at a time at a fixed rate to an idle worker.

    python -m bench.latency --rate 50 --jobs 1000                 # SQLite, embedded worker
    python -m bench.latency --rate 50 --jobs 1000 --db postgres
    python -m bench.latency --rate 50 --jobs 1000 --external      # worker in its own process

The worker runs in this process (as ``conveyor serve`` embeds one) or, with ``--external``,
in a process of its own. Submissions are scheduled with ``loop.call_at`` on a fixed grid
(no drift from sleeping); the submit time is taken just before ``engine.enqueue``. The
``stamp`` task records when it starts: ``time.perf_counter()`` in this process, or
``time.time()`` returned as the job's result from another process. Submit-to-start latency
is start minus submit; a few warm-up jobs and an idle pause come first and are not counted.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from bench.apps import APP_SPEC, STARTS, app
from bench.common import (
    BenchOptions,
    ChildConfig,
    CountedWorker,
    WorkerOptions,
    WorkerProcesses,
    add_prefetch_option,
    bench_parser,
    build_worker,
    count_unfinished,
    cpu_sample,
    cpu_usage,
    db_figures,
    db_label,
    finish,
    make_settings,
    ms,
    optional_float,
    percentile,
    prefetch_window,
    run_rounds,
    shared_options,
)
from conveyor.engine.core import Engine
from conveyor.engine.models import JobSpec
from conveyor.runtime import Runtime
from conveyor.store.database import Database
from conveyor.store.schema import jobs


@dataclass(frozen=True)
class Options(BenchOptions):
    rate: float
    jobs: int
    warmup: int
    concurrency: int
    external: bool
    prefetch_window_s: float | None
    idle_s: float


def parse(argv: list[str] | None = None) -> Options:
    parser = bench_parser("python -m bench.latency", __doc__, raw=False)
    parser.add_argument("--rate", type=float, default=50.0, help="submissions per second")
    parser.add_argument("--jobs", type=int, default=1000, help="measured submissions")
    parser.add_argument("--warmup", type=int, default=20, help="submissions not counted")
    parser.add_argument("--concurrency", type=int, default=4, help="worker slots")
    parser.add_argument(
        "--external", action="store_true", help="run the worker in a separate process"
    )
    add_prefetch_option(parser)
    parser.add_argument(
        "--idle", type=float, default=1.0, help="seconds the worker idles before measuring"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="wait at most (s)")
    ns = parser.parse_args(argv)
    if ns.rate <= 0 or ns.jobs < 1 or ns.warmup < 0 or ns.concurrency < 1:
        parser.error("--rate, --jobs and --concurrency must be positive")
    return Options(
        **shared_options(ns),
        rate=float(ns.rate),
        jobs=int(ns.jobs),
        warmup=int(ns.warmup),
        concurrency=int(ns.concurrency),
        external=bool(ns.external),
        prefetch_window_s=optional_float(ns.prefetch_window),
        idle_s=float(ns.idle),
    )


@dataclass
class Submission:
    perf: float  # time.perf_counter() just before engine.enqueue
    wall: float  # time.time() at the same moment
    enqueue_s: float = 0.0  # how long engine.enqueue took
    lag_s: float = 0.0  # how late the submission ran against its slot on the grid


@dataclass
class Submitter:
    """Submits ``stamp`` jobs on a fixed grid of ``1 / rate`` seconds."""

    engine: Engine
    rate: float
    submitted: dict[int, Submission] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, seqs: Sequence[int]) -> None:
        """Schedule every submission with ``loop.call_at``; return when all are enqueued."""
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()
        remaining = len(seqs)

        def done(task: asyncio.Task[None]) -> None:
            nonlocal remaining
            self._tasks.discard(task)
            if finished.done():
                return
            if not task.cancelled() and task.exception() is not None:
                finished.set_exception(task.exception() or RuntimeError("enqueue failed"))
                return
            remaining -= 1
            if remaining == 0:
                finished.set_result(None)

        def fire(seq: int, slot: float) -> None:
            task = loop.create_task(self._submit(seq, slot))
            self._tasks.add(task)
            task.add_done_callback(done)

        if not seqs:
            return
        origin = loop.time() + 0.05
        for k, seq in enumerate(seqs):
            slot = origin + k / self.rate
            loop.call_at(slot, fire, seq, slot)
        await finished

    async def _submit(self, seq: int, slot: float) -> None:
        lag = asyncio.get_running_loop().time() - slot
        sub = Submission(time.perf_counter(), time.time(), lag_s=lag)
        self.submitted[seq] = sub
        await self.engine.enqueue(JobSpec(task="stamp", input={"seq": seq}), owner="bench")
        sub.enqueue_s = time.perf_counter() - sub.perf


async def wait_in_process(seqs: Sequence[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    # the stamp task fills STARTS in this process: watching it costs no query
    while any(s not in STARTS for s in seqs):
        if time.monotonic() > deadline:
            raise TimeoutError("jobs did not all start in time")
        await asyncio.sleep(0.005)


async def wait_external(db: Database, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while await count_unfinished(db) > 0:
        if time.monotonic() > deadline:
            raise TimeoutError("jobs did not all start in time")
        await asyncio.sleep(0.1)


async def wall_starts(db: Database) -> dict[int, float]:
    """The ``time.time()`` each completed ``stamp`` job returned, by sequence number."""

    def body(conn: Connection) -> dict[int, float]:
        rows = conn.execute(
            select(jobs.c.input, jobs.c.result).where(
                jobs.c.task == "stamp", jobs.c.status == "completed"
            )
        ).all()
        return {int(data["seq"]): float(result) for data, result in rows}

    return await db.read(body)


def achieved_rate(submitter: Submitter, seqs: Sequence[int]) -> float:
    """Submissions per second between the first and the last measured one."""
    if len(seqs) < 2:
        return float("nan")
    span = submitter.submitted[seqs[-1]].perf - submitter.submitted[seqs[0]].perf
    return (len(seqs) - 1) / span if span > 0 else float("inf")


async def run(url: str, opts: Options) -> dict[str, Any]:
    runtime = Runtime(app, make_settings(url, opts.synchronous))
    engine = await runtime.open(upgrade=False)
    worker_options = WorkerOptions(
        concurrency=opts.concurrency,
        prefetch_window_s=opts.prefetch_window_s,
        kind="process" if opts.external else "embedded",
    )
    group: WorkerProcesses | None = None
    counted: CountedWorker | None = None
    submitter = Submitter(engine, opts.rate)
    warmup = list(range(opts.warmup))
    measured = list(range(opts.warmup, opts.warmup + opts.jobs))
    try:
        if opts.external:
            config = ChildConfig(url, opts.synchronous, APP_SPEC, worker_options)
            group = WorkerProcesses(config, 1)
            group.start()
            await group.wait_ready()
            group.go()
        else:
            counted = build_worker(runtime, worker_options)
            await counted.worker.start()

        async def settle(seqs: list[int]) -> None:
            if opts.external:
                await wait_external(engine.db, opts.timeout_s)
            else:
                await wait_in_process(seqs, opts.timeout_s)

        await submitter.run(warmup)
        await settle(warmup)
        await asyncio.sleep(opts.idle_s)  # let the worker go idle (and back off its polling)
        cpu_before = cpu_sample()
        await submitter.run(measured)
        await settle(measured)
        cpu = cpu_usage(cpu_before, cpu_sample())
        if opts.external:
            starts = await wall_starts(engine.db)
            latencies = [starts[s] - submitter.submitted[s].wall for s in measured]
        else:
            latencies = [STARTS[s] - submitter.submitted[s].perf for s in measured]
    finally:
        if counted is not None:
            await counted.worker.stop()
        if group is not None:
            await group.stop()
        await runtime.close()

    lat = sorted(latencies)
    enq = sorted(submitter.submitted[s].enqueue_s for s in measured)
    lag = sorted(submitter.submitted[s].lag_s for s in measured)
    return {
        "bench": "latency",
        **db_figures(opts),
        "worker": "external" if opts.external else "in-process",
        "rate": opts.rate,
        "achieved_rate": round(achieved_rate(submitter, measured), 1),
        "jobs": opts.jobs,
        "concurrency": opts.concurrency,
        "prefetch_window_s": prefetch_window(opts.prefetch_window_s),
        "p50_ms": ms(percentile(lat, 50)),
        "p95_ms": ms(percentile(lat, 95)),
        "p99_ms": ms(percentile(lat, 99)),
        "max_ms": ms(lat[-1]),
        "mean_ms": ms(sum(lat) / len(lat)),
        "min_ms": ms(lat[0]),
        "enqueue_p50_ms": ms(percentile(enq, 50)),
        "enqueue_p99_ms": ms(percentile(enq, 99)),
        "schedule_lag_p99_ms": ms(percentile(lag, 99)),
        "clock": "time.time()" if opts.external else "time.perf_counter()",
        "own_cpu_cores": cpu["own_cpu_cores"],
        "machine_cores": cpu["machine_cores"],
    }


def summary(f: dict[str, Any]) -> str:
    return (
        f"latency {db_label(f)}, {f['worker']} worker: {f['jobs']} jobs at {f['rate']:g}/s "
        f"(achieved {f['achieved_rate']:g}/s) | submit-to-start p50 {f['p50_ms']:.2f} ms, "
        f"p95 {f['p95_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms, max {f['max_ms']:.2f} ms "
        f"(mean {f['mean_ms']:.2f}) | enqueue call p50 {f['enqueue_p50_ms']:.2f} ms, "
        f"p99 {f['enqueue_p99_ms']:.2f} ms | schedule lag p99 {f['schedule_lag_p99_ms']:.2f} ms"
        f" | cpu: this process {f['own_cpu_cores']} cores, machine {f['machine_cores']} cores"
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    (figures,) = run_rounds(opts, lambda url: run(url, opts), summary)
    return finish(figures)


if __name__ == "__main__":
    sys.exit(main())
