"""R11 episodes: one worker cut off from PostgreSQL by the user-space proxy.

Used by ``test_partition.py`` (one short episode of each kind, in CI) and by
``chaos.py --scenario r11`` (many seeded episodes). Two workers run ``tests.faults.app``:
*cut* reaches PostgreSQL through :mod:`tests.faults.proxy`, *direct* connects directly.
Both serve the ``default`` queue; only *cut* also serves the ``cut`` queue, so a job
there proves that the cut worker itself works again after the partition healed.

* :func:`blackhole_episode`: SIGSTOP the proxy (every socket stays open, nothing moves)
  for ``pause_s`` while the cut worker runs three steps: one finishing inside the
  partition (its completion is stuck, later refused), one async step that would run for
  30 s (must be self-fenced and cancelled) and one in a thread that cannot be interrupted
  (self-fenced; its late side effect must be absorbed by the idempotency key). The direct
  worker takes all three over after lease expiry.
* :func:`reset_episode`: SIGUSR1 the proxy a few times mid-step (zero-linger close of
  every connection): the cut worker reconnects, keeps its leases, and its LISTEN comes
  back (pickups stay notify-fast with polling slowed to ``poll_max_s`` = 5 s).
* :func:`latency_episode`: the proxy adds latency to every round trip; jobs complete.
"""

from __future__ import annotations

import asyncio
import re
import signal
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from conveyor.engine.core import Engine
from conveyor.engine.models import (
    JobSpec,
)
from conveyor.errors import ConveyorError
from conveyor.store.postgres import PostgresDatabase
from tests.acceptance.conftest import Proc
from tests.faults import proxy
from tests.faults.harness import (
    ClientLog,
    FenceLog,
    Fleet,
    distribution,
    event_list,
    events_total,
    lease_view,
    replay_stale_writes,
    sync_engine,
    wait_for,
    wait_terminal,
)
from tests.faults.ledger import read_ledger

CUT_QUEUE = "cut"
#: the client-side deadline of every database call of the cut worker, and of the probe
DEADLINE_S = 1.0
DEADLINE_SETTINGS: dict[str, str] = {
    "CONVEYOR_DB_CALL_DEADLINE_S": str(DEADLINE_S),
    "CONVEYOR_DB_CONNECT_TIMEOUT_S": "1",
}
#: the step that finishes inside the partition ends this long after it started
FINISH_S = 3.0
#: the partition starts this long before that step ends
FINISH_LEAD_S = 0.5

LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+ \S+: (.*)$")


def log_times(stderr: str, pattern: re.Pattern[str]) -> list[tuple[float, str]]:
    """(wall time, first group) of every log line whose message matches ``pattern``."""
    found: list[tuple[float, str]] = []
    for line in stderr.splitlines():
        match = LOG_LINE.match(line)
        if match is None:
            continue
        hit = pattern.search(match.group(3))
        if hit is None:
            continue
        local = time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
        wall = time.mktime(local) + int(match.group(2)) / 1000
        found.append((wall, hit.group(1) if hit.groups() else ""))
    return found


class CallProbe:
    """A client with the cut worker's settings, going through the same proxy: it runs
    ``SELECT 1`` every 100 ms and records how long each call took, failures included. Its
    longest call is the longest a database call of the cut worker can hang."""

    def __init__(self, url: str, deadline_s: float = DEADLINE_S) -> None:
        self.db = PostgresDatabase(url, call_deadline_s=deadline_s, connect_timeout_s=1.0)
        self.calls: list[tuple[float, float, bool]] = []  # (start mono, seconds, ok)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.db.read(lambda c: c.execute(text("SELECT 1")).scalar())
                ok = True
            except ConveyorError:
                ok = False
            self.calls.append((started, time.monotonic() - started, ok))
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.db.close()

    def longest(self, since: float = 0.0) -> float:
        return max((d for s, d, _ in self.calls if s >= since), default=0.0)

    def failures(self, since: float = 0.0) -> int:
        return sum(1 for s, _, ok in self.calls if s >= since and not ok)


@dataclass
class Pair:
    """The proxy and the two workers of an episode."""

    proxy: Proc
    port: int
    cut: Proc
    direct: Proc
    cut_id: str
    direct_id: str
    proxied_url: str
    episodes: int = 0
    notes: list[str] = field(default_factory=list)


async def start_pair(
    fleet: Fleet,
    engine: Engine,
    *,
    latency_ms: float = 0.0,
    settings: Mapping[str, str] | None = None,
    cut_settings: Mapping[str, str] | None = None,
    concurrency: int = 4,
) -> Pair:
    """Start the proxy, the cut worker (through it) and the direct worker; wait until
    both registered."""
    target = proxy.target_of(fleet.database_url)
    proxy_proc, port = proxy.start(fleet.procs, "proxy", target, latency_ms=latency_ms)
    proxied = proxy.via(fleet.database_url, port)
    common = {**DEADLINE_SETTINGS, **(settings or {})}
    cut = fleet.spawn(
        "cut",
        concurrency=concurrency,
        queues=["default", CUT_QUEUE],
        settings={**common, "CONVEYOR_DATABASE_URL": proxied, **(cut_settings or {})},
    )
    direct = fleet.spawn("direct", concurrency=concurrency, queues=["default"], settings=common)
    cut_id, direct_id = await fleet.ready(engine, cut, direct, timeout=60)
    # registered is not started: a worker SIGSTOPped (blackhole_episode stops the direct
    # one) while its registration call is still in flight exits with "database call
    # exceeded", so wait for the start-up to finish
    for proc, worker_id in ((cut, cut_id), (direct, direct_id)):
        await wait_for(
            _started(proc, worker_id),
            timeout=60,
            what=f"{proc.name} finishes starting",
            fleet=fleet,
            interval=0.05,
        )
    return Pair(proxy_proc, port, cut, direct, cut_id, direct_id, proxied)


def _started(proc: Proc, worker_id: str) -> Callable[[], bool]:
    """Whether ``proc`` logged the end of its start-up."""
    return lambda: f"worker {worker_id} started" in proc.stderr()


def _starts_by(fleet: Fleet, pid: int, ids: set[str], after: float = 0.0) -> dict[str, float]:
    """First start (monotonic) of each of ``ids`` by ``pid`` after ``after``."""
    first: dict[str, float] = {}
    for start in read_ledger(fleet.ledger).starts():
        if start.pid == pid and start.job_id in ids and start.mono >= after:
            first.setdefault(start.job_id, start.mono)
    return first


async def cut_pickup(fleet: Fleet, engine: Engine, log: ClientLog, pair: Pair, tag: str) -> float:
    """Submit a job only the cut worker serves; seconds until it started it."""
    submitted = time.monotonic()
    job_id = await log.submit(
        engine, JobSpec("effect_step", {"step": f"cut-probe-{tag}"}, queue=CUT_QUEUE)
    )
    started = await wait_for(
        lambda: _starts_by(fleet, pair.cut.pid, {job_id}, submitted).get(job_id),
        timeout=30,
        what="the cut worker picks up a job of its own queue",
        fleet=fleet,
        interval=0.01,
    )
    await wait_terminal(engine, [job_id], timeout=30, fleet=fleet)
    return float(started) - submitted


async def blackhole_episode(
    fleet: Fleet, engine: Engine, log: ClientLog, pair: Pair, *, pause_s: float
) -> dict[str, Any]:
    """SIGSTOP the proxy for ``pause_s`` mid-step; see the module docstring."""
    pair.episodes += 1
    n = pair.episodes
    url = fleet.database_url
    # hold the direct worker back until the partition starts, so the cut one claims all
    pair.direct.send(signal.SIGSTOP)
    try:
        finish, long_, thread = await log.submit_many(
            engine,
            [
                JobSpec("effect_step", {"step": f"finish-{n}", "first_sleep_s": FINISH_S}),
                JobSpec("effect_step", {"step": f"long-{n}", "first_sleep_s": 30.0}),
                JobSpec(
                    "effect_step_sync",
                    {"step": f"thread-{n}", "first_sleep_s": FINISH_S + pause_s * 0.8},
                ),
            ],
        )
        ids = [finish, long_, thread]
        started = await wait_for(
            lambda: (s := _starts_by(fleet, pair.cut.pid, set(ids))).keys() == set(ids) and s,
            timeout=30,
            what="the cut worker starts all three steps",
            fleet=fleet,
        )
        await asyncio.sleep(max(0.0, started[finish] + FINISH_S - FINISH_LEAD_S - time.monotonic()))
        probe_engine = sync_engine(url)
        try:
            tokens = {job_id: lease_view(probe_engine, job_id).token for job_id in ids}
        finally:
            probe_engine.dispose()
        probe = CallProbe(pair.proxied_url)
        probe.start()
        await asyncio.sleep(0.3)
        pair.proxy.send(signal.SIGSTOP)
    finally:
        pair.direct.send(signal.SIGCONT)
    stopped, stopped_wall = time.monotonic(), time.time()
    finished_before = time.monotonic() - started[finish] >= FINISH_S

    # watch the leases from outside while the partition lasts
    last_expiry: dict[str, float] = {}
    watcher = sync_engine(url)
    try:
        while time.monotonic() < stopped + pause_s:
            for job_id in ids:
                view = lease_view(watcher, job_id)
                if view.token == tokens[job_id] and view.expires_at is not None:
                    last_expiry[job_id] = view.expires_at
            await asyncio.sleep(0.05)
    finally:
        watcher.dispose()
    pair.proxy.send(signal.SIGCONT)
    healed = time.monotonic()
    partition_s = healed - stopped

    jobs = await wait_terminal(engine, ids, timeout=60, fleet=fleet)
    takeovers = _starts_by(fleet, pair.direct.pid, set(ids), stopped)
    expect_refused = set() if finished_before else {finish}
    await wait_for(
        lambda: (
            (f := FenceLog.parse(pair.cut.stderr())).noticed() >= {long_, thread}
            and set(f.refused) >= expect_refused
        ),
        timeout=30,
        what="the cut worker fences itself and its late completion is refused",
        fleet=fleet,
    )
    back_s = await cut_pickup(fleet, engine, log, pair, f"bh-{n}")
    await probe.stop()

    before = await events_total(engine, ids)
    live_tokens = {j: t for j, t in tokens.items() if t is not None}
    replay = await replay_stale_writes(engine, pair.cut_id, live_tokens, actor="cut")
    attempted, rejected = replay.attempted, replay.rejected
    stale_event_writes = await events_total(engine, ids) - before

    fence = FenceLog.parse(pair.cut.stderr())
    fenced_at = dict(
        (job, wall)
        for wall, job in log_times(pair.cut.stderr(), re.compile(r"job (\S+): lease not renewed"))
        if job in ids
    )
    # positive: the cut worker stopped the attempt before the database let the lease go
    margins = [last_expiry[j] - fenced_at[j] for j in (long_, thread) if j in fenced_at]
    completed_by: dict[str, list[int]] = {}
    for job_id in ids:
        completed_by[job_id] = [
            int(e.data["attempt"])
            for e in await event_list(engine, job_id)
            if e.type == "job.completed" and e.data
        ]
    # the cut worker's own writes that got through after it lost a lease
    stale_successes = sum(
        1 for j in ids if completed_by[j] and completed_by[j][0] == 1 and j in takeovers
    )
    ledger = read_ledger(fleet.ledger)
    late_effects = [w for w in ledger.writes if w.pid == pair.cut.pid and w.job_id in ids]
    late_effects = [w for w in late_effects if w.mono > stopped]
    return {
        "partition_s": round(partition_s, 3),
        "stopped_wall": round(stopped_wall, 3),
        "job_statuses": sorted(j.status for j in jobs.values()),
        "takeover_s": {k: round(v - stopped, 3) for k, v in takeovers.items()},
        "taken_over": len(takeovers),
        "finished_before_partition": finished_before,
        "self_fenced": sorted(set(fence.self_fenced) & set(ids)),
        "self_fence_after_s": {j: round(w - stopped_wall, 3) for j, w in fenced_at.items()},
        "fence_margin_s": [round(m, 3) for m in margins],
        "refused_by_db": len(set(fence.refused) & set(ids)),
        "renewals_lost": len(set(fence.lost) & set(ids)),
        "stale_writes_attempted": attempted,
        "stale_writes_rejected": rejected,
        "stale_event_writes": stale_event_writes,
        "stale_successes": stale_successes,
        "late_effects": len(late_effects),
        "late_effects_absorbed": sum(not w.inserted for w in late_effects),
        "longest_db_call_s": round(probe.longest(stopped - 0.3), 3),
        "probe_failures": probe.failures(stopped - 0.3),
        "cut_back_after_heal_s": round(back_s, 3),
        "completed_attempts": {k: v for k, v in completed_by.items()},
        "ids": {"finish": finish, "long": long_, "thread": thread},
    }


async def reset_episode(
    fleet: Fleet,
    engine: Engine,
    log: ClientLog,
    pair: Pair,
    *,
    resets: int = 3,
    gap_s: float = 0.5,
    pickups: int = 3,
) -> dict[str, Any]:
    """Reset every proxied connection ``resets`` times while the cut worker runs steps
    of its own queue; then measure notify-driven pickups."""
    pair.episodes += 1
    n = pair.episodes
    ids = await log.submit_many(
        engine,
        [
            JobSpec(
                "effect_step", {"step": f"reset-{n}-{i}", "first_sleep_s": 2.5}, queue=CUT_QUEUE
            )
            for i in range(3)
        ],
    )
    await wait_for(
        lambda: _starts_by(fleet, pair.cut.pid, set(ids)).keys() == set(ids),
        timeout=30,
        what="the cut worker starts its steps",
        fleet=fleet,
    )
    first_reset = time.monotonic()
    for _ in range(resets):
        pair.proxy.send(signal.SIGUSR1)
        await asyncio.sleep(gap_s)
    jobs = await wait_terminal(engine, ids, timeout=60, fleet=fleet)
    lost_leases = 0
    for job_id in ids:
        types = [e.type for e in await event_list(engine, job_id)]
        lost_leases += types.count("job.lease_expired")
    latencies = []
    for i in range(pickups):
        await asyncio.sleep(1.0 + 0.5 * i)
        latencies.append(await cut_pickup(fleet, engine, log, pair, f"reset-{n}-{i}"))
    listen_lost = len(log_times(pair.cut.stderr(), re.compile(r"(LISTEN connection lost)")))
    fence = FenceLog.parse(pair.cut.stderr())
    return {
        "resets": resets,
        "job_statuses": sorted(j.status for j in jobs.values()),
        "attempts": sorted(j.attempts for j in jobs.values()),
        "lease_expired_events": lost_leases,
        "self_fenced": len(set(fence.noticed()) & set(ids)),
        "listen_reconnects_logged": listen_lost,
        "notify_pickup_s": [round(x, 3) for x in latencies],
        "reset_to_done_s": round(time.monotonic() - first_reset, 3),
    }


async def latency_episode(
    fleet: Fleet, engine: Engine, log: ClientLog, pair: Pair, *, jobs: int = 20
) -> dict[str, Any]:
    """Jobs on both queues while every round trip of the cut worker is slowed down."""
    pair.episodes += 1
    n = pair.episodes
    probe = CallProbe(pair.proxied_url, deadline_s=10.0)
    probe.start()
    submitted = time.monotonic()
    specs = [
        JobSpec(
            "effect_step",
            {"step": f"lat-{n}-{i}", "sleep_s": 0.2},
            queue=CUT_QUEUE if i % 3 == 0 else None,
        )
        for i in range(jobs)
    ]
    ids = await log.submit_many(engine, specs)
    done = await wait_terminal(engine, ids, timeout=120, fleet=fleet)
    elapsed = time.monotonic() - submitted
    await probe.stop()
    ledger = read_ledger(fleet.ledger)
    by_worker = {"cut": 0, "direct": 0}
    for start in ledger.starts():
        if start.job_id in ids:
            key = "cut" if start.pid == pair.cut.pid else "direct"
            by_worker[key] += 1
    lost = 0
    for job_id in ids:
        lost += [e.type for e in await event_list(engine, job_id)].count("job.lease_expired")
    round_trips = [d for _, d, ok in probe.calls if ok]
    fence = FenceLog.parse(pair.cut.stderr())
    return {
        "jobs": jobs,
        "job_statuses": sorted({j.status for j in done.values()}),
        "all_done_s": round(elapsed, 3),
        "starts_by_worker": by_worker,
        "lease_expired_events": lost,
        "self_fenced": len(set(fence.noticed()) & set(ids)),
        "probe_select1_s": distribution(round_trips),
        "probe_median_s": round(statistics.median(round_trips), 3) if round_trips else None,
    }
