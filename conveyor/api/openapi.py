"""The published OpenAPI document: FastAPI's, made exact for this server's app.

* every error is ``application/problem+json`` (FastAPI documents its own 422 shape);
* operations with a body also document 400 (a body that is not JSON at all);
* optional headers and query parameters are plain types (a ``null`` header does not
  exist on the wire);
* ``POST /jobs`` lists the app's tasks, each with its input schema, and executions list
  the app's workflows, so generated clients and fuzzers send what the server accepts.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from conveyor.api.errors import PROBLEM_JSON, Problem
from conveyor.app import Conveyor

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def build_openapi(api: FastAPI, app: Conveyor, tags: list[dict[str, str]]) -> dict[str, Any]:
    schema = get_openapi(
        title=api.title,
        version=api.version,
        description=api.description,
        routes=api.routes,
        tags=tags,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in components["Problem"].pop("$defs", {}).items():
        components[name] = definition
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            _problems_everywhere(operation)
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _without_null(parameter.get("schema", {}))
    _publish_tasks(components, app)
    _publish_workflows(components, app)
    return schema


def _problems_everywhere(operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    problem = {"content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}}}
    if "422" in responses:
        responses["422"] = {"description": "Invalid request", **problem}
    if "requestBody" in operation and "400" not in responses:
        responses["400"] = {"description": "The body is not JSON", **problem}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    variants = schema.get("anyOf")
    if not variants:
        return schema
    kept = [v for v in variants if v.get("type") != "null"]
    if len(kept) == 1:
        merged = {k: v for k, v in schema.items() if k != "anyOf"}
        return {**kept[0], **merged}
    return schema


def _hoist(components: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    for name, definition in schema.pop("$defs", {}).items():
        components.setdefault(name, definition)
    return schema


def _publish_tasks(components: dict[str, Any], app: Conveyor) -> None:
    job_create = components.get("JobCreate")
    if job_create is None or not app.tasks:
        return
    variants = []
    for name, definition in sorted(app.tasks.items()):
        input_schema = _hoist(
            components,
            definition.input_model.model_json_schema(ref_template="#/components/schemas/{model}"),
        )
        input_schema["title"] = f"{name} input"
        needs_input = bool(input_schema.get("required"))
        variant: dict[str, Any] = {
            "type": "object",
            # a one-value enum rather than const: every OpenAPI tool understands it
            "properties": {
                "task": {"type": "string", "enum": [name]},
                # no input (or null) means {}: allowed when no field is required
                "input": input_schema
                if needs_input
                else {"anyOf": [input_schema, {"type": "null"}]},
            },
            "required": ["task", "input"] if needs_input else ["task"],
        }
        variants.append(variant)
    job_create["properties"]["task"] = {
        "type": "string",
        "enum": sorted(app.tasks),
        "title": "Task",
    }
    job_create["oneOf"] = variants
    first = sorted(app.tasks)[0]
    job_create["example"] = {"task": first, "input": _example_input(components, app, first)}


def _example_input(components: dict[str, Any], app: Conveyor, task: str) -> dict[str, Any]:
    schema = app.tasks[task].input_model.model_json_schema()
    values = {"integer": 1, "number": 1.5, "boolean": True, "string": "text"}
    return {
        field: values.get(schema["properties"][field].get("type") or "")
        for field in schema.get("required", [])
    }


def _publish_workflows(components: dict[str, Any], app: Conveyor) -> None:
    create = components.get("ExecutionCreate")
    if create is None:
        return
    names = sorted(app.workflows)
    workflow = create["properties"].get("workflow")
    if names and workflow is not None:
        create["properties"]["workflow"] = {
            "anyOf": [{"type": "string", "enum": names}, {"type": "null"}],
            "title": "Workflow",
        }
        create["examples"] = [{"workflow": names[0], "input": {}}]
    step = components.get("StepIn")
    if step is not None and app.tasks:
        step["properties"]["task"] = {"type": "string", "enum": sorted(app.tasks), "title": "Task"}
