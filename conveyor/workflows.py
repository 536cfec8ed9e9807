"""Workflow definitions in Python (``Workflow``/``Step``) or in JSON/YAML files."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from conveyor.domain.graph import DEFAULT_MAX_STEPS, Step, WorkflowSpec
from conveyor.errors import WorkflowDefinitionError

__all__ = ["Step", "Workflow", "load_workflow_file"]

_FIELDS = {"name", "steps", "version", "description", "failure_policy", "parallelism"}


@dataclass
class Workflow:
    """``Workflow("research", steps=[Step("a", "task_a"), Step("b", "task_b", ["a"])])``.

    ``failure_policy``: ``fail_fast`` cancels the rest when a step fails for good;
    ``continue`` lets independent branches finish (dependents of the failed step are
    cancelled). ``parallelism`` caps the steps active at once (default: no cap).
    """

    name: str
    steps: Sequence[Step] = field(default_factory=list)
    version: str = "1"
    description: str | None = None
    failure_policy: str = "fail_fast"
    parallelism: int | None = None

    def build(self, *, max_steps: int = DEFAULT_MAX_STEPS) -> WorkflowSpec:
        """Validate: unknown dependency, cycle, duplicate step id... raise a clear error."""
        return WorkflowSpec.build(
            self.name,
            list(self.steps),
            version=self.version,
            description=self.description,
            failure_policy=self.failure_policy,
            parallelism=self.parallelism,
            max_steps=max_steps,
        )

    @classmethod
    def from_json(cls, data: Any) -> Workflow:
        if not isinstance(data, dict):
            raise WorkflowDefinitionError("a workflow must be an object with a name and steps")
        unknown = set(data) - _FIELDS
        if unknown:
            raise WorkflowDefinitionError(
                f"unknown workflow field(s): {', '.join(sorted(unknown))}"
            )
        steps = data.get("steps")
        if not isinstance(steps, list):
            raise WorkflowDefinitionError("a workflow needs a list of steps")
        return cls(
            name=str(data.get("name", "")),
            steps=[Step.from_json(s) for s in steps],
            version=str(data.get("version", "1")),
            description=data.get("description"),
            failure_policy=str(data.get("failure_policy", "fail_fast")),
            parallelism=data.get("parallelism"),
        )


def load_workflow_file(path: str | Path) -> list[Workflow]:
    """Read one workflow or a list of them from a ``.json``, ``.yaml`` or ``.yml`` file."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise WorkflowDefinitionError(f"cannot read {file}: {exc}") from exc
    try:
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise WorkflowDefinitionError(f"{file} is not valid {file.suffix[1:]}: {exc}") from exc
    items: Iterable[Any] = data if isinstance(data, list) else [data]
    return [Workflow.from_json(item) for item in items]
