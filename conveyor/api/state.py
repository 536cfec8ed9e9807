"""What a running API process holds (on ``app.state.conveyor``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conveyor.api.frames import SseFrames
from conveyor.app import Conveyor
from conveyor.auth.tickets import StreamTickets
from conveyor.auth.users import Accounts
from conveyor.engine.core import Engine
from conveyor.events.hub import EventHub
from conveyor.runtime import Runtime
from conveyor.settings import Settings


@dataclass
class ApiState:
    settings: Settings
    app: Conveyor
    runtime: Runtime
    engine: Engine
    accounts: Accounts
    hub: EventHub
    tickets: StreamTickets
    workers: list[Any] = field(default_factory=list)
    metrics: Any = None
    sse_frames: SseFrames = field(default_factory=SseFrames)
