"""Task definitions: a user function plus what it takes, returns and how it runs.

Inputs are JSON objects whose keys are the function's parameters, validated with a
Pydantic model built from the signature (so a parameter annotated with a model receives
that model). Results are serialised to JSON through the return annotation, which also
gives the output JSON Schema the API exposes.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    SecretStr,
    TypeAdapter,
    ValidationError,
    create_model,
)

from conveyor.engine.models import TaskDefaults
from conveyor.errors import InvalidInputError, WorkflowDefinitionError
from conveyor.store.types import dumps as _dumps


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as ``[{loc, msg}]`` (no input values: they may be secrets)."""
    return [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": err.get("msg", "invalid")}
        for err in exc.errors(include_url=False, include_input=False)
    ]


@dataclass(frozen=True)
class TaskDefinition:
    """A registered task."""

    name: str
    fn: Callable[..., Any]
    defaults: TaskDefaults
    is_async: bool
    context_param: str | None
    params: tuple[str, ...]
    var_keyword: bool
    input_model: type[BaseModel]
    output_adapter: TypeAdapter[Any]
    description: str | None
    #: parameters annotated SecretStr: sealed before the job is stored
    secret_params: tuple[str, ...] = ()

    @classmethod
    def build(cls, name: str, fn: Callable[..., Any], defaults: TaskDefaults) -> TaskDefinition:
        if not callable(fn):
            raise WorkflowDefinitionError(f"task {name!r} is not callable")
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception as exc:  # unresolvable forward reference in user code
            raise WorkflowDefinitionError(
                f"task {name!r}: cannot resolve its type annotations ({exc})"
            ) from exc
        signature = inspect.signature(fn)
        context_param: str | None = None
        fields: dict[str, Any] = {}
        var_keyword = False
        for index, (pname, param) in enumerate(signature.parameters.items()):
            annotation = hints.get(pname, Any)
            if index == 0 and _is_context(pname, annotation):
                context_param = pname
                continue
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                var_keyword = True
                continue
            if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
                raise WorkflowDefinitionError(
                    f"task {name!r}: parameter {pname!r} must be passable by name"
                )
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[pname] = (annotation, default)
        model = create_model(f"{name}_input", __base__=_Strict, **fields)
        secret_params = tuple(p for p, (annotation, _) in fields.items() if _is_secret(annotation))
        returns = hints.get("return", Any)
        return cls(
            name=name,
            fn=fn,
            defaults=defaults,
            is_async=inspect.iscoroutinefunction(fn),
            context_param=context_param,
            params=tuple(fields),
            var_keyword=var_keyword,
            input_model=model,
            output_adapter=TypeAdapter(Any if returns is None else returns),
            description=inspect.getdoc(fn),
            secret_params=secret_params,
        )

    def validate_input(self, data: dict[str, Any]) -> None:
        """Raise :class:`InvalidInputError` listing every problem with ``data``."""
        self.parse_input(data)

    def validate_step_input(self, data: dict[str, Any], later: Collection[str]) -> None:
        """Check a step's input before its execution starts. Parameters named in
        ``later`` are filled by dependencies' outputs when the step runs: problems with
        them are not the caller's."""
        try:
            self.parse_input(data, ignore_unknown=True)
        except InvalidInputError as exc:
            own = [d for d in exc.details if not (d["loc"] and d["loc"][0] in later)]
            if own or not exc.details:
                raise InvalidInputError(exc.message, details=own) from None

    def parse_input(
        self,
        data: dict[str, Any] | None,
        *,
        dependencies: dict[str, Any] | None = None,
        ignore_unknown: bool = False,
    ) -> dict[str, Any]:
        """Keyword arguments for the function.

        For a step, ``dependencies`` are the outputs of the steps it depends on: a
        parameter named after such a step receives its output, and keys of the
        execution input the task does not take are ignored.
        """
        merged = dict(data or {})
        if dependencies:
            for step_id, output in dependencies.items():
                if step_id in self.params:
                    merged[step_id] = output
        extra: dict[str, Any] = {}
        if ignore_unknown or self.var_keyword:
            known = {k: v for k, v in merged.items() if k in self.params}
            extra = {k: v for k, v in merged.items() if k not in self.params}
            merged = known
        try:
            # JSON types only ("3" is not an int), checked in JSON mode so that ISO
            # strings still become datetimes, UUIDs and such
            model = self.input_model.model_validate_json(_dumps(merged), strict=True)
        except ValidationError as exc:
            raise InvalidInputError(
                f"invalid input for task {self.name!r}", details=validation_details(exc)
            ) from None
        kwargs = {name: getattr(model, name) for name in self.params}
        if self.var_keyword and not ignore_unknown:
            kwargs.update(extra)
        return kwargs

    def dump_output(self, value: Any) -> Any:
        """The result as JSON-compatible data."""
        return self.output_adapter.dump_python(value, mode="json")

    def output_schema(self) -> dict[str, Any]:
        return self.output_adapter.json_schema()

    def input_schema(self) -> dict[str, Any]:
        return self.input_model.model_json_schema()


def _is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    return any(_is_secret(arg) for arg in typing.get_args(annotation))


def _is_context(name: str, annotation: Any) -> bool:
    if name in ("ctx", "context"):
        return True
    return getattr(annotation, "__name__", None) == "Context"
