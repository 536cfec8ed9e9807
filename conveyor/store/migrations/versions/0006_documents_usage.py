"""Documents with versions, LLM usage rows, execution budgets.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from conveyor.store.types import UtcDateTime, json_type

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("scope_type", sa.String(100), nullable=False),
        sa.Column("scope_id", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("execution_id", sa.String(36)),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_documents"),
    )
    op.create_index(
        "ux_documents_scope",
        "documents",
        ["owner", "scope_type", "scope_id", "type"],
        unique=True,
    )
    op.create_index("ix_documents_owner_id", "documents", ["owner", "id"])
    op.create_table(
        "document_versions",
        sa.Column("document_id", sa.String(36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("content", json_type()),
        sa.Column("content_type", sa.String(10), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("job_id", sa.String(36)),
        sa.Column("execution_id", sa.String(36)),
        sa.Column("step_id", sa.String(100)),
        sa.Column("save_seq", sa.Integer()),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("document_id", "version", name="pk_document_versions"),
    )
    op.create_index(
        "ux_document_versions_job_seq",
        "document_versions",
        ["job_id", "save_seq"],
        unique=True,
        sqlite_where=sa.text("job_id IS NOT NULL"),
        postgresql_where=sa.text("job_id IS NOT NULL"),
    )
    op.create_table(
        "usage",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("provider", sa.String(50), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("cost_usd", sa.Float()),
        sa.Column("price_source", sa.String(20)),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("job_id", sa.String(36)),
        sa.Column("execution_id", sa.String(36)),
        sa.Column("step_id", sa.String(100)),
        sa.Column("workflow", sa.String(100)),
        sa.Column("attempt", sa.Integer()),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_usage"),
    )
    op.create_index("ix_usage_execution", "usage", ["execution_id"])
    op.create_index("ix_usage_owner_created", "usage", ["owner", "created_at"])
    op.create_index("ix_usage_created", "usage", ["created_at"])
    # a plain ADD COLUMN (SQLite supports it; a batch copy would rebuild the table)
    op.add_column("executions", sa.Column("budget_usd", sa.Float()))


def downgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("budget_usd")
    for table in ("usage", "document_versions", "documents"):
        op.drop_table(table)
