"""A line diff between two document versions (JSON content is pretty-printed first, so
a changed field shows as a changed line)."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from typing import Any

_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")
#: beyond this many lines per side the diff is not computed (difflib is quadratic)
MAX_LINES = 20_000


@dataclass(frozen=True, slots=True)
class DiffLine:
    kind: str  # add | del | same | hunk
    text: str
    old_no: int | None
    new_no: int | None


def as_text(content: Any) -> str:
    """The text a version is compared as."""
    if isinstance(content, str):
        return content
    return json.dumps(content, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def unified(old: Any, new: Any, context: int = 3) -> list[DiffLine] | None:
    """The changed lines with ``context`` lines around them; ``[]`` when equal, ``None``
    when too large to compare."""
    a = as_text(old).splitlines()
    b = as_text(new).splitlines()
    if len(a) > MAX_LINES or len(b) > MAX_LINES:
        return None
    lines: list[DiffLine] = []
    old_no = new_no = 0
    for raw in difflib.unified_diff(a, b, n=context, lineterm=""):
        if raw.startswith(("---", "+++")) and not lines:
            continue
        hunk = _HUNK.match(raw)
        if hunk:
            old_no, new_no = int(hunk.group(1)), int(hunk.group(2))
            lines.append(DiffLine("hunk", raw, None, None))
        elif raw.startswith("+"):
            lines.append(DiffLine("add", raw[1:], None, new_no))
            new_no += 1
        elif raw.startswith("-"):
            lines.append(DiffLine("del", raw[1:], old_no, None))
            old_no += 1
        else:
            lines.append(DiffLine("same", raw[1:], old_no, new_no))
            old_no += 1
            new_no += 1
    return lines
