"""Workflow overhead: one ad-hoc execution of no-op steps, run by one in-process worker.

    python -m bench.dag --shape fanout --width 1000               # 1000 parallel + 1 join
    python -m bench.dag --shape chain --length 200 --db postgres  # 200 steps in a row
    python -m bench.dag --shape fanout --repeat 5 --profile dag.prof

Timed from just before ``engine.start_execution`` until the transaction that completes
the execution commits. Completion is seen through the database's commit listener (the
``execution.completed`` event of this execution, stamped with ``time.perf_counter()`` in
the listener, right after the commit): no polling, no extra query. The same listener
stamps ``execution.queued`` (the start transaction committed) and ``execution.started``
(the first step was claimed). Before measuring, a small execution of the same shape warms
up the worker and the statement caches (``--warmup-steps 0``: none). Each round runs on a
fresh database; with ``--repeat`` the JSON line has the medians.

Targets: fan-out of 1000 plus a join in at most 1 s; a chain at most 1 ms per step.
"""

from __future__ import annotations

import asyncio
import cProfile
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from bench.apps import app
from bench.common import (
    BenchOptions,
    StatementStats,
    WorkerOptions,
    add_prefetch_option,
    bench_parser,
    build_worker,
    choice_arg,
    combine_rounds,
    count_statements,
    cpu_sample,
    cpu_usage,
    db_figures,
    db_label,
    finish,
    make_settings,
    ms,
    optional_float,
    optional_str,
    prefetch_window,
    print_profile,
    rounded,
    run_rounds,
    shared_options,
)
from conveyor.domain.events import TERMINAL_EXECUTION_EVENTS, Event, EventType
from conveyor.domain.graph import Step
from conveyor.engine.core import Engine
from conveyor.engine.models import ExecutionSpec
from conveyor.runtime import Runtime

Shape = Literal["fanout", "chain"]
SHAPES: tuple[Shape, ...] = ("fanout", "chain")

#: what start_execution emits when the start transaction commits (no EventType member)
EXECUTION_QUEUED = "execution.queued"

#: the targets: seconds for the whole fan-out, seconds per step of a chain
FANOUT_TARGET_S = 1.0
CHAIN_TARGET_PER_STEP_S = 0.001


@dataclass(frozen=True)
class Options(BenchOptions):
    shape: Shape
    width: int
    length: int
    concurrency: int
    prefetch_window_s: float | None
    warmup_steps: int
    repeat: int
    profile: str | None
    count_statements: bool

    @property
    def size(self) -> int:
        """The shape's parameter: the fan-out's width or the chain's length."""
        return self.width if self.shape == "fanout" else self.length


def parse(argv: list[str] | None = None) -> Options:
    parser = bench_parser("python -m bench.dag", __doc__, raw=True)
    parser.add_argument("--shape", choices=SHAPES, default="fanout")
    parser.add_argument("--width", type=int, default=1000, help="parallel steps (fanout)")
    parser.add_argument("--length", type=int, default=200, help="steps in a row (chain)")
    parser.add_argument("--concurrency", type=int, default=4, help="worker slots")
    add_prefetch_option(parser)
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=10,
        help="size of the unmeasured execution run first (0: no warm-up)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds, each on a fresh database")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after (s)")
    parser.add_argument(
        "--profile",
        default=None,
        metavar="FILE",
        help="cProfile the measured part (every round), save the stats to FILE, print the "
        "top entries",
    )
    parser.add_argument(
        "--count-statements",
        action="store_true",
        help="count the SQL statements of the measured part (SQLAlchemy events; a little "
        "overhead) and print the most frequent ones per step",
    )
    ns = parser.parse_args(argv)
    if ns.width < 1 or ns.length < 1 or ns.concurrency < 1 or ns.repeat < 1:
        parser.error("--width, --length, --concurrency and --repeat must be positive")
    if ns.warmup_steps < 0:
        parser.error("--warmup-steps must not be negative")
    return Options(
        **shared_options(ns),
        shape=choice_arg(str(ns.shape), SHAPES, "shape"),
        width=int(ns.width),
        length=int(ns.length),
        concurrency=int(ns.concurrency),
        prefetch_window_s=optional_float(ns.prefetch_window),
        warmup_steps=int(ns.warmup_steps),
        repeat=int(ns.repeat),
        profile=optional_str(ns.profile),
        count_statements=bool(ns.count_statements),
    )


# -- the graphs ---------------------------------------------------------------------------


def fanout_steps(width: int) -> list[Step]:
    """``width`` independent no-op steps, then a join that depends on all of them."""
    digits = len(str(width - 1))
    parallel = [Step(f"s{i:0{digits}d}", "noop") for i in range(width)]
    return [*parallel, Step("join", "noop", depends_on=[s.id for s in parallel])]


def chain_steps(length: int) -> list[Step]:
    """``length`` no-op steps, each depending on the one before."""
    digits = len(str(length - 1))
    ids = [f"s{i:0{digits}d}" for i in range(length)]
    return [Step(ids[i], "noop", depends_on=ids[i - 1 : i]) for i in range(length)]


def steps_for(shape: Shape, size: int) -> list[Step]:
    return fanout_steps(size) if shape == "fanout" else chain_steps(size)


# -- watching executions through the commit listener -------------------------------------


@dataclass
class ExecutionWatcher:
    """Stamps (``time.perf_counter()``) the lifecycle events of executions as they commit.

    A commit listener on the engine's database: it sees every transaction this process
    commits (the worker's claims and settles included) right after the commit, on the
    event loop. It only looks at the events it is handed; it runs no query.
    """

    stamps: dict[str, dict[str, float]] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)
    _waiters: dict[str, asyncio.Future[str]] = field(default_factory=dict)

    def __call__(self, recorded: list[Event]) -> None:
        now = time.perf_counter()
        for event in recorded:
            execution_id = event.execution_id
            if execution_id is None or not event.type.startswith("execution."):
                continue
            self.stamps.setdefault(execution_id, {}).setdefault(event.type, now)
            if event.type in TERMINAL_EXECUTION_EVENTS:
                self.outcomes[execution_id] = event.type
                waiter = self._waiters.pop(execution_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event.type)

    async def wait(self, execution_id: str, timeout_s: float) -> str:
        """The terminal event type of the execution (at once if it already ended)."""
        if execution_id in self.outcomes:
            return self.outcomes[execution_id]
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[execution_id] = waiter
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        finally:
            self._waiters.pop(execution_id, None)

    def at(self, execution_id: str, event_type: str) -> float | None:
        return self.stamps.get(execution_id, {}).get(event_type)


@dataclass
class Timed:
    execution_id: str
    outcome: str
    total_s: float  # start_execution called -> the execution's terminal event committed
    start_call_s: float  # how long start_execution took to return
    queued_s: float | None  # -> the start transaction committed
    first_claim_s: float | None  # -> the first step was claimed (execution.started)


async def run_execution(
    engine: Engine, watcher: ExecutionWatcher, steps: list[Step], timeout_s: float
) -> Timed:
    spec = ExecutionSpec(steps=steps)
    started = time.perf_counter()
    result = await engine.start_execution(spec, owner="bench")
    returned = time.perf_counter()
    execution_id = result.execution.id
    outcome = await watcher.wait(execution_id, timeout_s)
    finished = watcher.at(execution_id, outcome)
    assert finished is not None
    queued = watcher.at(execution_id, EXECUTION_QUEUED)
    first = watcher.at(execution_id, EventType.EXECUTION_STARTED)
    return Timed(
        execution_id,
        outcome,
        finished - started,
        returned - started,
        None if queued is None else queued - started,
        None if first is None else first - started,
    )


# -- one round ----------------------------------------------------------------------------


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else ms(seconds)


async def run(url: str, opts: Options, profiler: cProfile.Profile | None) -> dict[str, Any]:
    runtime = Runtime(app, make_settings(url, opts.synchronous))
    engine = await runtime.open(upgrade=False)
    watcher = ExecutionWatcher()
    engine.db.add_commit_listener(watcher)
    counted = build_worker(
        runtime,
        WorkerOptions(
            concurrency=opts.concurrency,
            prefetch_window_s=opts.prefetch_window_s,
            kind="embedded",
        ),
    )
    worker = counted.worker
    steps = steps_for(opts.shape, opts.size)
    try:
        await worker.start()
        if opts.warmup_steps:
            warm = await run_execution(
                engine, watcher, steps_for(opts.shape, opts.warmup_steps), opts.timeout_s
            )
            if warm.outcome != EventType.EXECUTION_COMPLETED:
                raise RuntimeError(f"the warm-up execution ended with {warm.outcome}")
        await asyncio.sleep(0.2)  # let the worker go idle again
        finished_before = worker.finished
        statements = StatementStats()
        stop_counting = count_statements(engine.db, statements) if opts.count_statements else None
        counted.loop_writes.reset()
        counted.heartbeat_writes.reset()
        cpu_before = cpu_sample()
        if profiler is not None:
            profiler.enable()
        timed = await run_execution(engine, watcher, steps, opts.timeout_s)
        if profiler is not None:
            profiler.disable()
        cpu = cpu_usage(cpu_before, cpu_sample())
        if stop_counting is not None:
            stop_counting()
        loop_commits = counted.loop_writes.commits
        heartbeat_commits = counted.heartbeat_writes.commits
        write_s = counted.loop_writes.seconds
        ran = worker.finished - finished_before
        execution = await engine.get_execution(timed.execution_id)
    finally:
        await worker.stop()
        engine.db.remove_commit_listener(watcher)
        await runtime.close()

    n_steps = len(steps)
    if opts.count_statements:
        print_statements(statements, n_steps)
    commits = loop_commits + heartbeat_commits
    per_step = timed.total_s / opts.size
    target_s = FANOUT_TARGET_S if opts.shape == "fanout" else CHAIN_TARGET_PER_STEP_S * opts.size
    ok = (
        timed.outcome == EventType.EXECUTION_COMPLETED
        and execution.progress.completed == n_steps
        and ran == n_steps
    )
    return {
        "bench": "dag",
        "shape": opts.shape,
        "width": opts.width if opts.shape == "fanout" else None,
        "length": opts.length if opts.shape == "chain" else None,
        "steps": n_steps,
        **db_figures(opts),
        "concurrency": opts.concurrency,
        "prefetch_window_s": prefetch_window(opts.prefetch_window_s),
        "warmup_steps": opts.warmup_steps,
        "total_s": rounded(timed.total_s, 4),
        # the chain's figure: total / length; for a fan-out: total / width
        "per_step_ms": _ms(per_step),
        "per_job_ms": _ms(timed.total_s / n_steps),
        "start_call_ms": _ms(timed.start_call_s),
        "queued_ms": _ms(timed.queued_s),
        "first_claim_ms": _ms(timed.first_claim_s),
        "steps_per_s": round(n_steps / timed.total_s),
        "commits": commits,
        "loop_commits": loop_commits,
        "heartbeat_commits": heartbeat_commits,
        "commits_per_step": rounded(commits / n_steps, 3),
        "write_time_share": rounded(write_s / timed.total_s if timed.total_s else 0.0),
        "statements_per_step": (
            rounded(statements.statements / n_steps, 2) if opts.count_statements else None
        ),
        "own_cpu_cores": cpu["own_cpu_cores"],
        "machine_cores": cpu["machine_cores"],
        "outcome": timed.outcome,
        "completed_steps": execution.progress.completed,
        "target_s": rounded(target_s, 3),
        "met": timed.total_s <= target_s,
        "ok": ok,
    }


# -- reporting ----------------------------------------------------------------------------


def describe(f: dict[str, Any]) -> str:
    if f["shape"] == "fanout":
        return f"fan-out {f['width']} + join"
    return f"chain of {f['length']}"


def summary(f: dict[str, Any]) -> str:
    target = (
        f"target {f['target_s']:g} s"
        if f["shape"] == "fanout"
        else f"target {CHAIN_TARGET_PER_STEP_S * 1000:g} ms/step"
    )
    return (
        f"dag {db_label(f)}: {describe(f)} ({f['steps']} steps), concurrency {f['concurrency']} | "
        f"total {f['total_s'] * 1000:.1f} ms ({f['per_step_ms']:.3f} ms/step, "
        f"{f['steps_per_s']:,} steps/s) -> {'MET' if f['met'] else 'MISSED'} ({target}) | "
        f"start_execution returned at {f['start_call_ms']:.1f} ms, committed at "
        f"{f['queued_ms']} ms, first claim at {f['first_claim_ms']} ms | "
        f"{f['commits']} commits ({f['commits_per_step']:.3f}/step, write share "
        f"{f['write_time_share']:.2f}) | cpu: this process {f['own_cpu_cores']} cores, "
        f"machine {f['machine_cores']} | {f['outcome']}, {f['completed_steps']}/{f['steps']}"
    )


_MEDIAN_FIELDS = (
    "total_s",
    "per_step_ms",
    "per_job_ms",
    "start_call_ms",
    "queued_ms",
    "first_claim_ms",
    "steps_per_s",
    "commits",
    "commits_per_step",
    "write_time_share",
)


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds, plus every round's total."""
    combined = combine_rounds(rounds, _MEDIAN_FIELDS, ("total_s", "machine_cores"))
    if len(rounds) > 1:
        combined["total_s_best"] = min(r["total_s"] for r in rounds)
        combined["met"] = combined["total_s"] <= combined["target_s"]
    return combined


def print_statements(stats: StatementStats, n_steps: int) -> None:
    """The measured part's statements (this process's engine only; not the heartbeat)."""
    print(
        f"statements: {stats.statements} ({stats.statements / n_steps:.2f}/step), "
        f"commits {stats.commits}, pool checkouts {stats.checkouts}",
        file=sys.stderr,
    )
    for statement, count in stats.top(20):
        print(f"  {count:6d} ({count / n_steps:6.2f}/step)  {statement}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    profiler = cProfile.Profile() if opts.profile else None
    rounds = run_rounds(opts, lambda url: run(url, opts, profiler), summary, opts.repeat)
    combined = combine(rounds)
    if len(rounds) > 1:
        print(
            f"median of {len(rounds)} rounds: {describe(combined)} in "
            f"{combined['total_s'] * 1000:.1f} ms ({combined['per_step_ms']:.3f} ms/step; "
            f"best {combined['total_s_best'] * 1000:.1f} ms, all "
            f"{[round(t * 1000, 1) for t in combined['total_s_all']]} ms) -> "
            f"{'MET' if combined['met'] else 'MISSED'}",
            flush=True,
        )
    if profiler is not None and opts.profile:
        profiler.dump_stats(opts.profile)
        print_profile(profiler, 50)
    return finish(combined)


if __name__ == "__main__":
    sys.exit(main())
