"""The SDK: ``app = Conveyor()`` and ``@app.task``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

from conveyor.domain.priority import Priority
from conveyor.domain.retry import Backoff
from conveyor.engine.jobs import check_queue_name
from conveyor.engine.models import TaskDefaults
from conveyor.errors import InvalidInputError, UnknownTaskError, WorkflowDefinitionError
from conveyor.worker.tasks import TaskDefinition

F = TypeVar("F", bound=Callable[..., Any])


def _backoff(value: Backoff | float | None) -> Backoff:
    if value is None:
        return Backoff()
    if isinstance(value, Backoff):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Backoff.exponential(float(value))
    raise WorkflowDefinitionError("backoff must be a Backoff or a number of seconds")


class Conveyor:
    """A registry of tasks (and workflows). Workers and servers run what it holds.

    >>> app = Conveyor()
    >>> @app.task(retries=3, timeout=30)
    ... async def fetch(ctx, url: str) -> dict: ...
    """

    def __init__(self, name: str = "conveyor") -> None:
        self.name = name
        self.tasks: dict[str, TaskDefinition] = {}

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
            if not 0 <= retries <= 99:
                raise WorkflowDefinitionError("retries must be between 0 and 99")
            if timeout is not None and timeout <= 0:
                raise WorkflowDefinitionError("timeout must be positive")
            try:
                check_queue_name(queue)
                parsed_priority = Priority.parse(priority)
            except InvalidInputError as exc:
                raise WorkflowDefinitionError(f"task {task_name!r}: {exc}") from None
            defaults = TaskDefaults(
                queue=queue,
                max_attempts=retries + 1,
                backoff=_backoff(backoff),
                timeout_s=timeout,
                priority=parsed_priority,
            )
            self.tasks[task_name] = TaskDefinition.build(task_name, func, defaults)
            return func

        if fn is not None:
            return register(fn)
        return register

    # -- the engine's TaskCatalog ---------------------------------------------------------

    def task_defaults(self, name: str) -> TaskDefaults | None:
        definition = self.tasks.get(name)
        return None if definition is None else definition.defaults

    def validate_input(self, name: str, data: dict[str, Any]) -> None:
        definition = self.tasks.get(name)
        if definition is None:
            raise UnknownTaskError(f"unknown task {name!r}")
        definition.validate_input(data)
