"""Starting a workflow from a form generated from its input schema."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from fastapi import APIRouter, Request, Response

from conveyor.api.deps import api_state
from conveyor.app import Conveyor
from conveyor.auth.principal import USER
from conveyor.dashboard.forms import Field, attach_errors, fields_for_object, read_fields
from conveyor.dashboard.session import Session
from conveyor.dashboard.web import PageRoute, PostedForm, SessionDep, redirect, render
from conveyor.domain.graph import WorkflowSpec
from conveyor.engine.models import ExecutionSpec
from conveyor.errors import IdempotencyMismatchError, InvalidInputError, NotFoundError

router = APIRouter(route_class=PageRoute, include_in_schema=False)
RAW_FIELD = "raw_input"
#: a key per rendered form: a double-clicked Start starts one execution, not two
SUBMISSION_FIELD = "submission"
_SUBMISSION = re.compile(r"^dashboard:[0-9a-f]{32}$")


def _workflow(app: Conveyor, name: str) -> WorkflowSpec:
    spec = app.workflow_spec(name)
    if spec is None:
        raise NotFoundError(f"workflow {name!r} not found")
    return spec


def input_fields(app: Conveyor, spec: WorkflowSpec) -> list[Field] | None:
    """Controls for the workflow's input: the properties its root steps' tasks take
    (less what a step fixes in its own input), or ``None`` for a JSON text area."""
    controls: dict[str, Field] = {}
    for step in spec.graph.steps:
        if step.depends_on:
            continue
        task = app.tasks.get(step.task)
        if task is None:
            return None
        found = fields_for_object(task.input_schema(), skip=list(step.input or {}))
        if found is None:
            return None
        for control in found:
            controls.setdefault(control.name, control)
    return list(controls.values())


def _page(
    request: Request,
    session: Session,
    spec: WorkflowSpec,
    controls: list[Field] | None,
    *,
    raw: str = "",
    errors: list[str] | None = None,
    status: int = 200,
) -> Response:
    return render(
        "executions/start.html",
        session=session,
        request=request,
        status=status,
        nav="executions",
        workflow=spec,
        controls=controls,
        raw_field=RAW_FIELD,
        raw=raw,
        submission_field=SUBMISSION_FIELD,
        submission=f"dashboard:{uuid.uuid4().hex}",
        errors=errors or [],
    )


@router.get("/workflows/{name}/start")
async def start_form(name: str, request: Request, session: SessionDep) -> Response:
    app = api_state(request).app
    spec = _workflow(app, name)
    return _page(request, session, spec, input_fields(app, spec))


def check_input(app: Conveyor, spec: WorkflowSpec, data: dict[str, Any]) -> None:
    """Refuse input a root step could not take, before anything starts (the engine
    checks it only when the step runs): every problem, with the field it concerns."""
    details: list[dict[str, Any]] = []
    for step in spec.graph.steps:
        task = app.tasks.get(step.task)
        if step.depends_on or task is None:
            continue
        try:
            task.parse_input({**data, **(step.input or {})}, ignore_unknown=True)
        except InvalidInputError as exc:
            details.extend(d for d in exc.details if d not in details)
    if details:
        raise InvalidInputError("the input does not fit the workflow", details=details)


def _json_object(raw: str) -> tuple[dict[str, Any] | None, str]:
    """The input typed as JSON, or ``None`` and what is wrong with it."""
    try:
        parsed = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc}"
    if not isinstance(parsed, dict):
        return None, "the input must be a JSON object"
    return parsed, ""


@router.post("/workflows/{name}/start")
async def start(name: str, request: Request, session: SessionDep, form: PostedForm) -> Response:
    """Start the execution, or show the form again with each problem by its field."""
    session.principal.require(USER)
    state = api_state(request)
    spec = _workflow(state.app, name)
    controls = input_fields(state.app, spec)
    raw = form.get(RAW_FIELD, "").strip()
    data: dict[str, Any]
    if raw or controls is None:
        parsed, problem = _json_object(raw)
        if parsed is None:
            return _page(request, session, spec, controls, raw=raw, errors=[problem], status=422)
        data = parsed
    else:
        data, ok = read_fields(controls, form)
        if not ok:
            return _page(request, session, spec, controls, status=422)
    submission = form.get(SUBMISSION_FIELD, "")
    try:
        check_input(state.app, spec, data)
        started = await state.engine.start_execution(
            ExecutionSpec(
                workflow=spec.name,
                input=data,
                idempotency_key=submission if _SUBMISSION.match(submission) else None,
            ),
            owner=session.principal.id,
        )
    except IdempotencyMismatchError:
        # the same form was sent before with other values (a page brought back from
        # history): the form comes back with a fresh key
        return _page(
            request,
            session,
            spec,
            controls,
            raw=raw,
            errors=[
                "This form was already used to start an execution; send it again to start another."
            ],
            status=409,
        )
    except InvalidInputError as exc:
        general = attach_errors([] if raw else controls or [], exc.details)
        return _page(
            request, session, spec, controls, raw=raw, errors=[exc.message, *general], status=422
        )
    return redirect(f"/executions/{started.execution.id}", notice="started")
