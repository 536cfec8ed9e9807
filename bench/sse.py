"""Live streams: many SSE subscribers on one ``conveyor serve``, publish-to-receive latency.

    python -m bench.sse --subscribers 1000 --rate 10                  # SQLite, 20 s
    python -m bench.sse --subscribers 1000 --rate 10 --db postgres --duration 20
    python -m bench.sse --subscribers 200 --rate 10 --jobs 10 --publisher process

One server process (``conveyor serve --app bench.apps:app``) on a throwaway database. The
publisher is the ``beacon`` task (``bench/apps.py``): ``--jobs`` jobs, each calling
``ctx.progress`` ``--rate`` times per second on a fixed grid for ``--duration`` seconds,
with ``"<seq> <time.time()>"`` as the message (the publish time). It runs in the server's
embedded worker (``--publisher embedded``, the default: the event is committed in the API
process) or in a ``conveyor worker`` process of its own (``--publisher process``: the
server runs ``--workers 0`` and learns of events by NOTIFY / datagram hints).

``--subscribers`` SSE connections (``GET /api/v1/jobs/{id}/events`` with
``Accept: text/event-stream``), subscriber ``i`` on job ``i % jobs``, spread over
``--client-processes`` processes, each running its share as raw asyncio streams (HTTP/1.1,
chunked, parsed by hand: far cheaper per connection than a full HTTP client). Every
subscriber is connected and has received its first event before the beacons start (they
wait for a file to appear). Latency is receive time minus publish time (``time.time()``,
same machine), for every progress event at every subscriber. Lost: per subscriber, beacon
events published minus distinct ones received; duplicates and out-of-order deliveries are
counted too, and every stream must end at its job's terminal event.

Server CPU (``/proc/<pid>/stat``) is measured from the go signal to the last stream's end;
its RSS (``/proc/<pid>/status``) before the subscribers connect and once all are
connected: per subscriber is the difference over the count. The clients' and the
machine's CPU are reported too: on a small machine the clients compete with the server
for the same cores, which shows in the latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import queue
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.queues import Queue as MpQueue
from pathlib import Path
from typing import Any

import httpx2 as httpx

from bench.apps import APP_SPEC
from bench.common import (
    API,
    CONVEYOR,
    BenchOptions,
    Server,
    bench_parser,
    conveyor_serve,
    cpu_sample,
    cpu_usage,
    finish,
    gather_reports,
    login,
    percentile,
    process_cpu_s,
    process_memory_kb,
    rounded,
    run_rounds,
    shared_options,
    wait_ready,
)

#: SSE connections a client process opens at once while connecting
CONNECT_BATCH = 50


@dataclass(frozen=True)
class Options(BenchOptions):
    subscribers: int
    rate: float
    duration: float
    jobs: int
    client_processes: int
    publisher: str

    @property
    def per_job(self) -> int:
        """Beacon events each job publishes (as the task computes it)."""
        return max(1, round(self.rate * self.duration))


def parse(argv: list[str] | None = None) -> Options:
    parser = bench_parser("python -m bench.sse", __doc__, raw=True)
    parser.add_argument("--subscribers", type=int, default=1000, help="SSE connections")
    parser.add_argument("--rate", type=float, default=10.0, help="events/s per job")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of publishing")
    parser.add_argument("--jobs", type=int, default=1, help="publishing jobs (streams)")
    parser.add_argument(
        "--client-processes",
        type=int,
        default=max(1, min(4, os.cpu_count() or 1)),
        help="processes the subscribers are spread over",
    )
    parser.add_argument(
        "--publisher",
        choices=("embedded", "process"),
        default="embedded",
        help="where the beacon jobs run: the server's worker, or a worker process",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after (s)")
    ns = parser.parse_args(argv)
    if ns.subscribers < 1 or ns.jobs < 1 or ns.client_processes < 1:
        parser.error("--subscribers, --jobs and --client-processes must be positive")
    if ns.rate <= 0 or ns.duration <= 0:
        parser.error("--rate and --duration must be positive")
    return Options(
        **shared_options(ns),
        subscribers=int(ns.subscribers),
        rate=float(ns.rate),
        duration=float(ns.duration),
        jobs=int(ns.jobs),
        client_processes=min(int(ns.client_processes), int(ns.subscribers)),
        publisher=str(ns.publisher),
    )


# -- the server (and the publisher's worker process) --------------------------------------------


@contextlib.contextmanager
def running_server(url: str, opts: Options) -> Iterator[Server]:
    embedded = opts.jobs + 1 if opts.publisher == "embedded" else 0
    with conveyor_serve(
        url,
        opts.synchronous,
        workers=embedded,
        # every subscriber signs in as the same user
        extra_env={"CONVEYOR_MAX_STREAMS_PER_USER": str(opts.subscribers + 100)},
        clean_env=True,
    ) as server:
        if opts.publisher == "process":
            worker_command = [CONVEYOR, "worker", "--app", APP_SPEC, "-d", url]
            server.start_companion([*worker_command, "--concurrency", str(opts.jobs + 1)])
        yield server


# -- subscribers (in client processes) ------------------------------------------------------------


@dataclass(frozen=True)
class ClientConfig:
    host: str
    port: int
    token: str
    job_ids: tuple[str, ...]  # subscriber i (global index) follows job_ids[i % len]
    first: int  # global index of this process's first subscriber
    count: int
    timeout_s: float


@dataclass
class Received:
    """One subscriber's stream."""

    seqs: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    duplicates: int = 0
    out_of_order: int = 0
    ended: bool = False  # the terminal event arrived
    error: str | None = None


@dataclass
class ClientReport:
    pid: int
    latencies_ms: list[float]
    distinct: list[int]  # per subscriber: distinct beacon events received
    duplicates: int
    out_of_order: int
    ended: int
    errors: list[str]
    cpu_s: float


class SseReader:
    """An event stream over a raw HTTP/1.1 connection (chunked, as uvicorn sends it)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buffer = b""

    async def open(self, writer: asyncio.StreamWriter, path: str, host: str, token: str) -> None:
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                "Accept: text/event-stream\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        status = await self.reader.readline()
        headers = []
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            headers.append(line.lower())
        if not status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"answer {status.decode(errors='replace').strip()}")
        if b"transfer-encoding: chunked\r\n" not in headers:
            raise RuntimeError("expected a chunked event stream")

    async def messages(self) -> list[bytes] | None:
        """The complete SSE messages of the next chunk(s); None at the end of the body."""
        while True:
            size_line = await self.reader.readline()
            if not size_line:
                raise ConnectionError("the server closed the connection mid-stream")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                return None
            data = await self.reader.readexactly(size + 2)
            self.buffer += data[:-2]
            if b"\r\n\r\n" in self.buffer:
                *complete, self.buffer = self.buffer.split(b"\r\n\r\n")
                return complete


class Readiness:
    """Counts this process's subscribers that subscribed (or gave up)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.all = asyncio.Event()

    def one(self) -> None:
        self.count += 1
        if self.count >= self.total:
            self.all.set()


def _data_of(message: bytes) -> dict[str, Any] | None:
    for line in message.split(b"\r\n"):
        if line.startswith(b"data:"):
            found: dict[str, Any] = json.loads(line[5:])
            return found
    return None


async def _subscribe(
    config: ClientConfig, index: int, connected: asyncio.Semaphore, ready: Readiness
) -> Received:
    got = Received()
    path = f"{API}/jobs/{config.job_ids[index % len(config.job_ids)]}/events"
    writer: asyncio.StreamWriter | None = None
    first = True
    try:
        async with connected:
            reader, writer = await asyncio.open_connection(config.host, config.port)
            stream = SseReader(reader)
            await stream.open(writer, path, f"{config.host}:{config.port}", config.token)
        seen: set[int] = set()
        last = -1
        while (messages := await stream.messages()) is not None:
            now = time.time()
            for message in messages:
                event = _data_of(message)
                if event is None:
                    continue
                if first:  # subscribed: the history (job.queued) came through
                    first = False
                    ready.one()
                if event["type"] == "job.progress":
                    seq_text, _, published = event["data"]["message"].partition(" ")
                    seq = int(seq_text)
                    if seq in seen:
                        got.duplicates += 1
                        continue
                    if seq < last:
                        got.out_of_order += 1
                    seen.add(seq)
                    last = max(last, seq)
                    got.seqs.append(seq)
                    got.latencies_ms.append((now - float(published)) * 1000.0)
                elif event["type"] in ("job.completed", "job.failed", "job.cancelled"):
                    got.ended = True
        if not got.ended:
            got.error = "the stream ended before the job's terminal event"
    except (OSError, RuntimeError, ValueError, asyncio.IncompleteReadError) as exc:
        got.error = f"{type(exc).__name__}: {exc}"
    finally:
        if first:
            ready.one()  # failed before subscribing: do not hold the others up
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
    return got


async def _client(config: ClientConfig, ready_q: MpQueue[tuple[int, int]]) -> ClientReport:
    connect_slots = asyncio.Semaphore(CONNECT_BATCH)
    ready = Readiness(config.count)
    tasks = [
        asyncio.create_task(_subscribe(config, config.first + i, connect_slots, ready))
        for i in range(config.count)
    ]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ready.all.wait(), config.timeout_s)
    ready_q.put((os.getpid(), ready.count))
    cpu_at_ready = time.process_time()
    done = await asyncio.wait_for(asyncio.gather(*tasks), config.timeout_s)
    latencies = [lat for got in done for lat in got.latencies_ms]
    return ClientReport(
        pid=os.getpid(),
        latencies_ms=latencies,
        distinct=[len(got.seqs) for got in done],
        duplicates=sum(got.duplicates for got in done),
        out_of_order=sum(got.out_of_order for got in done),
        ended=sum(1 for got in done if got.ended),
        errors=[got.error for got in done if got.error][:5],
        cpu_s=time.process_time() - cpu_at_ready,  # while streaming
    )


def _client_main(
    config: ClientConfig, ready_q: MpQueue[tuple[int, int]], reports: MpQueue[ClientReport]
) -> None:
    try:
        report = asyncio.run(_client(config, ready_q))
    except BaseException as exc:
        reports.put(
            ClientReport(os.getpid(), [], [], 0, 0, 0, [f"{type(exc).__name__}: {exc}"], 0.0)
        )
        raise
    reports.put(report)


@dataclass
class Clients:
    processes: list[multiprocessing.process.BaseProcess]
    ready_q: MpQueue[tuple[int, int]]
    reports: MpQueue[ClientReport]

    async def wait_ready(self, timeout_s: float) -> int:
        """Subscribers connected (each process tells once all of its own are)."""
        connected = 0
        heard = 0
        deadline = time.monotonic() + timeout_s
        while heard < len(self.processes):
            try:
                _pid, count = await asyncio.to_thread(self.ready_q.get, True, 0.5)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError("the subscribers did not connect in time") from None
                if any(p.exitcode not in (None, 0) for p in self.processes):
                    raise RuntimeError("a client process died while connecting") from None
                continue
            heard += 1
            connected += count
        return connected

    async def results(self, timeout_s: float) -> list[ClientReport]:
        return await gather_reports(self.reports, self.processes, timeout_s)


def start_clients(server: Server, token: str, job_ids: list[str], opts: Options) -> Clients:
    ctx = multiprocessing.get_context("spawn")
    ready_q: MpQueue[tuple[int, int]] = ctx.Queue()
    reports: MpQueue[ClientReport] = ctx.Queue()
    processes: list[multiprocessing.process.BaseProcess] = []
    share, extra = divmod(opts.subscribers, opts.client_processes)
    first = 0
    for i in range(opts.client_processes):
        count = share + (1 if i < extra else 0)
        config = ClientConfig(
            server.host, server.port, token, tuple(job_ids), first, count, opts.timeout_s
        )
        first += count
        process = ctx.Process(
            target=_client_main, args=(config, ready_q, reports), name=f"sse-client-{i}"
        )
        process.daemon = True
        process.start()
        processes.append(process)
    return Clients(processes, ready_q, reports)


# -- one run ----------------------------------------------------------------------------------


async def submit_beacons(server: Server, token: str, opts: Options, go_file: str) -> list[str]:
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0
    ) as client:
        ids = []
        for _ in range(opts.jobs):
            response = await client.post(
                f"{API}/jobs",
                json={
                    "task": "beacon",
                    "input": {"rate": opts.rate, "duration": opts.duration, "go_file": go_file},
                    "timeout_s": opts.duration + opts.timeout_s,
                },
            )
            response.raise_for_status()
            ids.append(str(response.json()["id"]))
        return ids


async def published(server: Server, token: str, job_ids: list[str]) -> int:
    """Beacon events the jobs say they published (their results)."""
    total = 0
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0
    ) as client:
        for job_id in job_ids:
            body = (await client.get(f"{API}/jobs/{job_id}")).json()
            if body["status"] != "completed":
                raise RuntimeError(f"beacon job {job_id} is {body['status']}: {body.get('error')}")
            total += int(body["result"])
    return total


async def run(url: str, opts: Options) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="conveyor_bench_sse_") as tmp:
        go_file = str(Path(tmp) / "go")
        with running_server(url, opts) as server:
            await wait_ready(server)
            token = await login(server)
            job_ids = await submit_beacons(server, token, opts, go_file)
            await asyncio.sleep(1.0)  # the beacon jobs start and wait for the go file
            pid = server.process.pid
            rss_before = process_memory_kb(pid)
            connect_started = time.perf_counter()
            clients = start_clients(server, token, job_ids, opts)
            connected = await clients.wait_ready(opts.timeout_s)
            connect_s = time.perf_counter() - connect_started
            await asyncio.sleep(1.0)  # settle
            rss_connected = process_memory_kb(pid)
            cpu_before, machine_before = process_cpu_s(pid), cpu_sample()
            await asyncio.to_thread(Path(go_file).touch)
            reports = await clients.results(opts.duration + opts.timeout_s)
            cpu_after, machine_after = process_cpu_s(pid), cpu_sample()
            rss_after = process_memory_kb(pid)
            total_published = await published(server, token, job_ids)
            if server.process.poll() is not None:
                raise RuntimeError(f"the server died:\n{server.log_tail()}")
    return figures(
        opts,
        connected=connected,
        connect_s=connect_s,
        reports=reports,
        total_published=total_published,
        server_cpu_s=None if cpu_before is None or cpu_after is None else cpu_after - cpu_before,
        wall_s=machine_after.wall - machine_before.wall,
        machine=cpu_usage(machine_before, machine_after),
        rss=(rss_before, rss_connected, rss_after),
    )


def figures(
    opts: Options,
    *,
    connected: int,
    connect_s: float,
    reports: list[ClientReport],
    total_published: int,
    server_cpu_s: float | None,
    wall_s: float,
    machine: dict[str, float | None],
    rss: tuple[dict[str, int], dict[str, int], dict[str, int]],
) -> dict[str, Any]:
    lat = sorted(lat for r in reports for lat in r.latencies_ms)
    distinct = [n for r in reports for n in r.distinct]
    per_subscriber = total_published // opts.jobs  # each subscriber follows one job
    lost = sum(max(0, per_subscriber - n) for n in distinct)
    lost += per_subscriber * max(0, opts.subscribers - len(distinct))  # reports missing
    delivered = sum(distinct)
    errors = [e for r in reports for e in r.errors]
    before, connected_rss, after = rss
    rss_growth = connected_rss.get("VmRSS", 0) - before.get("VmRSS", 0)
    server_cores = None if server_cpu_s is None else server_cpu_s / max(wall_s, 1e-9)
    client_cpu = sum(r.cpu_s for r in reports)
    result: dict[str, Any] = {
        "bench": "sse",
        "db": opts.db,
        "publisher": opts.publisher,
        "subscribers": opts.subscribers,
        "connected": connected,
        "jobs": opts.jobs,
        "rate_per_job": opts.rate,
        "duration_s": opts.duration,
        "client_processes": opts.client_processes,
        "connect_s": rounded(connect_s, 2),
        "published": total_published,
        "expected_deliveries": per_subscriber * opts.subscribers,
        "delivered": delivered,
        "lost": lost,
        "duplicates": sum(r.duplicates for r in reports),
        "out_of_order": sum(r.out_of_order for r in reports),
        "ended_at_terminal": sum(r.ended for r in reports),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "latency_p50_ms": rounded(percentile(lat, 50), 2),
        "latency_p90_ms": rounded(percentile(lat, 90), 2),
        "latency_p99_ms": rounded(percentile(lat, 99), 2),
        "latency_max_ms": rounded(lat[-1], 2) if lat else None,
        "latency_mean_ms": rounded(statistics.fmean(lat), 2) if lat else None,
        "deliveries_per_s": round(delivered / max(wall_s, 1e-9)),
        "server_cpu_cores": None if server_cores is None else rounded(server_cores, 2),
        "server_cpu_us_per_delivery": (
            None
            if server_cpu_s is None or not delivered
            else rounded(1e6 * server_cpu_s / delivered, 1)
        ),
        "server_cpu_ms_per_subscriber_s": (
            None
            if server_cpu_s is None
            else rounded(1e3 * server_cpu_s / opts.subscribers / max(wall_s, 1e-9), 3)
        ),
        "server_rss_before_mb": rounded(before.get("VmRSS", 0) / 1024, 1),
        "server_rss_connected_mb": rounded(connected_rss.get("VmRSS", 0) / 1024, 1),
        "server_rss_after_mb": rounded(after.get("VmRSS", 0) / 1024, 1),
        "server_rss_peak_mb": rounded(after.get("VmHWM", 0) / 1024, 1),
        "server_rss_per_subscriber_kb": rounded(rss_growth / max(opts.subscribers, 1), 1),
        "client_cpu_cores": rounded(client_cpu / max(wall_s, 1e-9), 2),
        "machine_cores": machine.get("machine_cores"),
        "measured_s": rounded(wall_s, 2),
        "clock": "time.time() at publish (task) vs at receive (client), same machine",
    }
    result["ok"] = (
        lost == 0
        and result["errors"] == 0
        and result["duplicates"] == 0
        and result["out_of_order"] == 0
        and result["ended_at_terminal"] == opts.subscribers
    )
    result["target_met"] = bool(result["ok"] and lat and percentile(lat, 99) < 100.0)
    return result


def summary(f: dict[str, Any]) -> str:
    return (
        f"sse {f['db']}, publisher {f['publisher']}: {f['subscribers']} subscribers "
        f"({f['connected']} connected in {f['connect_s']} s) over {f['client_processes']} "
        f"client processes, {f['jobs']} job(s) x {f['rate_per_job']:g} events/s for "
        f"{f['duration_s']:g} s\n"
        f"  delivered {f['delivered']:,}/{f['expected_deliveries']:,} "
        f"({f['deliveries_per_s']:,}/s): lost {f['lost']}, duplicates {f['duplicates']}, "
        f"out of order {f['out_of_order']}, ended at terminal {f['ended_at_terminal']}, "
        f"errors {f['errors']}\n"
        f"  publish-to-receive latency p50 {f['latency_p50_ms']} ms, p90 "
        f"{f['latency_p90_ms']} ms, p99 {f['latency_p99_ms']} ms, max {f['latency_max_ms']} ms\n"
        f"  server: cpu {f['server_cpu_cores']} cores ({f['server_cpu_us_per_delivery']} us "
        f"per delivery, {f['server_cpu_ms_per_subscriber_s']} ms/s per subscriber), rss "
        f"{f['server_rss_before_mb']} -> {f['server_rss_connected_mb']} MB connected "
        f"({f['server_rss_per_subscriber_kb']} KB per subscriber), peak "
        f"{f['server_rss_peak_mb']} MB | clients {f['client_cpu_cores']} cores, machine "
        f"{f['machine_cores']} cores\n"
        f"  target (p99 < 100 ms, nothing lost): {'met' if f['target_met'] else 'NOT met'}"
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    (result,) = run_rounds(opts, lambda url: run(url, opts), summary)
    return finish(result)


if __name__ == "__main__":
    raise SystemExit(main())
