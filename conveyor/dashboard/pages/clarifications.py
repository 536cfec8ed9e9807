"""The clarifications inbox: questions steps asked, each with a form generated from the
questions' JSON Schemas. A valid answer resumes the execution; an invalid one shows the
problems next to the fields, with what was typed kept."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from conveyor.api.deps import api_state
from conveyor.auth.principal import USER
from conveyor.dashboard import listing
from conveyor.dashboard.forms import Field, attach_errors, fields_for_questions, read_fields
from conveyor.dashboard.session import Session
from conveyor.dashboard.web import PageRoute, PostedForm, SessionDep, redirect, render
from conveyor.engine.models import Clarification
from conveyor.errors import AnswerValidationError

router = APIRouter(route_class=PageRoute, include_in_schema=False)
STATUSES = ["pending", "answered", "expired", "cancelled"]
INBOX_SIZE = 100


async def _inbox(
    request: Request,
    session: Session,
    status: str,
    *,
    edited: tuple[str, list[Field], list[str]] | None = None,
    code: int = 200,
) -> Response:
    """The inbox; ``edited`` is a clarification id with its submitted controls and
    general errors, shown instead of a fresh form."""
    found = await api_state(request).engine.list_clarifications(
        owner=session.scope, status=status, limit=INBOX_SIZE
    )
    items: list[dict[str, Any]] = []
    for clarification in found:
        controls = fields_for_questions(clarification.questions)
        errors: list[str] = []
        if edited is not None and edited[0] == clarification.id:
            controls, errors = edited[1], edited[2]
        items.append({"c": clarification, "controls": controls, "errors": errors})
    return render(
        "clarifications.html",
        session=session,
        request=request,
        status=code,
        nav="clarifications",
        items=items,
        current=status,
        statuses=STATUSES,
        can_answer=session.principal.is_admin or USER in session.principal.roles,
    )


@router.get("/clarifications")
async def inbox(
    request: Request,
    session: SessionDep,
    status: Annotated[str | None, Query(max_length=20)] = None,
) -> Response:
    return await _inbox(request, session, listing.choice(status, STATUSES) or "pending")


@router.post("/clarifications/{execution_id}/{step_id}")
async def answer(
    execution_id: str, step_id: str, request: Request, session: SessionDep, form: PostedForm
) -> Response:
    """Validate and record the answers (the step resumes), or show the inbox again with
    the problems by their fields (422)."""
    session.principal.require(USER)
    engine = api_state(request).engine
    clarification: Clarification = await engine.get_clarification(
        execution_id, step_id, owner=session.scope
    )
    controls = fields_for_questions(clarification.questions)
    answers, ok = read_fields(controls, form)
    general: list[str] = []
    if ok:
        try:
            await engine.answer(
                execution_id, step_id, answers, owner=session.scope, actor=session.principal.id
            )
        except AnswerValidationError as exc:
            general = attach_errors(controls, exc.details)
        else:
            return redirect(f"/executions/{execution_id}", notice="answered")
    return await _inbox(
        request, session, "pending", edited=(clarification.id, controls, general), code=422
    )
