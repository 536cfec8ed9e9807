"""Index document versions by execution: list the documents one execution wrote.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_document_versions_execution", "document_versions", ["execution_id"])


def downgrade() -> None:
    op.drop_index("ix_document_versions_execution", table_name="document_versions")
