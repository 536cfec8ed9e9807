"""Test-only fault points: named places where a test can make a process misbehave.

Off unless ``CONVEYOR_FAULTS`` names them, e.g. ``CONVEYOR_FAULTS=drop_notify`` or
``CONVEYOR_FAULTS=mid_step:kill``. Production code asks :func:`active` (cheap: a set
lookup) and, where a point may crash the process, calls :func:`hit`.

Points: ``drop_notify`` (cross-process notifications are not sent: wake-ups and live
events must still arrive by polling).
"""

from __future__ import annotations

import os
import signal
import sys
import time

_ENV = "CONVEYOR_FAULTS"


def _parse(value: str) -> dict[str, str]:
    points: dict[str, str] = {}
    for item in value.split(","):
        name, _, action = item.strip().partition(":")
        if name:
            points[name] = action or "on"
    return points


_points = _parse(os.environ.get(_ENV, ""))


def active(name: str) -> bool:
    return name in _points


def hit(name: str) -> None:
    """Act at fault point ``name`` if a test armed it: ``exit``, ``kill`` (SIGKILL
    self), ``sleep=<s>``, or ``raise``."""
    action = _points.get(name)
    if action is None:
        return
    if action == "exit":
        sys.stderr.write(f"fault {name}: exit\n")
        os._exit(3)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action.startswith("sleep="):
        time.sleep(float(action.split("=", 1)[1]))
        return
    if action == "raise":
        raise RuntimeError(f"fault {name}")


def reload() -> None:
    """Re-read the environment (tests that set it after import)."""
    global _points
    _points = _parse(os.environ.get(_ENV, ""))
