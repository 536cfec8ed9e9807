"""Workflows: executions, clarifications, step memos.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from conveyor.store.types import UtcDateTime, json_type

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _partial(condition: str) -> dict[str, Any]:
    return {"sqlite_where": sa.text(condition), "postgresql_where": sa.text(condition)}


def upgrade() -> None:
    op.create_table(
        "executions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("workflow", sa.String(100)),
        sa.Column("workflow_version", sa.String(40)),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("mode", sa.String(10), nullable=False),
        sa.Column("failure_policy", sa.String(20), nullable=False),
        sa.Column("parallelism", sa.Integer()),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("steps", json_type(), nullable=False),
        sa.Column("input", json_type()),
        sa.Column("output", json_type()),
        sa.Column("error", json_type()),
        sa.Column("scope_type", sa.String(100)),
        sa.Column("scope_id", sa.String(200)),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("request_hash", sa.String(64)),
        sa.Column("metadata", json_type()),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("started_at", UtcDateTime()),
        sa.Column("finished_at", UtcDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_executions"),
    )
    op.create_index("ix_executions_owner_id", "executions", ["owner", "id"])
    op.create_index("ix_executions_scope", "executions", ["scope_type", "scope_id"])
    op.create_index("ix_executions_status", "executions", ["status"])
    op.create_index(
        "ux_executions_idempotency",
        "executions",
        ["owner", "idempotency_key"],
        unique=True,
        **_partial("idempotency_key IS NOT NULL"),
    )

    op.create_table(
        "clarifications",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("execution_id", sa.String(36)),
        sa.Column("step_id", sa.String(100)),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("questions", json_type(), nullable=False),
        sa.Column("answers", json_type()),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("on_timeout", sa.String(10), nullable=False),
        sa.Column("timeout_at", UtcDateTime()),
        sa.Column("answered_by", sa.String(128)),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("answered_at", UtcDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_clarifications"),
    )
    op.create_index("ux_clarifications_job_seq", "clarifications", ["job_id", "seq"], unique=True)
    op.create_index("ix_clarifications_owner_status", "clarifications", ["owner", "status"])
    op.create_index("ix_clarifications_execution", "clarifications", ["execution_id", "step_id"])
    op.create_index(
        "ix_clarifications_timeout",
        "clarifications",
        ["timeout_at"],
        **_partial("status = 'pending'"),
    )

    op.create_table(
        "step_memos",
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("value", json_type()),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "key", name="pk_step_memos"),
    )


def downgrade() -> None:
    for table in ("step_memos", "clarifications", "executions"):
        op.drop_table(table)
