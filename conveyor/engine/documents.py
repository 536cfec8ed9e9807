"""Documents: versioned artifacts saved by steps (or edited through the API).

A document is identified by its owner, scope and type: saving the same type for the same
scope adds a version. Every version is kept with who (or which step) made it. Edits
through the API are optimistic: they name the version they change, and a stale one is
refused without overwriting anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from conveyor.domain.events import EventType
from conveyor.domain.ids import new_id
from conveyor.engine.jobs import check_id
from conveyor.engine.paging import check_limit, decode_cursor, encode_cursor
from conveyor.errors import (
    InvalidInputError,
    LeaseLostError,
    NotFoundError,
    PreconditionFailedError,
)
from conveyor.store.database import Tx
from conveyor.store.schema import document_versions, documents, executions, jobs
from conveyor.store.sql import db_now, dialect_insert
from conveyor.store.types import dumps

MAX_CONTENT_BYTES = 4 * 1_048_576


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    owner: str
    type: str
    title: str
    scope_type: str
    scope_id: str
    version: int
    content: Any
    content_type: str
    execution_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DocumentVersion:
    document_id: str
    version: int
    title: str
    content: Any
    content_type: str
    created_by: str
    job_id: str | None
    execution_id: str | None
    step_id: str | None
    created_at: datetime


def _check(type_: str, title: str, content: Any) -> str:
    if not 1 <= len(type_) <= 100:
        raise InvalidInputError("document type must be 1-100 characters")
    if not 1 <= len(title) <= 500:
        raise InvalidInputError("document title must be 1-500 characters")
    if len(dumps(content).encode()) > MAX_CONTENT_BYTES:
        raise InvalidInputError(f"document content is larger than {MAX_CONTENT_BYTES} bytes")
    return "text" if isinstance(content, str) else "json"


def _add_version(
    tx: Tx,
    document_id: str,
    version: int,
    title: str,
    content: Any,
    content_type: str,
    created_by: str,
    *,
    job: Any = None,
    save_seq: int | None = None,
) -> None:
    tx.conn.execute(
        document_versions.insert().values(
            document_id=document_id,
            version=version,
            title=title,
            content=content,
            content_type=content_type,
            created_by=created_by,
            job_id=None if job is None else job.id,
            execution_id=None if job is None else job.execution_id,
            step_id=None if job is None else job.step_id,
            save_seq=save_seq,
            created_at=db_now(),
        )
    )


def save_from_step_tx(
    tx: Tx,
    job_id: str,
    token: str,
    seq: int,
    type_: str,
    title: str,
    content: Any,
    scope_type: str | None,
    scope_id: str | None,
) -> tuple[str, int]:
    """The n-th ``ctx.save_document`` of a job: create the document or add a version.

    A retried step that saves again finds the version its earlier attempt made and
    returns it, so each save of a step is recorded once.
    """
    content_type = _check(type_, title, content)
    job = tx.conn.execute(
        select(jobs)
        .where(jobs.c.id == job_id, jobs.c.lease_token == token, jobs.c.status == "active")
        .with_for_update()
    ).first()
    if job is None:
        raise LeaseLostError(f"job {job_id} is no longer leased by this attempt")
    earlier = tx.conn.execute(
        select(document_versions.c.document_id, document_versions.c.version).where(
            document_versions.c.job_id == job_id, document_versions.c.save_seq == seq
        )
    ).first()
    if earlier is not None:
        return str(earlier.document_id), int(earlier.version)
    if scope_type is None:
        scope_type, scope_id = _default_scope(tx, job)
    if scope_id is None or not 1 <= len(scope_id) <= 200 or not 1 <= len(scope_type) <= 100:
        raise InvalidInputError("give scope_type and scope_id (1-100 / 1-200 characters)")
    # create the document if missing (ON CONFLICT: two steps may race to create it),
    # then lock it: FOR UPDATE cannot lock a row that does not exist yet
    tx.conn.execute(
        dialect_insert(tx.dialect, documents)
        .values(
            id=new_id(),
            owner=job.owner,
            type=type_,
            title=title,
            scope_type=scope_type,
            scope_id=scope_id,
            version=0,
            execution_id=job.execution_id,
            created_at=db_now(),
            updated_at=db_now(),
        )
        .on_conflict_do_nothing(index_elements=["owner", "scope_type", "scope_id", "type"])
    )
    found = tx.conn.execute(
        select(documents.c.id, documents.c.version)
        .where(
            documents.c.owner == job.owner,
            documents.c.scope_type == scope_type,
            documents.c.scope_id == scope_id,
            documents.c.type == type_,
        )
        .with_for_update()
    ).one()
    document_id, version = str(found.id), int(found.version) + 1
    tx.conn.execute(
        update(documents)
        .where(documents.c.id == document_id)
        .values(version=version, title=title, updated_at=db_now())
    )
    created_by = f"step:{job.step_id}" if job.step_id else f"job:{job.id}"
    _add_version(
        tx, document_id, version, title, content, content_type, created_by, job=job, save_seq=seq
    )
    tx.emit(
        EventType.DOCUMENT_SAVED,
        owner=job.owner,
        job_id=job.id,
        execution_id=job.execution_id,
        step_id=job.step_id,
        data={"document_id": document_id, "version": version, "type": type_, "title": title},
    )
    return document_id, version


def _default_scope(tx: Tx, job: Any) -> tuple[str, str]:
    """A step's documents belong to its execution's scope (or the execution itself)."""
    if job.execution_id is None:
        return "job", str(job.id)
    row = tx.conn.execute(
        select(executions.c.scope_type, executions.c.scope_id).where(
            executions.c.id == job.execution_id
        )
    ).one()
    if row.scope_type and row.scope_id:
        return str(row.scope_type), str(row.scope_id)
    return "execution", str(job.execution_id)


def put_tx(
    tx: Tx,
    document_id: str,
    expected_version: int,
    title: str | None,
    content: Any,
    owner: str | None,
    actor: str,
) -> int:
    """Add a version if the document is still at ``expected_version``; else 412."""
    stmt = select(documents).where(documents.c.id == check_id(document_id, "document"))
    if owner is not None:
        stmt = stmt.where(documents.c.owner == owner)
    row = tx.conn.execute(stmt.with_for_update()).first()
    if row is None:
        raise NotFoundError(f"document {document_id!r} not found")
    new_title = title if title is not None else row.title
    content_type = _check(row.type, new_title, content)
    changed = tx.conn.execute(
        update(documents)
        .where(documents.c.id == row.id, documents.c.version == expected_version)
        .values(version=expected_version + 1, title=new_title, updated_at=db_now())
    )
    if changed.rowcount == 0:
        raise PreconditionFailedError(
            f"document {document_id} is at version {row.version}, not {expected_version}; "
            "fetch it again and re-apply your change"
        )
    version = expected_version + 1
    _add_version(tx, row.id, version, new_title, content, content_type, actor)
    tx.emit(
        EventType.DOCUMENT_SAVED,
        owner=row.owner,
        execution_id=row.execution_id,
        data={"document_id": row.id, "version": version, "type": row.type, "title": new_title},
    )
    return version


# -- reading -----------------------------------------------------------------------------------


def _owned(document_id: str, owner: str | None) -> Any:
    stmt = select(documents).where(documents.c.id == check_id(document_id, "document"))
    return stmt if owner is None else stmt.where(documents.c.owner == owner)


def get_document(conn: Connection, document_id: str, owner: str | None) -> Document:
    row = conn.execute(_owned(document_id, owner)).first()
    if row is None:
        raise NotFoundError(f"document {document_id!r} not found")
    current = get_version(conn, document_id, row.version, owner)
    return Document(
        id=row.id,
        owner=row.owner,
        type=row.type,
        title=row.title,
        scope_type=row.scope_type,
        scope_id=row.scope_id,
        version=row.version,
        content=current.content,
        content_type=current.content_type,
        execution_id=row.execution_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _version(row: Any) -> DocumentVersion:
    return DocumentVersion(
        document_id=row.document_id,
        version=row.version,
        title=row.title,
        content=row.content,
        content_type=row.content_type,
        created_by=row.created_by,
        job_id=row.job_id,
        execution_id=row.execution_id,
        step_id=row.step_id,
        created_at=row.created_at,
    )


def get_version(
    conn: Connection, document_id: str, version: int, owner: str | None
) -> DocumentVersion:
    if conn.execute(_owned(document_id, owner)).first() is None:
        raise NotFoundError(f"document {document_id!r} not found")
    row = conn.execute(
        select(document_versions).where(
            document_versions.c.document_id == document_id,
            document_versions.c.version == version,
        )
    ).first()
    if row is None:
        raise NotFoundError(f"document {document_id} has no version {version}")
    return _version(row)


def list_versions(conn: Connection, document_id: str, owner: str | None) -> list[DocumentVersion]:
    if conn.execute(_owned(document_id, owner)).first() is None:
        raise NotFoundError(f"document {document_id!r} not found")
    rows = conn.execute(
        select(document_versions)
        .where(document_versions.c.document_id == document_id)
        .order_by(document_versions.c.version)
    ).all()
    return [_version(r) for r in rows]


def list_documents(
    conn: Connection,
    owner: str | None,
    *,
    scope_type: str | None,
    scope_id: str | None,
    type_: str | None,
    limit: int,
    cursor: str | None,
    execution_id: str | None = None,
) -> tuple[list[Any], str | None]:
    check_limit(limit)
    stmt = select(documents)
    if owner is not None:
        stmt = stmt.where(documents.c.owner == owner)
    if execution_id is not None:
        wrote = select(document_versions.c.document_id).where(
            document_versions.c.execution_id == execution_id
        )
        stmt = stmt.where(documents.c.id.in_(wrote))
    for column, value in (("scope_type", scope_type), ("scope_id", scope_id), ("type", type_)):
        if value is not None:
            stmt = stmt.where(documents.c[column] == value)
    if cursor is not None:
        stmt = stmt.where(documents.c.id < decode_cursor(cursor))
    rows = conn.execute(stmt.order_by(documents.c.id.desc()).limit(limit + 1)).all()
    page = list(rows[:limit])
    return page, encode_cursor(page[-1].id) if len(rows) > limit else None
