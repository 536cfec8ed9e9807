"""The SDK: ``app = Conveyor()`` and ``@app.task``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

from conveyor.domain.graph import Step, WorkflowSpec
from conveyor.domain.priority import Priority
from conveyor.domain.retry import Backoff
from conveyor.engine.jobs import MAX_ATTEMPTS_LIMIT, MAX_TIMEOUT_S, check_queue_name
from conveyor.engine.models import TaskDefaults
from conveyor.errors import InvalidInputError, UnknownTaskError, WorkflowDefinitionError
from conveyor.worker.tasks import TaskDefinition
from conveyor.workflows import Workflow, load_workflow_file

F = TypeVar("F", bound=Callable[..., Any])


def _backoff(value: Backoff | float | None) -> Backoff:
    if value is None:
        return Backoff()
    if isinstance(value, Backoff):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Backoff.exponential(float(value))
    raise InvalidInputError("backoff must be a Backoff or a number of seconds")


class Conveyor:
    """A registry of tasks (and workflows). Workers and servers run what it holds.

    >>> app = Conveyor()
    >>> @app.task(retries=3, timeout=30)
    ... async def fetch(ctx, url: str) -> dict: ...
    """

    def __init__(self, name: str = "conveyor") -> None:
        self.name = name
        self.tasks: dict[str, TaskDefinition] = {}
        self.workflows: dict[str, WorkflowSpec] = {}

    @overload
    def task(self, fn: F, /) -> F: ...

    @overload
    def task(
        self,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        retries: int = 2,
        backoff: Backoff | float | None = None,
        timeout: float | None = None,
        priority: Priority | str | int = Priority.MEDIUM,
    ) -> Callable[[F], F]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        retries: int = 2,
        backoff: Backoff | float | None = None,
        timeout: float | None = None,
        priority: Priority | str | int = Priority.MEDIUM,
    ) -> Any:
        """Register a sync or async function as a task.

        ``retries`` is how many times a failed attempt is tried again (so a job has
        ``retries + 1`` attempts); ``timeout`` bounds one attempt, in seconds.
        """

        def register(func: Callable[..., Any]) -> Callable[..., Any]:
            task_name = name or func.__name__
            if task_name in self.tasks:
                raise WorkflowDefinitionError(f"task {task_name!r} is registered twice")
            if isinstance(retries, bool) or not 0 <= retries <= MAX_ATTEMPTS_LIMIT - 1:
                raise WorkflowDefinitionError(
                    f"task {task_name!r}: retries must be between 0 and {MAX_ATTEMPTS_LIMIT - 1}"
                )
            if timeout is not None and (
                isinstance(timeout, bool) or not 0 < timeout <= MAX_TIMEOUT_S
            ):
                raise WorkflowDefinitionError(
                    f"task {task_name!r}: timeout must be > 0 and <= {MAX_TIMEOUT_S} seconds"
                )
            try:
                check_queue_name(queue)
                parsed_priority = Priority.parse(priority)
                parsed_backoff = _backoff(backoff)
            except InvalidInputError as exc:
                raise WorkflowDefinitionError(f"task {task_name!r}: {exc.message}") from None
            defaults = TaskDefaults(
                queue=queue,
                max_attempts=retries + 1,
                backoff=parsed_backoff,
                timeout_s=timeout,
                priority=parsed_priority,
            )
            self.tasks[task_name] = TaskDefinition.build(task_name, func, defaults)
            return func

        if fn is not None:
            return register(fn)
        return register

    # -- workflows ------------------------------------------------------------------------

    def add_workflow(self, workflow: Workflow) -> WorkflowSpec:
        """Register a workflow built with :class:`Workflow` and :class:`Step`."""
        return self._register_workflow(workflow.build())

    def workflow(
        self,
        name: str | None = None,
        *,
        version: str = "1",
        failure_policy: str = "fail_fast",
        parallelism: int | None = None,
    ) -> Callable[[Callable[[], Sequence[Step]]], Callable[[], Sequence[Step]]]:
        """Register the steps a function returns as a workflow::

        @app.workflow("research")
        def research() -> list[Step]:
            return [Step("refine", "refine_question"), Step("scout", ..., ["refine"])]
        """

        def register(fn: Callable[[], Sequence[Step]]) -> Callable[[], Sequence[Step]]:
            self.add_workflow(
                Workflow(
                    name or fn.__name__,
                    list(fn()),
                    version=version,
                    description=inspect.getdoc(fn),
                    failure_policy=failure_policy,
                    parallelism=parallelism,
                )
            )
            return fn

        return register

    def load_workflows(self, path: str | Path) -> list[WorkflowSpec]:
        """Register the workflows of a JSON or YAML file (one workflow, or a list)."""
        return [self._register_workflow(w.build()) for w in load_workflow_file(path)]

    def _register_workflow(self, spec: WorkflowSpec) -> WorkflowSpec:
        if spec.name in self.workflows:
            raise WorkflowDefinitionError(f"workflow {spec.name!r} is registered twice")
        for step in spec.graph.steps:
            if step.task not in self.tasks:
                raise WorkflowDefinitionError(
                    f"workflow {spec.name!r}: step {step.id!r} uses unknown task {step.task!r}"
                )
        self.workflows[spec.name] = spec
        return spec

    # -- the engine's TaskCatalog ---------------------------------------------------------

    def workflow_spec(self, name: str) -> WorkflowSpec | None:
        return self.workflows.get(name)

    def secret_fields(self, name: str) -> tuple[str, ...]:
        definition = self.tasks.get(name)
        return () if definition is None else definition.secret_params

    def task_defaults(self, name: str) -> TaskDefaults | None:
        definition = self.tasks.get(name)
        return None if definition is None else definition.defaults

    def validate_input(self, name: str, data: dict[str, Any]) -> None:
        definition = self.tasks.get(name)
        if definition is None:
            raise UnknownTaskError(f"unknown task {name!r}")
        definition.validate_input(data)

    def validate_step_input(self, name: str, data: dict[str, Any], later: Collection[str]) -> None:
        definition = self.tasks.get(name)
        if definition is None:
            raise UnknownTaskError(f"unknown task {name!r}")
        definition.validate_step_input(data, later)
