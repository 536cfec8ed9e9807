"""The worker: claims jobs into free slots, runs them, reports outcomes in batches.

One loop iteration settles every outcome gathered since the last one *and* claims jobs
for the free slots, in a single transaction. Heartbeats run on their own thread
(:mod:`conveyor.worker.heartbeat`); the worker also fences itself: when its own monotonic
clock says a lease may have run out, it stops that attempt and writes nothing for it.

Short jobs are claimed a little ahead (adaptive prefetch): when recent attempts took
``d`` seconds on average, the worker also leases about ``concurrency * window / d`` jobs
beyond its free slots, capped, so a commit carries many jobs when jobs take microseconds
while a worker running minute-long steps never holds a job it is not running.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from conveyor import faults
from conveyor.engine.core import Engine
from conveyor.engine.jobs import CANCEL_CHANNEL, JOBS_CHANNEL
from conveyor.engine.models import (
    Cancelled,
    ClaimedJob,
    ClaimRequest,
    Completed,
    Failed,
    LeaseRenewal,
    Outcome,
    Progress,
    Released,
)
from conveyor.engine.sealing import is_sealed, scrub
from conveyor.engine.workers import WorkerRegistration
from conveyor.errors import (
    ConveyorError,
    InvalidInputError,
    JobCancelled,
    LeaseLostError,
    NonRetryableError,
    StoreUnavailableError,
)
from conveyor.store.database import Database
from conveyor.worker.context import Attempt, AwaitingInput, Context
from conveyor.worker.heartbeat import HeartbeatThread
from conveyor.worker.tasks import TaskDefinition

log = logging.getLogger("conveyor.worker")
#: after the hard stop, how long a step may take to honour it before it is abandoned
_ABANDON_AFTER_S = 0.5


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    concurrency: int = 4
    queues: list[str] | None = None  # None: every queue
    lease_ttl_s: float = 30.0
    heartbeat_interval_s: float = 2.0
    poll_min_s: float = 0.05
    poll_max_s: float = 1.0
    sweep_interval_s: float = 2.0
    drain_timeout_s: float = 30.0
    cancel_grace_s: float = 5.0
    #: lease ahead only what the slots would finish within this window (0: never)
    prefetch_window_s: float = 0.02
    max_prefetch: int = 256
    #: while other attempts are about to finish, wait this long to report outcomes
    #: together (group commit); a lone outcome is never held back longer
    flush_linger_s: float = 0.002
    kind: str = "process"
    worker_id: str | None = None
    listen: bool = True  # LISTEN for wake-ups when the backend can


@dataclass(eq=False)
class _Held:
    """A job this worker holds the lease of: waiting for a slot, or running."""

    attempt: Attempt
    lease_deadline: float  # monotonic; past it the lease may be someone else's
    task: asyncio.Task[None] | None = None
    hard_stop: asyncio.TimerHandle | None = None


def default_worker_id(kind: str) -> str:
    host = socket.gethostname().split(".")[0][:32] or "host"
    suffix = "embedded-" if kind == "embedded" else ""
    return f"{host}-{os.getpid()}-{suffix}{os.urandom(3).hex()}"


class Worker:
    """Runs registered tasks with ``concurrency`` slots."""

    def __init__(
        self,
        engine: Engine,
        tasks: Mapping[str, TaskDefinition],
        settings: WorkerSettings | None = None,
        *,
        open_db: Callable[[], Database] | None = None,
        services: Any = None,
    ) -> None:
        """``open_db`` opens the heartbeat thread's own connection (default: same URL);
        ``services`` offers task code more than the engine (``llm_for(ctx)``)."""
        self.services = services
        self.engine = engine
        self.tasks = dict(tasks)
        self.settings = s = settings or WorkerSettings()
        if s.concurrency < 1:
            raise InvalidInputError("concurrency must be at least 1")
        if s.heartbeat_interval_s * 2 > s.lease_ttl_s:
            raise InvalidInputError(
                "heartbeat_interval_s must be at most half of lease_ttl_s, or leases expire"
            )
        self.worker_id = s.worker_id or default_worker_id(s.kind)
        if open_db is None:
            from conveyor.store.factory import open_database

            open_db = partial(open_database, engine.db.url)
        self._open_db = open_db
        self._held: dict[str, _Held] = {}
        self._waiting: collections.deque[_Held] = collections.deque()
        self._active = 0
        self._leases_lock = threading.Lock()
        self._leases: dict[str, str] = {}
        self._outbox: list[Outcome] = []
        self._outbox_since = 0.0
        self._kick = asyncio.Event()
        self._maybe_work = True
        self._wakeups = 0  # a claim that found nothing must not hide a wake-up meanwhile
        self._step_finished = False
        self._draining = False
        self._stopped = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._maintenance_task: asyncio.Task[None] | None = None
        self._fence_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._drain_timer: asyncio.TimerHandle | None = None
        self._heartbeat: HeartbeatThread | None = None
        self._listener: Any = None
        self._threads = ThreadPoolExecutor(
            max_workers=max(4, s.concurrency * 2), thread_name_prefix="conveyor-task"
        )
        self._lease_margin_s = min(max(0.2 * s.lease_ttl_s, 0.5), s.lease_ttl_s / 2)
        self._avg_run_s: float | None = None
        self.finished = 0  # attempts this worker reported (any outcome)
        self.fenced = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Register, start heartbeats, wake-ups and the claim loop."""
        s = self.settings
        await self.engine.register_worker(
            WorkerRegistration(
                id=self.worker_id,
                hostname=socket.gethostname()[:255] or "localhost",
                pid=os.getpid(),
                kind=s.kind,
                max_concurrency=s.concurrency,
                queues=s.queues,
                capabilities=sorted(self.tasks),
            )
        )
        self.engine.add_wakeup(self._on_wakeup)
        self.engine.add_cancel_listener(self._on_cancel_notice)
        if s.listen:
            # other processes' submissions and cancels (NOTIFY, or a socket for SQLite)
            self._listener = self.engine.db.listen(
                [JOBS_CHANNEL, CANCEL_CHANNEL],
                self._on_notify,
                on_reconnect=lambda: self._on_wakeup(""),
            )
            if self._listener is not None:
                self._listener.start()
        self._heartbeat = HeartbeatThread(
            worker_id=self.worker_id,
            open_db=self._open_db,
            settings=self.engine.settings,
            interval_s=s.heartbeat_interval_s,
            lease_s=s.lease_ttl_s,
            held=self._held_leases,
            deliver=self._deliver_renewal,
        )
        self._heartbeat.start()
        self._loop_task = asyncio.create_task(self._loop(), name=f"worker-{self.worker_id}")
        self._maintenance_task = asyncio.create_task(self._maintenance(), name="worker-sweep")
        self._fence_task = asyncio.create_task(self._fence_watch(), name="worker-fence")
        log.info(
            "worker %s started (concurrency %d, queues %s)",
            self.worker_id,
            s.concurrency,
            ",".join(s.queues) if s.queues else "all",
        )

    def request_stop(self) -> None:
        """First call: drain (stop claiming, give back jobs not started, let running ones
        finish until the drain timeout, then release them). Second call: release now."""
        if not self._draining:
            self._draining = True
            loop = asyncio.get_running_loop()
            self._drain_timer = loop.call_later(self.settings.drain_timeout_s, self._stop_now)
            self._spawn(self._mark_draining())
            while self._waiting:
                held = self._waiting.popleft()
                self._finish(held, Released(held.attempt.job.id, held.attempt.job.lease_token))
        else:
            self._stop_now()
        self._kick.set()

    async def stop(self, *, graceful: bool = True) -> None:
        """Stop and wait until deregistered."""
        if not self._draining:
            self.request_stop()
        if not graceful:
            self._stop_now()
        await self.wait_stopped()

    async def run(self) -> None:
        await self.start()
        await self.wait_stopped()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    @property
    def load(self) -> int:
        return self._active

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _mark_draining(self) -> None:
        try:
            await self.engine.set_worker_status(self.worker_id, "draining")
        except ConveyorError as exc:
            log.warning("could not mark worker draining: %s", exc)

    def _stop_now(self) -> None:
        for held in list(self._held.values()):
            self._stop_attempt(held, "shutdown")
        self._kick.set()

    async def _shutdown(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        for side_task in (self._maintenance_task, self._fence_task):
            if side_task is not None:
                side_task.cancel()
                await asyncio.gather(side_task, return_exceptions=True)
        await asyncio.gather(*self._background, return_exceptions=True)
        self.engine.remove_wakeup(self._on_wakeup)
        self.engine.remove_cancel_listener(self._on_cancel_notice)
        if self._listener is not None:
            await self._listener.stop()
        if self._heartbeat is not None:
            self._heartbeat.stop()
            await asyncio.to_thread(self._heartbeat.join, 10)
        try:
            await self.engine.deregister_worker(self.worker_id)
        except ConveyorError as exc:
            log.warning("could not deregister worker %s: %s", self.worker_id, exc)
        self._threads.shutdown(wait=False, cancel_futures=True)
        log.info("worker %s stopped", self.worker_id)
        self._stopped.set()

    # -- wake-ups and signals from other threads ---------------------------------------------

    def _on_wakeup(self, _queue: str) -> None:
        self._wakeups += 1
        self._maybe_work = True
        self._kick.set()

    def _on_cancel_notice(self, job_id: str) -> None:
        held = self._held.get(job_id)
        if held is not None:
            self._stop_attempt(held, "cancel")

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == CANCEL_CHANNEL:
            self._on_cancel_notice(payload)
        else:
            self._on_wakeup(payload)

    def _held_leases(self) -> tuple[list[tuple[str, str]], int]:
        with self._leases_lock:
            held = list(self._leases.items())
        return held, self._active

    def _deliver_renewal(self, renewal: LeaseRenewal, sent_at: float) -> None:
        loop = self._loop_task.get_loop() if self._loop_task else None
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._apply_renewal, renewal, sent_at)

    def _apply_renewal(self, renewal: LeaseRenewal, sent_at: float) -> None:
        deadline = sent_at + self.settings.lease_ttl_s - self._lease_margin_s
        for job_id in renewal.renewed:
            held = self._held.get(job_id)
            if held is not None:
                held.lease_deadline = max(held.lease_deadline, deadline)
        for job_id in renewal.lost:
            held = self._held.get(job_id)
            if held is not None:
                log.warning("lost the lease of job %s; abandoning the attempt", job_id)
                self._stop_attempt(held, "fenced")
        for job_id in renewal.cancel_requested:
            held = self._held.get(job_id)
            if held is not None:
                self._stop_attempt(held, "cancel")

    # -- the claim loop ----------------------------------------------------------------------

    def _prefetch(self) -> int:
        s = self.settings
        if self._avg_run_s is None or s.prefetch_window_s <= 0:
            return 0
        ahead = s.concurrency * s.prefetch_window_s / max(self._avg_run_s, 1e-6)
        return min(s.max_prefetch, int(ahead))

    async def _loop(self) -> None:
        s = self.settings
        idle = s.poll_min_s
        next_poll = 0.0
        failures = 0
        try:
            while True:
                self._kick.clear()
                soonest = self._fence_expired()
                linger = self._linger()
                if linger > 0:
                    await self._wait_kick(linger)
                    continue
                outcomes, self._outbox = self._outbox, []
                if self._step_finished:
                    # a finished step may queue its dependents in this very transaction:
                    # claim in it too (a chain then costs one commit per step)
                    self._step_finished = False
                    self._maybe_work = True
                want = 0
                if not self._draining:
                    want = s.concurrency + self._prefetch() - len(self._held)
                    if want > 0 and not self._maybe_work and time.monotonic() >= next_poll:
                        self._maybe_work = True
                    if not self._maybe_work:
                        want = 0
                if outcomes or want > 0:
                    claim = None
                    if want > 0:
                        claim = ClaimRequest(
                            self.worker_id, want, s.queues, sorted(self.tasks), s.lease_ttl_s
                        )
                    if any(isinstance(o, Completed) for o in outcomes):
                        faults.hit("after_effect_before_checkpoint")
                    sent = time.monotonic()
                    wakeups_before = self._wakeups
                    try:
                        result = await self.engine.settle(outcomes, claim)
                    except StoreUnavailableError as exc:
                        failures += 1
                        self._outbox[:0] = outcomes
                        delay = min(5.0, 0.05 * 2 ** min(failures, 7)) * (0.5 + random.random())
                        log.warning("database unavailable (%s); retrying in %.2fs", exc, delay)
                        await asyncio.sleep(delay)
                        continue
                    failures = 0
                    self.finished += sum(1 for o in outcomes if not isinstance(o, Progress))
                    for job_id in result.lost:
                        log.warning("outcome for job %s refused: its lease was lost", job_id)
                    for job in result.claimed:
                        self._hold(job, sent)
                    self._fill_slots()
                    if want > 0:
                        # wake-ups from this very transaction (it queued dependents, then
                        # its claim took what it could) are no news
                        news = self._wakeups - wakeups_before - result.queued_here
                        if len(result.claimed) < want and news <= 0:
                            self._maybe_work = False
                            next_poll = time.monotonic() + idle * (0.5 + random.random())
                            idle = min(idle * 2, s.poll_max_s)
                        else:
                            idle = s.poll_min_s
                if self._draining and not self._held and not self._outbox:
                    break
                await self._wait_kick(self._next_timeout(next_poll, soonest))
        finally:
            await self._shutdown()

    async def _wait_kick(self, timeout: float) -> None:
        if not self._kick.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout)

    def _linger(self) -> float:
        """How long to hold the outbox back so more outcomes share one commit."""
        if not self._outbox or self._draining or not (self._active or self._waiting):
            return 0.0
        if len(self._outbox) >= self.settings.concurrency + self._prefetch():
            return 0.0
        waited = time.monotonic() - self._outbox_since
        return max(0.0, self.settings.flush_linger_s - waited)

    def _next_timeout(self, next_poll: float, soonest_deadline: float) -> float:
        now = time.monotonic()
        candidates = [self.settings.poll_max_s, soonest_deadline - now]
        if not self._draining and len(self._held) < self.settings.concurrency:
            candidates.append(next_poll - now)
        return max(0.0, min(candidates)) + 0.001

    def _fence_expired(self) -> float:
        """Stop attempts whose lease may have run out; return the next deadline."""
        now = time.monotonic()
        soonest = now + self.settings.poll_max_s
        for held in list(self._held.values()):
            deadline = held.lease_deadline
            if deadline < now:
                if held.attempt.stop_reason != "fenced":
                    log.warning(
                        "job %s: lease not renewed in time; stopping the attempt (self-fence)",
                        held.attempt.job.id,
                    )
                    self._stop_attempt(held, "fenced")
            elif deadline < soonest:
                soonest = deadline
        return soonest

    async def _fence_watch(self) -> None:
        """Fence on time even while the claim loop waits on the database: a settle call
        can take up to the database call deadline, and a lease must not outlive its
        attempt's side effects meanwhile."""
        while True:
            soonest = self._fence_expired()
            await asyncio.sleep(max(0.01, soonest - time.monotonic()) + 0.001)

    # -- holding and running attempts --------------------------------------------------------

    def _hold(self, job: ClaimedJob, claimed_at: float) -> None:
        attempt = Attempt(job, asyncio.get_running_loop(), self._report, self.engine, self.services)
        held = _Held(attempt, claimed_at + self.settings.lease_ttl_s - self._lease_margin_s)
        self._held[job.id] = held
        with self._leases_lock:
            self._leases[job.id] = job.lease_token
        if job.cancel_requested:
            attempt.request_stop("cancel")
        self._waiting.append(held)

    def _fill_slots(self) -> None:
        while self._waiting and self._active < self.settings.concurrency:
            held = self._waiting.popleft()
            if held.attempt.stop_reason is not None:
                self._finish(held, self._stopped_outcome(held.attempt))
                continue
            self._active += 1
            held.task = asyncio.create_task(self._execute(held))

    def _report(self, outcome: Outcome) -> None:
        if outcome.job_id in self._held:
            self._post(outcome)

    def _post(self, outcome: Outcome) -> None:
        if not self._outbox:
            self._outbox_since = time.monotonic()
        self._outbox.append(outcome)
        self._kick.set()

    def _stop_attempt(self, held: _Held, reason: str) -> None:
        attempt = held.attempt
        first = attempt.stop_reason is None
        attempt.request_stop(reason)
        task = held.task
        if task is None:
            if held in self._waiting:
                self._waiting.remove(held)
                self._finish(held, self._stopped_outcome(attempt))
            return
        if task.done():
            return
        if reason == "cancel":
            # cooperative first: the task sees ctx.cancelled; hard stop after the grace.
            # Later notices (every heartbeat repeats it) must not cut the grace short.
            if first:
                loop = asyncio.get_running_loop()
                held.hard_stop = loop.call_later(
                    self.settings.cancel_grace_s, self._hard_stop, held
                )
            return
        task.cancel()

    def _hard_stop(self, held: _Held) -> None:
        """The cancel grace is over: interrupt the step. A step that swallows the
        interruption (``except CancelledError``) is abandoned shortly after: the attempt
        ends as cancelled now, and whatever the step does or returns later is dropped
        (its lease is gone, so its writes are refused)."""
        task = held.task
        if task is None or task.done():
            return
        task.cancel()
        loop = asyncio.get_running_loop()
        held.hard_stop = loop.call_later(_ABANDON_AFTER_S, self._abandon, held)

    def _abandon(self, held: _Held) -> None:
        task = held.task
        job = held.attempt.job
        if task is None or task.done() or self._held.get(job.id) is not held:
            return
        log.warning("job %s: the step ignored its cancellation; abandoning it", job.id)
        self._finish(held, self._stopped_outcome(held.attempt))

    async def _execute(self, held: _Held) -> None:
        attempt = held.attempt
        job = attempt.job
        token = job.lease_token
        definition = self.tasks[job.task]
        outcome: Outcome | None = None
        started = time.monotonic()
        secrets: list[str] = []
        try:
            data = job.input
            if data and any(is_sealed(v) for v in data.values()):
                if self.engine.sealer is None:
                    raise NonRetryableError("a sealed input needs the secret key to open it")
                data, secrets = self.engine.sealer.unseal_all(data)
            kwargs = definition.parse_input(
                data,
                dependencies=job.dependencies,
                ignore_unknown=job.execution_id is not None,
            )
            faults.hit("mid_step")
            result = await self._call(definition, Context(attempt), kwargs, job.timeout_s)
            outcome = Completed(job.id, token, definition.dump_output(result))
        except AwaitingInput:
            outcome = None  # recorded by ctx.ask: the step waits without a lease
        except LeaseLostError:
            self.fenced += 1
            outcome = None  # another attempt owns the job now: write nothing
        except asyncio.CancelledError:
            outcome = self._stopped_outcome(attempt)
            if attempt.stop_reason is None:
                raise
        except _AttemptTimedOut:
            outcome = Failed(
                job.id,
                token,
                {
                    "type": "Timeout",
                    "message": f"the attempt exceeded its {job.timeout_s}s timeout",
                },
            )
        except JobCancelled:
            outcome = self._stopped_outcome(attempt) or Cancelled(job.id, token)
        except InvalidInputError as exc:
            error = _error(exc, with_traceback=False) | {"details": exc.details}
            outcome = Failed(job.id, token, error, retryable=False)
        except NonRetryableError as exc:
            outcome = Failed(job.id, token, _error(exc), retryable=False)
        except Exception as exc:
            if attempt.stop_reason is not None:
                outcome = self._stopped_outcome(attempt)
            else:
                outcome = Failed(job.id, token, _error(exc))
        finally:
            if secrets and isinstance(outcome, Failed):
                outcome = Failed(
                    outcome.job_id,
                    outcome.token,
                    _scrubbed(outcome.error, secrets),
                    outcome.retryable,
                )
            elapsed = time.monotonic() - started
            self._avg_run_s = (
                elapsed if self._avg_run_s is None else 0.8 * self._avg_run_s + 0.2 * elapsed
            )
            self._active -= 1
            self._finish(held, outcome)
            self._fill_slots()

    def _stopped_outcome(self, attempt: Attempt) -> Outcome | None:
        job = attempt.job
        reason = attempt.stop_reason
        if reason == "fenced":
            self.fenced += 1
            return None  # the lease is gone: write nothing
        if reason == "shutdown":
            return Released(job.id, job.lease_token)
        if reason == "cancel":
            return Cancelled(job.id, job.lease_token)
        return None

    def _finish(self, held: _Held, outcome: Outcome | None) -> None:
        job = held.attempt.job
        if held.hard_stop is not None:
            held.hard_stop.cancel()
        if self._held.pop(job.id, None) is None:
            return
        with self._leases_lock:
            self._leases.pop(job.id, None)
        if outcome is not None:
            if job.execution_id is not None:
                self._step_finished = True
            self._post(outcome)
        self._kick.set()

    async def _call(
        self,
        definition: TaskDefinition,
        ctx: Context,
        kwargs: dict[str, Any],
        timeout_s: float | None,
    ) -> Any:
        args = (ctx,) if definition.context_param is not None else ()
        if definition.is_async:
            awaitable = definition.fn(*args, **kwargs)
        else:
            loop = asyncio.get_running_loop()
            awaitable = loop.run_in_executor(self._threads, partial(definition.fn, *args, **kwargs))
        if timeout_s is None:
            return await awaitable
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                return await awaitable
        except TimeoutError:
            if deadline.expired():
                raise _AttemptTimedOut from None
            raise  # the task's own TimeoutError: an ordinary failure

    # -- maintenance -------------------------------------------------------------------------

    async def _maintenance(self) -> None:
        """Recover jobs whose worker vanished (any worker may do it; it is idempotent)."""
        interval = self.settings.sweep_interval_s
        while True:
            await asyncio.sleep(interval * (0.75 + random.random() / 2))
            try:
                while len(await self.engine.recover_expired(limit=100)) == 100:
                    pass
                while await self.engine.expire_clarifications() == 100:
                    pass
            except ConveyorError as exc:
                log.warning("lease recovery sweep failed: %s", exc)
            except Exception:
                log.exception("lease recovery sweep crashed")


class _AttemptTimedOut(Exception):
    """The attempt ran past the job's timeout (not a TimeoutError raised by task code)."""


def _scrubbed(error: dict[str, Any], secrets: list[str]) -> dict[str, Any]:
    """An error without the plaintext of the attempt's secret inputs."""
    return {k: (scrub(v, secrets) if isinstance(v, str) else v) for k, v in error.items()}


def _error(exc: BaseException, *, with_traceback: bool = True) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)[:4000]}
    if with_traceback:
        error["traceback"] = "".join(traceback.format_exception(exc))[-8000:]
    return error
