"""Queue throughput as the dashboard measures it.

The engine reports each queue's counts but no rate, so the queues page derives one: the
number of finished jobs seen at successive refreshes of the page, over the last minute.
Counts are global (every replica reads the same database), so any replica's samples give
the same rate; the first refresh has nothing to compare with and shows no rate.
"""

from __future__ import annotations

from collections import deque

WINDOW_S = 60.0
MIN_SPAN_S = 1.0


class ThroughputMeter:
    """Finished jobs per second, per queue, from timestamped samples of their count."""

    def __init__(self) -> None:
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def observe(self, queue: str, finished: int, now: float) -> float | None:
        """Record ``finished`` at ``now`` (monotonic seconds); the rate over the window,
        or ``None`` until two samples at least a second apart exist."""
        samples = self._samples.setdefault(queue, deque(maxlen=256))
        if samples and finished < samples[-1][1]:
            samples.clear()  # a clean-up deleted finished jobs: start over
        samples.append((now, finished))
        while len(samples) > 2 and now - samples[1][0] >= WINDOW_S:
            samples.popleft()
        first_at, first_count = samples[0]
        span = now - first_at
        if span < MIN_SPAN_S:
            return None
        return (finished - first_count) / span
