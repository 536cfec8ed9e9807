"""Workflow graphs: steps with dependencies, validated once, then only read."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from conveyor.errors import WorkflowDefinitionError

FailurePolicy = Literal["fail_fast", "continue"]
FAILURE_POLICIES: tuple[FailurePolicy, ...] = ("fail_fast", "continue")
_STEP_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}\Z")
_WORKFLOW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}\Z")
DEFAULT_MAX_STEPS = 2000


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a workflow: a run of ``task`` after the steps it depends on."""

    id: str
    task: str
    depends_on: tuple[str, ...] = ()
    input: Mapping[str, Any] | None = None

    def __init__(
        self,
        id: str,
        task: str,
        depends_on: Iterable[str] = (),
        input: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(depends_on, str):
            depends_on = (depends_on,)
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "task", task)
        object.__setattr__(self, "depends_on", tuple(depends_on))
        object.__setattr__(self, "input", None if input is None else dict(input))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "task": self.task,
            "depends_on": list(self.depends_on),
        }
        if self.input:
            data["input"] = dict(self.input)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Step:
        if not isinstance(data, Mapping):
            raise WorkflowDefinitionError("each step must be an object with id and task")
        unknown = set(data) - {"id", "task", "depends_on", "input"}
        if unknown:
            raise WorkflowDefinitionError(f"unknown step field(s): {', '.join(sorted(unknown))}")
        if not isinstance(data.get("id"), str) or not isinstance(data.get("task"), str):
            raise WorkflowDefinitionError("each step needs a string id and a string task")
        deps = data.get("depends_on") or []
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise WorkflowDefinitionError(f"step {data['id']!r}: depends_on must be a list of ids")
        step_input = data.get("input")
        if step_input is not None and not isinstance(step_input, Mapping):
            raise WorkflowDefinitionError(f"step {data['id']!r}: input must be an object")
        return cls(data["id"], data["task"], deps, step_input)


@dataclass(frozen=True, slots=True)
class Graph:
    """A validated DAG: steps in a topological order, with both edge directions."""

    steps: tuple[Step, ...]
    order: tuple[str, ...]  # topological, ties in declaration order
    dependents: Mapping[str, tuple[str, ...]]
    by_id: Mapping[str, Step] = field(repr=False)

    @property
    def roots(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.steps if not s.depends_on)

    @property
    def sinks(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.steps if not self.dependents[s.id])

    def downstream(self, step_ids: Iterable[str]) -> set[str]:
        """Every step that depends, directly or not, on any of ``step_ids``."""
        seen: set[str] = set()
        stack = list(step_ids)
        while stack:
            for child in self.dependents[stack.pop()]:
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return seen

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.steps]


def build_graph(steps: Sequence[Step], *, max_steps: int = DEFAULT_MAX_STEPS) -> Graph:
    """Validate ``steps`` and return the graph; every problem is named in the error."""
    if not steps:
        raise WorkflowDefinitionError("a workflow needs at least one step")
    if len(steps) > max_steps:
        raise WorkflowDefinitionError(f"a workflow may have at most {max_steps} steps")
    by_id: dict[str, Step] = {}
    for step in steps:
        if not _STEP_ID.match(step.id):
            raise WorkflowDefinitionError(
                f"invalid step id {step.id!r}: start with a letter or _, then up to 99 "
                "letters, digits, _ . -"
            )
        if step.id in by_id:
            raise WorkflowDefinitionError(f"duplicate step id {step.id!r}")
        if not step.task:
            raise WorkflowDefinitionError(f"step {step.id!r} has no task")
        by_id[step.id] = step
    dependents: dict[str, list[str]] = {s.id: [] for s in steps}
    for step in steps:
        if len(set(step.depends_on)) != len(step.depends_on):
            raise WorkflowDefinitionError(f"step {step.id!r} lists a dependency twice")
        for dep in step.depends_on:
            if dep == step.id:
                raise WorkflowDefinitionError(f"step {step.id!r} depends on itself")
            if dep not in by_id:
                raise WorkflowDefinitionError(f"step {step.id!r} depends on unknown step {dep!r}")
            dependents[dep].append(step.id)
    order = _topological_order(steps, dependents)
    return Graph(
        steps=tuple(steps),
        order=tuple(order),
        dependents={k: tuple(v) for k, v in dependents.items()},
        by_id=by_id,
    )


def _topological_order(steps: Sequence[Step], dependents: Mapping[str, list[str]]) -> list[str]:
    remaining = {s.id: len(s.depends_on) for s in steps}
    ready = [s.id for s in steps if not s.depends_on]
    order: list[str] = []
    while ready:
        current = ready.pop(0)
        order.append(current)
        for child in dependents[current]:
            remaining[child] -= 1
            if remaining[child] == 0:
                ready.append(child)
    if len(order) != len(steps):
        raise WorkflowDefinitionError(f"dependency cycle: {' -> '.join(_find_cycle(steps))}")
    return order


def _find_cycle(steps: Sequence[Step]) -> list[str]:
    deps = {s.id: s.depends_on for s in steps}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in deps[node]:
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for step in steps:
        if step.id not in state:
            cycle = visit(step.id)
            if cycle:
                return list(reversed(cycle))
    return []


@dataclass(frozen=True, slots=True)
class WorkflowSpec:
    """A named workflow: its graph and how an execution of it behaves."""

    name: str
    graph: Graph
    version: str = "1"
    description: str | None = None
    failure_policy: FailurePolicy = "fail_fast"
    parallelism: int | None = None

    @classmethod
    def build(
        cls,
        name: str,
        steps: Sequence[Step],
        *,
        version: str = "1",
        description: str | None = None,
        failure_policy: str = "fail_fast",
        parallelism: int | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> WorkflowSpec:
        if not _WORKFLOW_NAME.match(name or ""):
            raise WorkflowDefinitionError(
                f"invalid workflow name {name!r}: 1-100 letters, digits, _ . : -"
            )
        policy = check_failure_policy(failure_policy)
        check_parallelism(parallelism)
        return cls(
            name=name,
            graph=build_graph(steps, max_steps=max_steps),
            version=str(version),
            description=description,
            failure_policy=policy,
            parallelism=parallelism,
        )


def check_failure_policy(value: str) -> FailurePolicy:
    for policy in FAILURE_POLICIES:
        if value == policy:
            return policy
    raise WorkflowDefinitionError(
        f"failure_policy must be one of {', '.join(FAILURE_POLICIES)}, not {value!r}"
    )


def check_parallelism(value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not 1 <= value <= 10_000):
        raise WorkflowDefinitionError("parallelism must be between 1 and 10000")
