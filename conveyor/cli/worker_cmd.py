"""``conveyor worker``: run until told to stop, then drain."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

from conveyor.app import Conveyor
from conveyor.cli.common import console, run
from conveyor.logs import configure_logging
from conveyor.runtime import Runtime
from conveyor.settings import Settings


def run_worker(
    app: Conveyor,
    settings: Settings,
    concurrency: int,
    queues: list[str] | None,
    worker_id: str | None,
) -> None:
    configure_logging()

    async def go() -> None:
        runtime = Runtime(app, settings)
        await runtime.open()
        worker = runtime.worker(
            concurrency=concurrency, queues=queues, kind="process", worker_id=worker_id
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.request_stop)
        await worker.start()
        console.print(
            f"worker [bold]{worker.worker_id}[/] running {len(app.tasks)} task(s) "
            f"with {concurrency} slot(s); SIGTERM drains, a second SIGTERM stops now",
            highlight=False,
        )
        await worker.wait_stopped()
        await runtime.close()

    run(go())
    # task code still running in threads cannot be interrupted; its jobs were released
    # (or will be recovered after their lease), so do not wait for it
    if any(t.name.startswith("conveyor-task") for t in threading.enumerate()):
        os._exit(0)
