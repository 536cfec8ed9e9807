"""Heartbeats and lease renewal on a thread of their own.

Task code shares the worker's event loop; a step that spins the CPU without yielding
would starve a heartbeat scheduled there, the lease would expire and another worker would
"rescue" a job that is still running. So renewal runs on its own thread, with its own event
loop and its own database connection.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from conveyor.engine.core import Engine, EngineSettings
from conveyor.engine.models import LeaseRenewal
from conveyor.store.database import Database

log = logging.getLogger("conveyor.worker.heartbeat")

HeldLeases = Callable[[], tuple[list[tuple[str, str]], int]]
Deliver = Callable[[LeaseRenewal, float], None]


class HeartbeatThread(threading.Thread):
    def __init__(
        self,
        *,
        worker_id: str,
        open_db: Callable[[], Database],
        settings: EngineSettings,
        interval_s: float,
        lease_s: float,
        held: HeldLeases,
        deliver: Deliver,
    ) -> None:
        super().__init__(name=f"conveyor-heartbeat-{worker_id}", daemon=True)
        self._worker_id = worker_id
        self._open_db = open_db
        self._settings = settings
        self._interval_s = interval_s
        self._lease_s = lease_s
        self._held = held
        self._deliver = deliver
        self._stop_event = threading.Event()
        self._beat_now = threading.Event()
        self.beats = 0
        self.max_gap_s = 0.0

    def stop(self) -> None:
        self._stop_event.set()
        self._beat_now.set()

    def beat_soon(self) -> None:
        """Renew now (e.g. right after a claim) instead of at the next interval."""
        self._beat_now.set()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        db = self._open_db()
        engine = Engine(db, settings=self._settings)
        last = time.monotonic()
        try:
            while not self._stop_event.is_set():
                held, load = self._held()
                sent = time.monotonic()
                try:
                    renewal = await engine.renew_leases(
                        self._worker_id, held, load=load, lease_s=self._lease_s
                    )
                except Exception as exc:  # keep beating: the database may come back
                    log.warning("heartbeat failed: %s", exc)
                else:
                    self.beats += 1
                    self.max_gap_s = max(self.max_gap_s, sent - last)
                    last = sent
                    self._deliver(renewal, sent)
                self._beat_now.wait(self._interval_s)
                self._beat_now.clear()
        finally:
            await db.close()
