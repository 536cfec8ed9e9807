"""Prometheus metrics: requests, events committed by this process, queues and workers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from conveyor.domain.events import Event
from conveyor.engine.core import Engine
from conveyor.errors import ConveyorError

log = logging.getLogger("conveyor.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Snapshot(Collector):
    """Queue depths and worker counts, read from the database in the background (a
    scrape never waits for the database)."""

    def __init__(self) -> None:
        self.queues: list[tuple[str, str, int]] = []
        self.workers: dict[str, int] = {}
        self.paused: list[tuple[str, bool]] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily(
            "conveyor_queue_jobs", "Jobs by queue and status", labels=["queue", "status"]
        )
        for queue, status, count in self.queues:
            jobs.add_metric([queue, status], count)
        yield jobs
        paused = GaugeMetricFamily(
            "conveyor_queue_paused", "1 if the queue is paused", labels=["queue"]
        )
        for queue, is_paused in self.paused:
            paused.add_metric([queue], 1.0 if is_paused else 0.0)
        yield paused
        workers = GaugeMetricFamily("conveyor_workers", "Workers by status", labels=["status"])
        for status, count in sorted(self.workers.items()):
            workers.add_metric([status], count)
        yield workers


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "conveyor_http_requests",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "conveyor_http_request_seconds",
            "HTTP request duration",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        self.events = Counter(
            "conveyor_events", "Events committed by this process", ["type"], registry=self.registry
        )
        self.snapshot = _Snapshot()
        self.registry.register(self.snapshot)
        self._task: asyncio.Task[None] | None = None

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def on_events(self, events: list[Event]) -> None:
        for event in events:
            self.events.labels(event.type).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def start(self, engine: Engine, interval_s: float = 5.0) -> None:
        engine.db.add_commit_listener(self.on_events)
        self._task = asyncio.create_task(self._refresh(engine, interval_s), name="metrics")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _refresh(self, engine: Engine, interval_s: float) -> None:
        while True:
            try:
                stats = await engine.list_queues()
                self.snapshot.queues = [
                    (q.name, status, count) for q in stats for status, count in q.counts.items()
                ]
                self.snapshot.paused = [(q.name, q.paused) for q in stats]
                counts: dict[str, int] = {}
                for worker in await engine.list_workers():
                    counts[worker.status] = counts.get(worker.status, 0) + 1
                self.snapshot.workers = counts
            except ConveyorError as exc:
                log.warning("metrics refresh failed: %s", exc)
            await asyncio.sleep(interval_s)
