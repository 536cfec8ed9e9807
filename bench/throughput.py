"""Throughput: bulk-enqueue N no-op jobs, then drain them with one worker.

    python -m bench.throughput --db sqlite --jobs 10000 --concurrency 4
    python -m bench.throughput --db sqlite --sqlite-synchronous NORMAL
    python -m bench.throughput --db postgres --prefetch-window 0
    python -m bench.throughput --db postgres --processes 2

Enqueue: ``engine.enqueue_many`` in chunks of 1000, reported as jobs/s. Drain: one worker
in this process (or ``--processes N`` worker processes), timed from its start until all N
jobs are completed; the in-process worker's ``finished`` counter is polled (no database
polling), worker processes are watched with a count of unfinished rows every
``--poll-ms`` (at least 20 ms). Commits per job: write transactions during the drain
(the claim/settle loop plus heartbeats) divided by N.
"""

from __future__ import annotations

import asyncio
import cProfile
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench.apps import APP_SPEC, app
from bench.common import (
    BenchOptions,
    ChildConfig,
    WorkerOptions,
    WorkerProcesses,
    add_prefetch_option,
    bench_parser,
    build_worker,
    combine_rounds,
    count_unfinished,
    cpu_sample,
    cpu_usage,
    db_figures,
    db_label,
    finish,
    make_settings,
    optional_float,
    optional_str,
    prefetch_window,
    print_profile,
    rounded,
    run_rounds,
    shared_options,
    status_counts,
)
from conveyor.engine.models import JobSpec
from conveyor.runtime import Runtime
from conveyor.store.database import Database

CHUNK = 1000


@dataclass(frozen=True)
class Options(BenchOptions):
    jobs: int
    concurrency: int
    prefetch_window_s: float | None
    processes: int
    poll_ms: float
    profile: str | None
    repeat: int
    analyze: bool


@dataclass
class Drain:
    seconds: float
    finished: int
    commits: int
    heartbeat_commits: int
    write_s: float
    cpu: dict[str, float | None]


def parse(argv: list[str] | None = None) -> Options:
    parser = bench_parser("python -m bench.throughput", __doc__, raw=False)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4, help="slots per worker")
    add_prefetch_option(parser)
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help="run N worker processes instead of one worker in this process",
    )
    parser.add_argument(
        "--poll-ms", type=float, default=5.0, help="how often completion is checked"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after (s)")
    parser.add_argument(
        "--profile",
        default=None,
        metavar="FILE",
        help="cProfile the in-process drain, save the stats to FILE, print the top entries",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds, each on a fresh database; the JSON line then has the medians",
    )
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="run ANALYZE on the database after enqueuing (what autovacuum would have done "
        "on a long-running database; without it the planner sees a table it never analyzed)",
    )
    ns = parser.parse_args(argv)
    if ns.jobs < 1 or ns.concurrency < 1 or ns.processes < 0 or ns.repeat < 1:
        parser.error("--jobs, --concurrency and --repeat must be positive")
    if ns.profile and ns.processes:
        parser.error("--profile profiles the in-process worker: not with --processes")
    return Options(
        **shared_options(ns),
        jobs=int(ns.jobs),
        concurrency=int(ns.concurrency),
        prefetch_window_s=optional_float(ns.prefetch_window),
        processes=int(ns.processes),
        poll_ms=float(ns.poll_ms),
        profile=optional_str(ns.profile),
        repeat=int(ns.repeat),
        analyze=bool(ns.analyze),
    )


async def enqueue_all(runtime: Runtime, n: int) -> float:
    """Enqueue ``n`` no-op jobs in chunks; return the seconds it took."""
    engine = runtime.engine
    started = time.perf_counter()
    for offset in range(0, n, CHUNK):
        count = min(CHUNK, n - offset)
        await engine.enqueue_many([JobSpec(task="noop") for _ in range(count)], owner="bench")
    return time.perf_counter() - started


async def drain_in_process(runtime: Runtime, opts: Options) -> Drain:
    counted = build_worker(
        runtime,
        WorkerOptions(concurrency=opts.concurrency, prefetch_window_s=opts.prefetch_window_s),
    )
    worker = counted.worker
    poll_s = opts.poll_ms / 1000
    profiler = cProfile.Profile() if opts.profile else None
    counted.loop_writes.reset()
    cpu_before = cpu_sample()
    started = time.perf_counter()
    deadline = started + opts.timeout_s
    if profiler is not None:
        profiler.enable()
    await worker.start()
    # polling the worker's own counter: no database query, and no hook into the product
    while worker.finished < opts.jobs and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(poll_s)
    elapsed = time.perf_counter() - started
    cpu = cpu_usage(cpu_before, cpu_sample())
    if profiler is not None:
        profiler.disable()
    drain = Drain(
        elapsed,
        worker.finished,
        counted.loop_writes.commits,
        counted.heartbeat_writes.commits,
        counted.loop_writes.seconds,
        cpu,
    )
    await worker.stop()
    if profiler is not None and opts.profile:
        profiler.dump_stats(opts.profile)
        print_profile(profiler, 40)
    return drain


async def drain_in_processes(runtime: Runtime, opts: Options) -> Drain:
    config = ChildConfig(
        url=runtime.settings.database_url,
        synchronous=opts.synchronous,
        app=APP_SPEC,
        worker=WorkerOptions(
            concurrency=opts.concurrency, prefetch_window_s=opts.prefetch_window_s
        ),
    )
    group = WorkerProcesses(config, opts.processes)
    group.start()
    try:
        await group.wait_ready()
        db = runtime.engine.db
        poll_s = max(opts.poll_ms, 20.0) / 1000  # each check is a query: not too often
        cpu_before = cpu_sample()
        started = time.perf_counter()
        deadline = started + opts.timeout_s
        group.go()
        remaining = opts.jobs
        while remaining > 0 and time.perf_counter() < deadline:
            await asyncio.sleep(poll_s)
            remaining = await count_unfinished(db)
        elapsed = time.perf_counter() - started
        cpu = cpu_usage(cpu_before, cpu_sample())
    finally:
        reports = await group.stop()
    errors = [r.error for r in reports if r.error]
    if errors:
        raise RuntimeError(f"worker process failed: {errors[0]}")
    return Drain(
        elapsed,
        sum(r.finished for r in reports),
        sum(r.commits for r in reports),
        sum(r.heartbeat_commits for r in reports),
        sum(r.write_s for r in reports),
        cpu,
    )


async def run(url: str, opts: Options) -> dict[str, Any]:
    runtime = Runtime(app, make_settings(url, opts.synchronous))
    await runtime.open(upgrade=False)
    try:
        enqueue_s = await enqueue_all(runtime, opts.jobs)
        if opts.analyze:
            await analyze(runtime.engine.db)
        if opts.processes:
            drain = await drain_in_processes(runtime, opts)
        else:
            drain = await drain_in_process(runtime, opts)
        counts = await status_counts(runtime.engine.db)
    finally:
        await runtime.close()
    commits = drain.commits + drain.heartbeat_commits
    return {
        "bench": "throughput",
        **db_figures(opts),
        "jobs": opts.jobs,
        "concurrency": opts.concurrency,
        "processes": opts.processes,
        "prefetch_window_s": prefetch_window(opts.prefetch_window_s),
        "enqueue_s": rounded(enqueue_s),
        "enqueue_jobs_per_s": round(opts.jobs / enqueue_s),
        "drain_s": rounded(drain.seconds),
        "drain_jobs_per_s": round(opts.jobs / drain.seconds),
        "commits": commits,
        "loop_commits": drain.commits,
        "heartbeat_commits": drain.heartbeat_commits,
        "commits_per_job": rounded(commits / opts.jobs, 4),
        "jobs_per_commit": rounded(opts.jobs / max(drain.commits, 1), 2),
        "write_time_share": rounded(drain.write_s / drain.seconds if drain.seconds else 0.0),
        "drain_own_cpu_cores": drain.cpu["own_cpu_cores"],
        "drain_machine_cores": drain.cpu["machine_cores"],
        "completed": counts.get("completed", 0),
        "statuses": counts,
        "ok": counts.get("completed", 0) == opts.jobs,
        "analyzed": opts.analyze,
    }


async def analyze(db: Database) -> None:
    """Refresh the planner's statistics (a maintenance step, outside the product)."""
    await db.write(lambda tx: tx.conn.exec_driver_sql("ANALYZE"))


def summary(f: dict[str, Any]) -> str:
    workers = f"{f['processes']} processes" if f["processes"] else "1 worker in-process"
    return (
        f"throughput {db_label(f)}: {f['jobs']} jobs, concurrency {f['concurrency']}, {workers}, "
        f"prefetch window {f['prefetch_window_s']}s{', analyzed' if f['analyzed'] else ''} | "
        f"enqueue {f['enqueue_jobs_per_s']:,} jobs/s ({f['enqueue_s']:.2f}s) | "
        f"drain {f['drain_jobs_per_s']:,} jobs/s ({f['drain_s']:.2f}s) | "
        f"{f['commits_per_job']:.4f} commits/job ({f['loop_commits']} loop + "
        f"{f['heartbeat_commits']} heartbeat; {f['jobs_per_commit']} jobs/commit) | "
        f"completed {f['completed']}/{f['jobs']} | cpu during drain: this process "
        f"{f['drain_own_cpu_cores']} cores, machine {f['drain_machine_cores']} cores"
    )


_MEDIAN_FIELDS = (
    "enqueue_s",
    "enqueue_jobs_per_s",
    "drain_s",
    "drain_jobs_per_s",
    "commits_per_job",
    "jobs_per_commit",
    "write_time_share",
)


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One set of figures for several rounds: medians, plus every round's rates."""
    combined = combine_rounds(
        rounds, _MEDIAN_FIELDS, ("drain_jobs_per_s", "enqueue_jobs_per_s", "drain_machine_cores")
    )
    if len(rounds) > 1:
        combined["commits"] = round(statistics.median(r["commits"] for r in rounds))
        combined["drain_jobs_per_s_best"] = max(r["drain_jobs_per_s"] for r in rounds)
    return combined


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    rounds = run_rounds(opts, lambda url: run(url, opts), summary, opts.repeat)
    combined = combine(rounds)
    if len(rounds) > 1:
        print(
            f"median of {len(rounds)} rounds: enqueue {combined['enqueue_jobs_per_s']:,.0f} "
            f"jobs/s | drain {combined['drain_jobs_per_s']:,.0f} jobs/s "
            f"(best {combined['drain_jobs_per_s_best']:,}, "
            f"all {combined['drain_jobs_per_s_all']}) | "
            f"{combined['commits_per_job']:.4f} commits/job",
            flush=True,
        )
    return finish(combined)


if __name__ == "__main__":
    sys.exit(main())
