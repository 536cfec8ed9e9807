"""GC settings of long-running processes (in a child process: they are process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json, sys
from conveyor.gc_tuning import tune_for_service
default = gc.get_threshold()
tune_for_service(int(sys.argv[1]))
print(json.dumps({"default": default, "now": gc.get_threshold(),
                  "frozen": gc.get_freeze_count()}))
"""


def probe(young_threshold: int) -> dict[str, list[int] | int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(young_threshold)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, list[int] | int] = json.loads(out)
    return result


def test_the_young_generation_grows_and_start_up_objects_are_frozen() -> None:
    found = probe(50_000)
    assert isinstance(found["default"], list) and isinstance(found["now"], list)
    assert found["now"][0] == 50_000
    assert found["now"][1:] == found["default"][1:]
    assert isinstance(found["frozen"], int) and found["frozen"] > 1000


def test_zero_keeps_pythons_thresholds_but_still_freezes() -> None:
    found = probe(0)
    assert found["now"] == found["default"]
    assert isinstance(found["frozen"], int) and found["frozen"] > 1000
