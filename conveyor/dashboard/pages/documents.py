"""Documents: the list by scope and type, one version, and the diff between two."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response

from conveyor.api.deps import api_state
from conveyor.dashboard import diff, listing
from conveyor.dashboard.listing import Filter
from conveyor.dashboard.session import Session
from conveyor.dashboard.web import PageRoute, SessionDep, render
from conveyor.errors import InvalidInputError, NotFoundError

router = APIRouter(route_class=PageRoute, include_in_schema=False)
VersionNo = Annotated[int, Path(ge=1, le=2**31)]


@router.get("/documents")
async def documents_list(
    request: Request,
    session: SessionDep,
    scope_type: Filter = None,
    scope_id: Filter = None,
    type: Filter = None,
    cursor: Filter = None,
) -> Response:
    """Documents, newest first, by scope and type."""
    filters = {
        "scope_type": listing.text(scope_type),
        "scope_id": listing.text(scope_id),
        "type": listing.text(type),
    }
    page = await api_state(request).engine.list_documents(
        owner=session.scope,
        scope_type=filters["scope_type"],
        scope_id=filters["scope_id"],
        type_=filters["type"],
        limit=listing.PAGE_SIZE,
        cursor=listing.text(cursor),
    )
    return render(
        "documents/list.html",
        session=session,
        request=request,
        nav="documents",
        documents=page.items,
        filters=filters,
        **listing.page_links("/documents", filters, page.next_cursor, cursor),
    )


async def _version_page(
    request: Request, session: Session, document_id: str, number: int | None
) -> Response:
    engine = api_state(request).engine
    document = await engine.get_document(document_id, owner=session.scope)
    versions = await engine.document_versions(document_id, owner=session.scope)
    wanted = number or document.version
    shown = next((v for v in versions if v.version == wanted), None)
    if shown is None:
        raise NotFoundError(f"document {document_id!r} has no version {wanted}")
    return render(
        "documents/detail.html",
        session=session,
        request=request,
        nav="documents",
        document=document,
        versions=versions,
        shown=shown,
    )


@router.get("/documents/{document_id}")
async def document_detail(document_id: str, request: Request, session: SessionDep) -> Response:
    """The current version, and the history."""
    return await _version_page(request, session, document_id, None)


@router.get("/documents/{document_id}/versions/{version}")
async def document_version(
    document_id: str, version: VersionNo, request: Request, session: SessionDep
) -> Response:
    return await _version_page(request, session, document_id, version)


@router.get("/documents/{document_id}/diff")
async def document_diff(
    document_id: str,
    request: Request,
    session: SessionDep,
    old: Annotated[int | None, Query(alias="from", ge=1, le=2**31)] = None,
    new: Annotated[int | None, Query(alias="to", ge=1, le=2**31)] = None,
) -> Response:
    """What changed between two versions (by default the last two)."""
    engine = api_state(request).engine
    document = await engine.get_document(document_id, owner=session.scope)
    versions = await engine.document_versions(document_id, owner=session.scope)
    new = new or document.version
    old = old or max(1, new - 1)
    by_number: dict[int, Any] = {v.version: v for v in versions}
    if old not in by_number or new not in by_number:
        raise InvalidInputError(f"this document has versions 1 to {document.version}")
    return render(
        "documents/diff.html",
        session=session,
        request=request,
        nav="documents",
        document=document,
        versions=versions,
        old=by_number[old],
        new=by_number[new],
        lines=diff.unified(by_number[old].content, by_number[new].content),
    )
