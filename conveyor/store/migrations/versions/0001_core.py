"""Core queue: jobs, events, event counter, workers, queues.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from conveyor.store.types import UtcDateTime, json_type

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _partial(condition: str) -> dict[str, Any]:
    return {"sqlite_where": sa.text(condition), "postgresql_where": sa.text(condition)}


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("run_at", UtcDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("backoff", json_type()),
        sa.Column("timeout_s", sa.Float()),
        sa.Column("input", json_type()),
        sa.Column("result", json_type()),
        sa.Column("error", json_type()),
        sa.Column("progress", sa.SmallInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("progress_message", sa.Text()),
        sa.Column("lease_token", sa.String(32)),
        sa.Column("lease_expires_at", UtcDateTime()),
        sa.Column("worker_id", sa.String(64)),
        sa.Column(
            "cancel_requested", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
        sa.Column("lost_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("request_hash", sa.String(64)),
        sa.Column("execution_id", sa.String(36)),
        sa.Column("step_id", sa.String(100)),
        sa.Column("depends_on", json_type()),
        sa.Column("deps_pending", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("metadata", json_type()),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("started_at", UtcDateTime()),
        sa.Column("finished_at", UtcDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index(
        "ix_jobs_claim", "jobs", ["priority", "run_at", "id"], **_partial("status = 'queued'")
    )
    op.create_index("ix_jobs_lease", "jobs", ["lease_expires_at"], **_partial("status = 'active'"))
    op.create_index(
        "ux_jobs_idempotency",
        "jobs",
        ["owner", "idempotency_key"],
        unique=True,
        **_partial("idempotency_key IS NOT NULL"),
    )
    op.create_index(
        "ux_jobs_step",
        "jobs",
        ["execution_id", "step_id"],
        unique=True,
        **_partial("execution_id IS NOT NULL"),
    )
    op.create_index("ix_jobs_owner_id", "jobs", ["owner", "id"])
    op.create_index("ix_jobs_queue_status", "jobs", ["queue", "status"])

    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("type", sa.String(50), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("job_id", sa.String(36)),
        sa.Column("execution_id", sa.String(36)),
        sa.Column("step_id", sa.String(100)),
        sa.Column("queue", sa.String(100)),
        sa.Column("data", json_type()),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_job", "events", ["job_id", "id"])
    op.create_index("ix_events_execution", "events", ["execution_id", "id"])

    counter = op.create_table(
        "event_counter",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_event_counter"),
    )
    op.bulk_insert(counter, [{"id": 1, "last_id": 0}])

    op.create_table(
        "workers",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer()),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("queues", json_type()),
        sa.Column("capabilities", json_type()),
        sa.Column("max_concurrency", sa.Integer(), nullable=False),
        sa.Column("current_load", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("metadata", json_type()),
        sa.Column("owner", sa.String(128)),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("last_heartbeat", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_workers"),
    )
    op.create_table(
        "queues",
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("paused", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_queues"),
    )


def downgrade() -> None:
    for table in ("queues", "workers", "event_counter", "events", "jobs"):
        op.drop_table(table)
