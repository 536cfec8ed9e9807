"""Layout of an execution's DAG for a server-rendered SVG.

Steps are placed in columns by depth (the longest path from a root), ordered within a
column by the mean row of their parents so edges cross less, and joined by curves from
the right edge of a parent to the left edge of its child. The template draws it; labels
go through autoescaping like any other text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

NODE_W = 180
NODE_H = 48
GAP_X = 56
GAP_Y = 14
PAD = 12
BAR_H = 4
MAX_LABEL = 22
#: above this many steps the graph is not drawn (the steps table still lists them all)
MAX_NODES = 400


@dataclass(frozen=True, slots=True)
class StepNode:
    """What the layout needs to know of a step."""

    step_id: str
    depends_on: Sequence[str]
    status: str
    progress: int = 0


@dataclass(frozen=True, slots=True)
class PlacedNode:
    index: int  # position in the steps table (anchors link to #step-<index>)
    step_id: str
    label: str
    status: str
    progress: int
    x: int
    y: int

    @property
    def bar_width(self) -> int:
        return round((NODE_W - 2 * PAD) * max(0, min(100, self.progress)) / 100)


@dataclass(frozen=True, slots=True)
class Edge:
    path: str
    done: bool  # the parent completed: drawn solid


@dataclass(frozen=True, slots=True)
class Layout:
    width: int
    height: int
    nodes: list[PlacedNode]
    edges: list[Edge]
    node_w: int = NODE_W
    node_h: int = NODE_H
    pad: int = PAD
    bar_h: int = BAR_H


def _label(step_id: str) -> str:
    return step_id if len(step_id) <= MAX_LABEL else step_id[: MAX_LABEL - 1] + "…"


def _depths(steps: Sequence[StepNode]) -> dict[str, int]:
    """Longest distance from a root, for each step (dependencies outside the list and
    cycles, which the engine refuses anyway, are ignored)."""
    known = {s.step_id: s for s in steps}
    depth: dict[str, int] = {}
    visiting: set[str] = set()

    def visit(step_id: str) -> int:
        if step_id in depth:
            return depth[step_id]
        if step_id in visiting:
            return 0
        visiting.add(step_id)
        parents = [p for p in known[step_id].depends_on if p in known]
        found = 1 + max((visit(p) for p in parents), default=-1)
        visiting.discard(step_id)
        depth[step_id] = found
        return found

    # iterative deepening would be needed only for chains deeper than the recursion
    # limit; MAX_NODES keeps drawn graphs far below it
    for step in steps:
        visit(step.step_id)
    return depth


def layout(steps: Sequence[StepNode]) -> Layout | None:
    """Positions for every step and edge, or ``None`` when there is nothing to draw or
    too much (see :data:`MAX_NODES`)."""
    if not steps or len(steps) > MAX_NODES:
        return None
    index = {s.step_id: i for i, s in enumerate(steps)}
    depth = _depths(steps)
    columns: dict[int, list[StepNode]] = {}
    for step in steps:
        columns.setdefault(depth[step.step_id], []).append(step)
    row: dict[str, float] = {}
    for level in sorted(columns):
        members = columns[level]

        def weight(step: StepNode) -> tuple[float, int]:
            parents = [row[p] for p in step.depends_on if p in row]
            mean = sum(parents) / len(parents) if parents else float(index[step.step_id])
            return (mean, index[step.step_id])

        members.sort(key=weight)
        for position, step in enumerate(members):
            row[step.step_id] = float(position)
    tallest = max(len(c) for c in columns.values())
    height = PAD * 2 + tallest * NODE_H + (tallest - 1) * GAP_Y
    width = PAD * 2 + len(columns) * NODE_W + (len(columns) - 1) * GAP_X
    placed: dict[str, PlacedNode] = {}
    for level, members in columns.items():
        column_h = len(members) * NODE_H + (len(members) - 1) * GAP_Y
        top = PAD + (height - 2 * PAD - column_h) // 2
        for position, step in enumerate(members):
            placed[step.step_id] = PlacedNode(
                index=index[step.step_id],
                step_id=step.step_id,
                label=_label(step.step_id),
                status=step.status,
                progress=step.progress,
                x=PAD + level * (NODE_W + GAP_X),
                y=top + position * (NODE_H + GAP_Y),
            )
    edges = []
    for step in steps:
        child = placed[step.step_id]
        for parent_id in step.depends_on:
            parent = placed.get(parent_id)
            if parent is None:
                continue
            x1, y1 = parent.x + NODE_W, parent.y + NODE_H // 2
            x2, y2 = child.x, child.y + NODE_H // 2
            bend = (x2 - x1) // 2
            edges.append(
                Edge(
                    path=f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}",
                    done=parent.status == "completed",
                )
            )
    nodes = sorted(placed.values(), key=lambda n: n.index)
    return Layout(width=width, height=height, nodes=nodes, edges=edges)
