"""Table definitions (SQLAlchemy Core). Alembic migrations create exactly these."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)

from conveyor.store.types import UtcDateTime, json_type

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = String(36)
OWNER = String(128)

jobs = Table(
    "jobs",
    metadata,
    Column("id", ID, primary_key=True),
    Column("task", String(200), nullable=False),
    Column("queue", String(100), nullable=False),
    Column("status", String(20), nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("run_at", UtcDateTime, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("max_attempts", Integer, nullable=False),
    Column("backoff", json_type()),
    Column("timeout_s", Float),
    Column("input", json_type()),
    Column("result", json_type()),
    Column("error", json_type()),
    Column("progress", SmallInteger, nullable=False, server_default=text("0")),
    Column("progress_message", Text),
    Column("lease_token", String(32)),
    Column("lease_expires_at", UtcDateTime),
    Column("worker_id", String(64)),
    Column("cancel_requested", Boolean, nullable=False, server_default=text("false")),
    # times this job's lease expired under a worker (a poison job kills its workers)
    Column("lost_count", Integer, nullable=False, server_default=text("0")),
    Column("owner", OWNER, nullable=False),
    Column("idempotency_key", String(200)),
    Column("request_hash", String(64)),
    Column("execution_id", ID),
    Column("step_id", String(100)),
    Column("depends_on", json_type()),
    Column("deps_pending", Integer, nullable=False, server_default=text("0")),
    Column("metadata", json_type()),
    Column("created_at", UtcDateTime, nullable=False),
    Column("started_at", UtcDateTime),
    Column("finished_at", UtcDateTime),
    Index(
        "ix_jobs_claim",
        "priority",
        "run_at",
        "id",
        sqlite_where=text("status = 'queued'"),
        postgresql_where=text("status = 'queued'"),
    ),
    Index(
        "ix_jobs_lease",
        "lease_expires_at",
        sqlite_where=text("status = 'active'"),
        postgresql_where=text("status = 'active'"),
    ),
    Index(
        "ux_jobs_idempotency",
        "owner",
        "idempotency_key",
        unique=True,
        sqlite_where=text("idempotency_key IS NOT NULL"),
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
    Index(
        "ux_jobs_step",
        "execution_id",
        "step_id",
        unique=True,
        sqlite_where=text("execution_id IS NOT NULL"),
        postgresql_where=text("execution_id IS NOT NULL"),
    ),
    Index("ix_jobs_owner_id", "owner", "id"),
    Index("ix_jobs_queue_status", "queue", "status"),
)

events = Table(
    "events",
    metadata,
    # assigned from event_counter inside the writing transaction: gap-free, commit-ordered
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("type", String(50), nullable=False),
    Column("owner", OWNER, nullable=False),
    Column("job_id", ID),
    Column("execution_id", ID),
    Column("step_id", String(100)),
    Column("queue", String(100)),
    Column("data", json_type()),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_events_job", "job_id", "id"),
    Index("ix_events_execution", "execution_id", "id"),
)

event_counter = Table(
    "event_counter",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("last_id", BigInteger, nullable=False),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer),
    Column("kind", String(20), nullable=False),
    Column("queues", json_type()),
    Column("capabilities", json_type()),
    Column("max_concurrency", Integer, nullable=False),
    Column("current_load", Integer, nullable=False, server_default=text("0")),
    Column("status", String(20), nullable=False),
    Column("metadata", json_type()),
    Column("owner", OWNER),
    Column("started_at", UtcDateTime, nullable=False),
    Column("last_heartbeat", UtcDateTime, nullable=False),
)

queues = Table(
    "queues",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    Column("updated_at", UtcDateTime, nullable=False),
)

executions = Table(
    "executions",
    metadata,
    Column("id", ID, primary_key=True),
    Column("workflow", String(100)),  # None for an ad-hoc list of steps
    Column("workflow_version", String(40)),
    Column("status", String(20), nullable=False),
    Column("mode", String(10), nullable=False),
    Column("failure_policy", String(20), nullable=False),
    Column("parallelism", Integer),
    Column("priority", SmallInteger, nullable=False),
    # the step definitions as started: code changes never alter a running execution
    Column("steps", json_type(), nullable=False),
    Column("input", json_type()),
    Column("output", json_type()),
    Column("error", json_type()),
    Column("scope_type", String(100)),
    Column("scope_id", String(200)),
    Column("owner", OWNER, nullable=False),
    Column("idempotency_key", String(200)),
    Column("request_hash", String(64)),
    Column("metadata", json_type()),
    Column("budget_usd", Float),
    Column("created_at", UtcDateTime, nullable=False),
    Column("started_at", UtcDateTime),
    Column("finished_at", UtcDateTime),
    Index("ix_executions_owner_id", "owner", "id"),
    Index("ix_executions_scope", "scope_type", "scope_id"),
    Index("ix_executions_status", "status"),
    Index(
        "ux_executions_idempotency",
        "owner",
        "idempotency_key",
        unique=True,
        sqlite_where=text("idempotency_key IS NOT NULL"),
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
)

clarifications = Table(
    "clarifications",
    metadata,
    Column("id", ID, primary_key=True),
    Column("job_id", ID, nullable=False),
    Column("execution_id", ID),
    Column("step_id", String(100)),
    # the n-th ctx.ask() of the job: a re-run finds its earlier answers by position
    Column("seq", Integer, nullable=False),
    Column("owner", OWNER, nullable=False),
    Column("questions", json_type(), nullable=False),
    Column("answers", json_type()),
    Column("status", String(20), nullable=False),
    Column("on_timeout", String(10), nullable=False),
    Column("timeout_at", UtcDateTime),
    Column("answered_by", OWNER),
    Column("created_at", UtcDateTime, nullable=False),
    Column("answered_at", UtcDateTime),
    Index("ux_clarifications_job_seq", "job_id", "seq", unique=True),
    Index("ix_clarifications_owner_status", "owner", "status"),
    Index("ix_clarifications_execution", "execution_id", "step_id"),
    Index(
        "ix_clarifications_timeout",
        "timeout_at",
        sqlite_where=text("status = 'pending'"),
        postgresql_where=text("status = 'pending'"),
    ),
)

step_memos = Table(
    "step_memos",
    metadata,
    Column("job_id", ID, primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("value", json_type()),
    Column("created_at", UtcDateTime, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", ID, primary_key=True),
    Column("username", String(64), nullable=False),
    Column("password_hash", String(255), nullable=False),
    Column("roles", json_type(), nullable=False),
    Column("disabled", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ux_users_username", "username", unique=True),
)

#: secrets the server generates itself (e.g. a JWT signing key when none is configured),
#: shared by every replica on the same database
server_secrets = Table(
    "server_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

stream_tickets = Table(
    "stream_tickets",
    metadata,
    Column("ticket_hash", String(64), primary_key=True),
    Column("owner", OWNER, nullable=False),
    Column("scope", String(200), nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("used_at", UtcDateTime),
    Column("created_at", UtcDateTime, nullable=False),
)

#: tokens signed out before they expire; a row is kept until its token would have expired
revoked_tokens = Table(
    "revoked_tokens",
    metadata,
    Column("token_id", String(64), primary_key=True),
    Column("owner", OWNER, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
)

documents = Table(
    "documents",
    metadata,
    Column("id", ID, primary_key=True),
    Column("owner", OWNER, nullable=False),
    Column("type", String(100), nullable=False),
    Column("title", String(500), nullable=False),
    Column("scope_type", String(100), nullable=False),
    Column("scope_id", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("execution_id", ID),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    # one document per owner, scope and type: saving again adds a version
    Index("ux_documents_scope", "owner", "scope_type", "scope_id", "type", unique=True),
    Index("ix_documents_owner_id", "owner", "id"),
)

document_versions = Table(
    "document_versions",
    metadata,
    Column("document_id", ID, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("title", String(500), nullable=False),
    Column("content", json_type()),
    Column("content_type", String(10), nullable=False),
    Column("created_by", OWNER, nullable=False),
    Column("job_id", ID),
    Column("execution_id", ID),
    Column("step_id", String(100)),
    # the n-th save of a job: a retried step finds its earlier version instead of adding one
    Column("save_seq", Integer),
    Column("created_at", UtcDateTime, nullable=False),
    Index(
        "ux_document_versions_job_seq",
        "job_id",
        "save_seq",
        unique=True,
        sqlite_where=text("job_id IS NOT NULL"),
        postgresql_where=text("job_id IS NOT NULL"),
    ),
    # "the documents this execution wrote" (a document may be shared by many executions)
    Index("ix_document_versions_execution", "execution_id"),
)

usage = Table(
    "usage",
    metadata,
    Column("id", ID, primary_key=True),
    Column("owner", OWNER, nullable=False),
    Column("provider", String(50), nullable=False),
    Column("model", String(200), nullable=False),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False, server_default=text("0")),
    # None when the model's price is unknown (the token counts allow recomputing later)
    Column("cost_usd", Float),
    Column("price_source", String(20)),
    Column("latency_ms", Float, nullable=False),
    Column("job_id", ID),
    Column("execution_id", ID),
    Column("step_id", String(100)),
    Column("workflow", String(100)),
    Column("attempt", Integer),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_usage_execution", "execution_id"),
    Index("ix_usage_owner_created", "owner", "created_at"),
    Index("ix_usage_created", "created_at"),
)
