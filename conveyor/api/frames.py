"""SSE frames, encoded once per event however many streams carry it."""

from __future__ import annotations

import json
from collections import OrderedDict

from sse_starlette import ServerSentEvent

from conveyor.domain.events import Event
from conveyor.engine.views import event_json


class SseFrames:
    """A bounded cache of encoded frames by event id (ids are unique per database, and
    one API process serves one database, so the cache lives on its state).

    A thousand subscribers of one execution cost one ``json.dumps`` per event instead
    of a thousand.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._frames: OrderedDict[int, bytes] = OrderedDict()

    def frame(self, event: Event) -> bytes:
        found = self._frames.get(event.id)
        if found is None:
            found = ServerSentEvent(
                data=json.dumps(event_json(event), separators=(",", ":")),
                event=event.type,
                id=str(event.id),
            ).encode()
            self._frames[event.id] = found
            if len(self._frames) > self._capacity:
                self._frames.popitem(last=False)
        return found

    def frames(self, batch: list[Event]) -> bytes:
        """Several events as one chunk: one socket write instead of one per event."""
        return b"".join(self.frame(event) for event in batch)
