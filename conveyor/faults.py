"""Test-only fault points: named places where a test makes a process misbehave.

Off unless ``CONVEYOR_FAULTS`` names them, e.g. ``CONVEYOR_FAULTS=mid_step:kill`` or
``CONVEYOR_FAULTS=in_complete_txn:exit@3,drop_notify``. Production code asks
:func:`active` (a set lookup) or calls :func:`hit` (a dict lookup when nothing is armed).

Actions: ``exit`` (``os._exit(3)``, no clean-up), ``kill`` (SIGKILL to self), ``sleep=<s>``,
``raise`` (RuntimeError). ``@N`` fires only on the N-th hit of that point in the process.

Points:

* ``after_claim``: inside the claim transaction, after the claim, before COMMIT.
* ``mid_step``: a step's attempt started, just before its code runs.
* ``after_effect_before_checkpoint``: the step's code returned; its result is not yet
  committed.
* ``in_complete_txn``: inside the transaction recording results, before COMMIT.
* ``after_commit_before_response``: the API committed a submission, before answering.
* ``mid_recovery_sweep``: the lease-recovery sweep updated rows, before COMMIT.
* ``drop_notify`` (a switch): cross-process notifications are not sent.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass

_ENV = "CONVEYOR_FAULTS"


@dataclass
class _Point:
    action: str
    on_hit: int | None  # fire only on this hit (1-based); None: every hit
    hits: int = 0


def _parse(value: str) -> dict[str, _Point]:
    points: dict[str, _Point] = {}
    for item in value.split(","):
        name, _, spec = item.strip().partition(":")
        if not name:
            continue
        action, _, nth = (spec or "on").partition("@")
        points[name] = _Point(action, int(nth) if nth else None)
    return points


_points = _parse(os.environ.get(_ENV, ""))


def active(name: str) -> bool:
    return name in _points


def hit(name: str) -> None:
    """Act at fault point ``name`` if a test armed it."""
    point = _points.get(name)
    if point is None:
        return
    point.hits += 1
    if point.on_hit is not None and point.hits != point.on_hit:
        return
    action = point.action
    sys.stderr.write(f"conveyor fault point {name}: {action} (pid {os.getpid()})\n")
    sys.stderr.flush()
    if action == "exit":
        os._exit(3)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action.startswith("sleep="):
        time.sleep(float(action.split("=", 1)[1]))
        return
    if action == "raise":
        raise RuntimeError(f"fault point {name}")


def reload() -> None:
    """Re-read the environment (for tests that arm points after import)."""
    global _points
    _points = _parse(os.environ.get(_ENV, ""))
