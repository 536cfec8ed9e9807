"""HTML form fields generated from JSON Schemas (a workflow's input, a question's answer),
and the submitted strings turned back into JSON values.

Simple schemas (string, integer, number, boolean, enum, optionally nullable) get a
matching control; anything else gets a JSON text area. The browser's own validation is
off (``novalidate``): the server validates, and shows every problem next to its field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: a submitted value that could not be converted (the field shows why)
_INVALID = object()


@dataclass
class Field:
    """One form control."""

    name: str  # the JSON key (a property or a question id)
    label: str
    kind: str  # text | textarea | integer | number | boolean | select | json
    required: bool = False
    options: list[tuple[str, str]] = field(default_factory=list)  # (value, label)
    hint: str = ""
    value: str = ""
    errors: list[str] = field(default_factory=list)
    enum: list[Any] = field(default_factory=list)

    @property
    def input_name(self) -> str:
        """The form field's name: prefixed, so no key can clash with ``csrf_token``."""
        return f"in.{self.name}"


def _nullable(schema: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
    """``anyOf: [X, {type: null}]`` (Pydantic's ``X | None``) as ``(X, True)``."""
    variants = schema.get("anyOf")
    if isinstance(variants, list):
        others = [v for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
        if len(others) == 1 and len(others) < len(variants) and isinstance(others[0], dict):
            return {**schema, **others[0]}, True
    return schema, False


def _hint(schema: Mapping[str, Any]) -> str:
    parts = []
    low, high = schema.get("minLength"), schema.get("maxLength")
    if low is not None and high is not None:
        parts.append(f"{low}-{high} characters")
    elif low is not None:
        parts.append(f"at least {low} characters")
    elif high is not None:
        parts.append(f"at most {high} characters")
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        parts.append(f"{low} to {high}")
    elif low is not None:
        parts.append(f">= {low}")
    elif high is not None:
        parts.append(f"<= {high}")
    description = schema.get("description")
    if isinstance(description, str):
        parts.insert(0, description)
    return "; ".join(parts)


def _shown(value: Any) -> str:
    """A JSON value as the text a control holds."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, indent=2, ensure_ascii=False)


def field_for(
    name: str, schema: Mapping[str, Any], *, label: str | None = None, required: bool = False
) -> Field:
    """The control for one value of ``schema``."""
    inner, nullable = _nullable(schema)
    title = label or str(inner.get("title") or name)
    made = Field(name=name, label=title, kind="json", required=required and not nullable)
    made.hint = _hint(inner)
    enum = inner.get("enum")
    kind = inner.get("type")
    if isinstance(enum, list) and enum:
        made.kind = "select"
        made.enum = list(enum)
        made.options = [(_shown(v) if v is not None else "null", _shown(v)) for v in enum]
    elif kind == "string" and "format" not in inner:
        made.kind = "textarea" if int(inner.get("maxLength") or 0) > 500 else "text"
    elif kind in ("integer", "number", "boolean"):
        made.kind = str(kind)
    if "default" in inner:
        made.value = _shown(inner["default"])
    return made


def fields_for_object(schema: Mapping[str, Any], skip: Sequence[str] = ()) -> list[Field] | None:
    """One control per property of an object schema, or ``None`` if the schema is not
    an object with properties (the caller then offers a JSON text area)."""
    properties = schema.get("properties")
    if schema.get("type") != "object" or not isinstance(properties, dict):
        return None
    required = set(schema.get("required") or [])
    return [
        field_for(name, sub, required=name in required)
        for name, sub in properties.items()
        if name not in skip and isinstance(sub, dict)
    ]


def fields_for_questions(questions: Sequence[Mapping[str, Any]]) -> list[Field]:
    """One control per clarification question (its text is the label)."""
    made = []
    for question in questions:
        schema = question.get("schema")
        control = field_for(
            str(question.get("id")),
            schema if isinstance(schema, dict) else {},
            label=str(question.get("text", "")),
            required="default" not in question,
        )
        if "default" in question:
            control.value = _shown(question["default"])
        made.append(control)
    return made


def _convert(control: Field, raw: str) -> Any:
    """The JSON value for a submitted string; ``_INVALID`` with an error recorded."""
    if control.kind == "select":
        for option in control.enum:
            if (_shown(option) if option is not None else "null") == raw:
                return option
        control.errors.append("choose one of the options")
        return _INVALID
    if control.kind == "integer":
        try:
            return int(raw.strip())
        except ValueError:
            control.errors.append("must be a whole number")
            return _INVALID
    if control.kind == "number":
        try:
            number = float(raw.strip())
        except ValueError:
            control.errors.append("must be a number")
            return _INVALID
        return int(number) if number.is_integer() and "." not in raw else number
    if control.kind == "boolean":
        if raw in ("true", "false"):
            return raw == "true"
        control.errors.append("choose yes or no")
        return _INVALID
    if control.kind == "json":
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            control.errors.append(f"not valid JSON ({exc.msg})")
            return _INVALID
    return raw


def read_fields(controls: Sequence[Field], form: Mapping[str, str]) -> tuple[dict[str, Any], bool]:
    """The JSON object the controls hold, and whether every value converted. Each
    control keeps its submitted text, so a re-rendered form shows what was typed. An empty
    control is left out (its default applies, or the server says it is required)."""
    values: dict[str, Any] = {}
    ok = True
    for control in controls:
        raw = form.get(control.input_name, "")
        control.value = raw
        control.errors = []
        if raw.strip() == "":
            continue
        converted = _convert(control, raw)
        if converted is _INVALID:
            ok = False
        else:
            values[control.name] = converted
    return values, ok


def attach_errors(
    controls: Sequence[Field], details: Sequence[Mapping[str, Any]], prefix: Sequence[str] = ()
) -> list[str]:
    """Put each ``{loc, msg}`` problem next to its control; return the ones that belong
    to no control (shown above the form)."""
    by_name = {c.name: c for c in controls}
    general = []
    for detail in details:
        loc = [str(p) for p in detail.get("loc", [])]
        if list(prefix) == loc[: len(prefix)]:
            loc = loc[len(prefix) :]
        message = str(detail.get("msg", "invalid"))
        target = next((by_name[p] for p in loc if p in by_name), None)
        if target is None:
            general.append(f"{'.'.join(loc)}: {message}" if loc else message)
        else:
            rest = loc[loc.index(target.name) + 1 :]
            target.errors.append(f"{'.'.join(rest)}: {message}" if rest else message)
    return general
