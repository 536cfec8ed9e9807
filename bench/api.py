"""The HTTP API: a real ``conveyor serve`` process, measured from outside.

    python -m bench.api                                  # SQLite, 2000 requests, 8 clients
    python -m bench.api --db postgres --requests 5000 --concurrency 16
    python -m bench.api --latency-jobs 1000 --latency-rate 50

One server process (``conveyor serve --app bench.apps:app --workers 4``: the API plus an
embedded worker with 4 slots) on a throwaway database, logged into as its first admin
(``CONVEYOR_ADMIN_PASSWORD``; tokens signed with ``CONVEYOR_JWT_SECRET``). Then:

a. submit: ``--requests`` ``POST /api/v1/jobs`` (a no-op task) from ``--concurrency``
   clients, each with its own keep-alive connection; submissions/s is requests over the
   wall time from the first request to the last response. The embedded worker runs the
   jobs meanwhile, as it would in production; the time it needs to finish the backlog
   after the last response is reported too.
b. read: as many ``GET /api/v1/jobs/{id}`` of the jobs just submitted, same clients.
c. latency: ``stamp`` jobs submitted one at a time on a fixed grid of ``--latency-rate``
   per second to the idle worker; the task returns ``time.time()`` when it starts, and
   submit-to-start latency is that minus ``time.time()`` just before the POST (same
   machine, same clock). Results are read back after the last submission.

A few unmeasured requests warm the server up first. CPU: this process (the clients), the
server process (from /proc/<pid>/stat) and the whole machine, per phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx

from bench.common import (
    API,
    CONVEYOR,
    BenchOptions,
    CpuSample,
    Server,
    bench_parser,
    combine_rounds,
    conveyor_serve,
    cpu_sample,
    cpu_usage,
    db_figures,
    db_label,
    finish,
    login,
    ms,
    optional_str,
    percentile,
    print_profile,
    rounded,
    run_rounds,
    shared_options,
    wait_ready,
)


@dataclass(frozen=True)
class Options(BenchOptions):
    requests: int
    concurrency: int
    server_workers: int
    latency_jobs: int
    latency_rate: float
    latency_warmup: int
    warmup: int
    repeat: int
    server_profile: str | None


def parse(argv: list[str] | None = None) -> Options:
    parser = bench_parser("python -m bench.api", __doc__, raw=True)
    parser.add_argument("--requests", type=int, default=2000, help="requests per phase (a, b)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients")
    parser.add_argument(
        "--server-workers",
        type=int,
        default=4,
        help="the server's embedded worker slots (0: an API-only server; phase c is skipped)",
    )
    parser.add_argument("--latency-jobs", type=int, default=500, help="measured in phase c")
    parser.add_argument("--latency-rate", type=float, default=50.0, help="submissions/s (c)")
    parser.add_argument("--latency-warmup", type=int, default=20, help="not counted (c)")
    parser.add_argument("--warmup", type=int, default=100, help="requests before measuring")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds, each with a fresh database and server"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after (s)")
    parser.add_argument(
        "--server-profile",
        default=None,
        metavar="FILE",
        help="run the server under cProfile (slower: figures are not comparable), save the "
        "stats of its whole life to FILE and print the top entries",
    )
    ns = parser.parse_args(argv)
    if ns.requests < 1 or ns.concurrency < 1 or ns.repeat < 1 or ns.latency_jobs < 1:
        parser.error("--requests, --concurrency, --latency-jobs and --repeat must be positive")
    if ns.latency_rate <= 0 or ns.server_workers < 0 or ns.warmup < 0 or ns.latency_warmup < 0:
        parser.error("--latency-rate must be positive; --server-workers, --warmup not negative")
    if ns.server_profile and ns.repeat > 1:
        parser.error("--server-profile profiles one round: not with --repeat")
    return Options(
        **shared_options(ns),
        requests=int(ns.requests),
        concurrency=int(ns.concurrency),
        server_workers=int(ns.server_workers),
        latency_jobs=int(ns.latency_jobs),
        latency_rate=float(ns.latency_rate),
        latency_warmup=int(ns.latency_warmup),
        warmup=int(ns.warmup),
        repeat=int(ns.repeat),
        server_profile=optional_str(ns.server_profile),
    )


# -- the server process ---------------------------------------------------------------------


def running_server(url: str, opts: Options) -> contextlib.AbstractContextManager[Server]:
    launcher = [CONVEYOR]
    if opts.server_profile:
        # cProfile.run writes the stats when main() returns or raises SystemExit
        profiled = (
            "import cProfile, sys; from conveyor.cli.main import main; "
            "sys.argv = ['conveyor', *sys.argv[1:]]; "
            f"cProfile.run('main()', {str(Path(opts.server_profile).resolve())!r})"
        )
        launcher = [sys.executable, "-c", profiled]
    return conveyor_serve(url, opts.synchronous, workers=opts.server_workers, launcher=launcher)


@contextlib.asynccontextmanager
async def clients(server: Server, token: str, n: int) -> AsyncIterator[list[httpx.AsyncClient]]:
    """``n`` clients, each with one keep-alive connection of its own."""
    async with contextlib.AsyncExitStack() as stack:
        made = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=server.base_url,
                    headers={"Authorization": f"Bearer {token}"},
                    limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                    timeout=30.0,
                )
            )
            for _ in range(n)
        ]
        yield made


# -- phases ---------------------------------------------------------------------------------


@dataclass
class Phase:
    """Requests from several clients: how many, how long, how each went."""

    name: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # per request, seconds
    errors: int = 0
    first_error: str | None = None
    results: list[Any] = field(default_factory=list)
    cpu: dict[str, float | None] = field(default_factory=dict)
    server_cpu_cores: float | None = None

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def figures(self, prefix: str) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            f"{prefix}_requests": len(lat),
            f"{prefix}_s": rounded(self.seconds),
            f"{prefix}_per_s": round(self.rate),
            f"{prefix}_p50_ms": ms(percentile(lat, 50)),
            f"{prefix}_p99_ms": ms(percentile(lat, 99)),
            f"{prefix}_max_ms": ms(lat[-1]) if lat else None,
            f"{prefix}_errors": self.errors,
            f"{prefix}_client_cpu_cores": self.cpu.get("own_cpu_cores"),
            f"{prefix}_server_cpu_cores": self.server_cpu_cores,
            f"{prefix}_machine_cores": self.cpu.get("machine_cores"),
        }


Request = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


@dataclass
class CpuWatch:
    """CPU of this process, the machine and the server between two points."""

    server: Server
    before: CpuSample = field(default_factory=cpu_sample)
    server_before: float | None = None

    def __post_init__(self) -> None:
        self.server_before = self.server.cpu_s()

    def stop(self, phase: Phase) -> None:
        after = cpu_sample()
        phase.cpu = cpu_usage(self.before, after)
        server_after = self.server.cpu_s()
        wall = max(after.wall - self.before.wall, 1e-9)
        if self.server_before is not None and server_after is not None:
            phase.server_cpu_cores = rounded((server_after - self.server_before) / wall, 2)


async def hammer(
    name: str,
    server: Server,
    pool: Sequence[httpx.AsyncClient],
    n: int,
    request: Request,
    expect: int,
    keep: Callable[[httpx.Response], Any] | None = None,
) -> Phase:
    """``n`` requests, each client sending its next one as soon as the last returned."""
    phase = Phase(name)
    counter = itertools.count()
    results: dict[int, Any] = {}

    async def client_loop(client: httpx.AsyncClient) -> None:
        while (i := next(counter)) < n:
            sent = time.perf_counter()
            response = await request(client, i)
            phase.latencies.append(time.perf_counter() - sent)
            if response.status_code != expect:
                phase.errors += 1
                phase.first_error = phase.first_error or (
                    f"{response.status_code}: {response.text[:300]}"
                )
            elif keep is not None:
                results[i] = keep(response)

    watch = CpuWatch(server)
    started = time.perf_counter()
    await asyncio.gather(*(client_loop(c) for c in pool))
    phase.seconds = time.perf_counter() - started
    watch.stop(phase)
    phase.results = [results[i] for i in sorted(results)]
    return phase


def job_id(response: httpx.Response) -> str:
    found: str = response.json()["id"]
    return found


async def wait_idle(client: httpx.AsyncClient, timeout_s: float) -> float:
    """Wait until the default queue has nothing queued or running; return the wait."""
    started = time.perf_counter()
    deadline = started + timeout_s
    while True:
        response = await client.get(f"{API}/queues/default")
        if response.status_code == 200:
            counts = response.json()["counts"]
            if counts["queued"] + counts["active"] + counts["delayed"] == 0:
                return time.perf_counter() - started
        elif response.status_code != 404:  # 404: no job was ever queued
            response.raise_for_status()
        else:
            return time.perf_counter() - started
        if time.perf_counter() > deadline:
            raise TimeoutError("the server's worker did not finish the queued jobs")
        await asyncio.sleep(0.05)


# -- c: submit-to-start latency ---------------------------------------------------------------


@dataclass
class Submitted:
    wall: float  # time.time() just before the POST
    post_s: float = 0.0  # how long the POST took
    lag_s: float = 0.0  # how late it went out against its slot
    job_id: str | None = None
    error: str | None = None


async def submit_on_grid(
    client: httpx.AsyncClient, seqs: Sequence[int], rate: float
) -> dict[int, Submitted]:
    """POST one ``stamp`` job per slot of a fixed grid (``loop.call_at``: no drift)."""
    loop = asyncio.get_running_loop()
    submitted: dict[int, Submitted] = {}
    tasks: list[asyncio.Task[None]] = []
    all_fired: asyncio.Future[None] = loop.create_future()

    async def submit(seq: int, slot: float) -> None:
        lag = loop.time() - slot
        sub = Submitted(time.time(), lag_s=lag)
        submitted[seq] = sub
        sent = time.perf_counter()
        try:
            response = await client.post(
                f"{API}/jobs", json={"task": "stamp", "input": {"seq": seq}}
            )
        except httpx.HTTPError as exc:
            sub.error = f"{type(exc).__name__}: {exc}"
            return
        sub.post_s = time.perf_counter() - sent
        if response.status_code == 202:
            sub.job_id = job_id(response)
        else:
            sub.error = f"{response.status_code}: {response.text[:300]}"

    def fire(seq: int, slot: float, last: bool) -> None:
        tasks.append(loop.create_task(submit(seq, slot)))
        if last and not all_fired.done():
            all_fired.set_result(None)

    if not seqs:
        return submitted
    origin = loop.time() + 0.05
    for k, seq in enumerate(seqs):
        loop.call_at(origin + k / rate, fire, seq, origin + k / rate, k == len(seqs) - 1)
    await all_fired
    await asyncio.gather(*tasks)
    return submitted


async def read_starts(
    pool: Sequence[httpx.AsyncClient], submitted: dict[int, Submitted], timeout_s: float
) -> dict[int, float]:
    """The ``time.time()`` each stamp job returned (waiting for any still unfinished)."""
    pending = {seq: s.job_id for seq, s in submitted.items() if s.job_id is not None}
    starts: dict[int, float] = {}
    deadline = time.monotonic() + timeout_s
    while pending:
        await asyncio.gather(
            *(
                _read_some(c, list(pending.items())[i :: len(pool)], starts)
                for i, c in enumerate(pool)
            )
        )
        for seq in starts:
            pending.pop(seq, None)
        if pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} stamp jobs did not finish in time")
            await asyncio.sleep(0.1)
    return starts


async def _read_some(
    client: httpx.AsyncClient, wanted: list[tuple[int, str]], starts: dict[int, float]
) -> None:
    for seq, found in wanted:
        response = await client.get(f"{API}/jobs/{found}")
        response.raise_for_status()
        body = response.json()
        if body["status"] == "completed":
            starts[seq] = float(body["result"])
        elif body["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"stamp job {found} ended {body['status']}")


async def latency_phase(
    server: Server, token: str, opts: Options, pool: Sequence[httpx.AsyncClient]
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    async with httpx.AsyncClient(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {token}"},
        limits=limits,
        timeout=30.0,
    ) as client:
        warmup = list(range(opts.latency_warmup))
        measured = list(range(opts.latency_warmup, opts.latency_warmup + opts.latency_jobs))
        if warmup:
            await submit_on_grid(client, warmup, opts.latency_rate)
            await wait_idle(client, opts.timeout_s)
        await asyncio.sleep(1.0)  # let the worker go idle (and back off its polling)
        phase = Phase("latency")
        watch = CpuWatch(server)
        started = time.perf_counter()
        submitted = await submit_on_grid(client, measured, opts.latency_rate)
        phase.seconds = time.perf_counter() - started
        watch.stop(phase)
    errors = [s.error for s in submitted.values() if s.error]
    starts = await read_starts(pool, submitted, opts.timeout_s)
    lat = sorted(starts[s] - submitted[s].wall for s in measured if s in starts)
    posts = sorted(submitted[s].post_s for s in measured if submitted[s].job_id)
    lag = sorted(submitted[s].lag_s for s in measured)
    span = submitted[measured[-1]].wall - submitted[measured[0]].wall
    return {
        "latency_jobs": opts.latency_jobs,
        "latency_rate": opts.latency_rate,
        "latency_achieved_rate": round((len(measured) - 1) / span, 1) if span > 0 else None,
        "latency_p50_ms": ms(percentile(lat, 50)),
        "latency_p95_ms": ms(percentile(lat, 95)),
        "latency_p99_ms": ms(percentile(lat, 99)),
        "latency_max_ms": ms(lat[-1]) if lat else None,
        "latency_mean_ms": ms(statistics.fmean(lat)) if lat else None,
        "latency_min_ms": ms(lat[0]) if lat else None,
        "latency_post_p50_ms": ms(percentile(posts, 50)),
        "latency_post_p99_ms": ms(percentile(posts, 99)),
        "latency_schedule_lag_p99_ms": ms(percentile(lag, 99)),
        "latency_errors": len(errors),
        "latency_first_error": errors[0] if errors else None,
        "latency_client_cpu_cores": phase.cpu.get("own_cpu_cores"),
        "latency_server_cpu_cores": phase.server_cpu_cores,
        "latency_machine_cores": phase.cpu.get("machine_cores"),
        "latency_clock": "time.time()",
    }


# -- one round --------------------------------------------------------------------------------


async def run(url: str, opts: Options) -> dict[str, Any]:
    with running_server(url, opts) as server:
        started = time.perf_counter()
        await wait_ready(server)
        ready_s = time.perf_counter() - started
        token = await login(server)

        async def submit(client: httpx.AsyncClient, _i: int) -> httpx.Response:
            return await client.post(f"{API}/jobs", json={"task": "noop"})

        async with clients(server, token, opts.concurrency) as pool:
            if opts.warmup:
                warm = await hammer("warmup", server, pool, opts.warmup, submit, 202, job_id)
                warm_ids: list[str] = warm.results
                if not warm_ids:
                    raise RuntimeError(f"no warm-up submission succeeded: {warm.first_error}")

                async def read_warm(client: httpx.AsyncClient, i: int) -> httpx.Response:
                    return await client.get(f"{API}/jobs/{warm_ids[i % len(warm_ids)]}")

                await hammer("warmup", server, pool, opts.warmup, read_warm, 200)
                if opts.server_workers:
                    await wait_idle(pool[0], opts.timeout_s)

            submits = await hammer("submit", server, pool, opts.requests, submit, 202, job_id)
            backlog_s = await wait_idle(pool[0], opts.timeout_s) if opts.server_workers else None
            ids: list[str] = submits.results
            if not ids:
                raise RuntimeError(f"no submission succeeded: {submits.first_error}")

            async def read(client: httpx.AsyncClient, i: int) -> httpx.Response:
                return await client.get(f"{API}/jobs/{ids[i % len(ids)]}")

            reads = await hammer("read", server, pool, opts.requests, read, 200)
            latency = (
                await latency_phase(server, token, opts, pool)
                if opts.server_workers
                else {"latency_jobs": 0, "latency_errors": 0}
            )
        if server.process.poll() is not None:
            raise RuntimeError(f"the server died:\n{server.log_tail()}")

    figures: dict[str, Any] = {
        "bench": "api",
        **db_figures(opts),
        "concurrency": opts.concurrency,
        "server_workers": opts.server_workers,
        "server_ready_s": rounded(ready_s, 2),
        **submits.figures("submit"),
        "submit_backlog_s": None if backlog_s is None else rounded(backlog_s),
        "submit_first_error": submits.first_error,
        **reads.figures("read"),
        "read_first_error": reads.first_error,
        **latency,
    }
    figures["ok"] = submits.errors == 0 and reads.errors == 0 and latency["latency_errors"] == 0
    return figures


# -- reporting -------------------------------------------------------------------------------


def summary(f: dict[str, Any]) -> str:
    backlog = (
        "no worker: the jobs stay queued"
        if f["submit_backlog_s"] is None
        else f"backlog done {f['submit_backlog_s']:.2f}s after"
    )
    lines = [
        f"api {db_label(f)}, one server process ({f['server_workers']} embedded worker slots), "
        f"{f['concurrency']} clients:",
        f"  a. submit  POST /jobs      {f['submit_per_s']:,} req/s ({f['submit_requests']} in "
        f"{f['submit_s']:.2f}s; p50 {f['submit_p50_ms']:.2f} ms, p99 {f['submit_p99_ms']:.2f} "
        f"ms; {f['submit_errors']} errors; {backlog}) | cpu: server "
        f"{f['submit_server_cpu_cores']}, clients {f['submit_client_cpu_cores']}, machine "
        f"{f['submit_machine_cores']} cores",
        f"  b. read    GET /jobs/{{id}}  {f['read_per_s']:,} req/s ({f['read_requests']} in "
        f"{f['read_s']:.2f}s; p50 {f['read_p50_ms']:.2f} ms, p99 {f['read_p99_ms']:.2f} ms; "
        f"{f['read_errors']} errors) | cpu: server {f['read_server_cpu_cores']}, clients "
        f"{f['read_client_cpu_cores']}, machine {f['read_machine_cores']} cores",
    ]
    if f["latency_jobs"]:
        lines.append(
            f"  c. latency {f['latency_jobs']} jobs at {f['latency_rate']:g}/s (achieved "
            f"{f['latency_achieved_rate']}/s): submit-to-start p50 {f['latency_p50_ms']:.2f} "
            f"ms, p95 {f['latency_p95_ms']:.2f} ms, p99 {f['latency_p99_ms']:.2f} ms, max "
            f"{f['latency_max_ms']:.2f} ms | POST p50 {f['latency_post_p50_ms']:.2f} ms, p99 "
            f"{f['latency_post_p99_ms']:.2f} ms | cpu: server {f['latency_server_cpu_cores']}, "
            f"machine {f['latency_machine_cores']} cores"
        )
    else:
        lines.append("  c. latency skipped (no embedded worker)")
    return "\n".join(lines)


_MEDIAN_FIELDS = (
    "submit_per_s",
    "submit_p50_ms",
    "submit_p99_ms",
    "read_per_s",
    "read_p50_ms",
    "read_p99_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "latency_max_ms",
)


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return combine_rounds(
        rounds, _MEDIAN_FIELDS, ("submit_per_s", "read_per_s", "latency_p50_ms", "latency_p99_ms")
    )


def print_server_profile(path: str) -> None:
    """The server's cProfile stats (written when it exited), top entries to stderr."""
    if not Path(path).exists():
        print(f"no server profile at {path} (did the server exit cleanly?)", file=sys.stderr)
        return
    print_profile(path, 60)


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    rounds = run_rounds(opts, lambda url: run(url, opts), summary, opts.repeat)
    combined = combine(rounds)
    if len(rounds) > 1:
        latency = (
            f" | submit-to-start p50 {combined['latency_p50_ms']:.2f} ms, p99 "
            f"{combined['latency_p99_ms']:.2f} ms"
            if combined["latency_p50_ms"] is not None
            else ""
        )
        print(
            f"median of {len(rounds)} rounds: submit {combined['submit_per_s']:,} req/s "
            f"(all {combined['submit_per_s_all']}) | read {combined['read_per_s']:,} req/s "
            f"(all {combined['read_per_s_all']}){latency}",
            flush=True,
        )
    if opts.server_profile:
        print_server_profile(opts.server_profile)
    return finish(combined)


if __name__ == "__main__":
    sys.exit(main())
