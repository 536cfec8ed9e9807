"""Settings from flags or ``CONVEYOR_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///conveyor.db"


class Settings(BaseSettings):
    """Every knob of a Conveyor process. ``CONVEYOR_DATABASE_URL`` sets ``database_url``."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    app: str | None = Field(default=None, description="module:attribute of the Conveyor app")
    owner: str = Field(default="local", description="owner of work submitted from the local CLI")

    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    pool_size: int = Field(default=10, ge=1, le=200)
    db_call_deadline_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="client-side deadline of every PostgreSQL call (a black-holed network "
        "never answers, and server-side timeouts cannot fire for a server not reached)",
    )
    db_statement_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    db_connect_timeout_s: float = Field(default=5.0, ge=1, le=600)

    lease_ttl_s: float = Field(default=30.0, gt=0.5, le=3600)
    heartbeat_interval_s: float = Field(default=2.0, gt=0.05, le=600)
    worker_heartbeat_timeout_s: float = Field(default=30.0, gt=0.5)
    sweep_interval_s: float = Field(default=2.0, gt=0.05, le=600)
    poll_max_s: float = Field(default=1.0, gt=0.01, le=60)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    cancel_grace_s: float = Field(default=5.0, ge=0)

    secret_key: SecretStr | None = Field(
        default=None,
        description="key (>= 32 bytes) sealing secret task inputs; unset: one is generated "
        "and kept in the database",
    )
    server: str | None = Field(default=None, description="URL of a remote Conveyor server")
    token: SecretStr | None = Field(default=None, description="bearer token for --server")

    # -- HTTP API --------------------------------------------------------------------------
    jwt_algorithm: Literal["HS256", "RS256", "ES256"] = "HS256"
    jwt_secret: SecretStr | None = Field(
        default=None,
        description="HS256 secret (>= 32 bytes); unset: one is generated and kept in the DB",
    )
    jwt_private_key: SecretStr | None = Field(default=None, description="PEM, or @path")
    jwt_public_key: str | None = Field(default=None, description="PEM, or @path")
    jwt_jwks: str | None = Field(default=None, description="JWKS JSON, or @path")
    jwt_issuer: str | None = "conveyor"
    jwt_audience: str | None = "conveyor"
    jwt_leeway_s: float = Field(default=30.0, ge=0, le=60)
    token_ttl_s: int = Field(default=3600, ge=60, le=30 * 86_400)
    token_max_lifetime_s: int = Field(default=86_400, ge=60, le=365 * 86_400)
    admin_username: str | None = None
    admin_password: SecretStr | None = None
    login_max_failures: int = Field(default=5, ge=1, le=1000)
    login_window_s: float = Field(default=300.0, gt=0)
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=256 * 1_048_576)
    cors_origins: list[str] = Field(default_factory=list)
    docs_enabled: bool = True
    metrics_public: bool = True
    stream_max_lifetime_s: float = Field(default=3600.0, ge=1, le=86_400)
    stream_send_timeout_s: float = Field(default=30.0, gt=0, le=600)
    stream_recheck_s: float = Field(
        default=30.0, gt=0, le=3600, description="how often a stream re-checks its caller"
    )
    stream_buffer_events: int = Field(default=1000, ge=10, le=1_000_000)
    max_streams_per_user: int = Field(default=100, ge=1, le=100_000)
    max_waiting_jobs_per_user: int | None = Field(
        default=1_000_000, ge=1, description="queued or pending jobs one user may have"
    )
    events_poll_s: float = Field(default=1.0, gt=0, le=60)

    # -- outbound HTTP from steps (ctx.http) ------------------------------------------------
    http_allow: list[str] = Field(
        default_factory=list,
        description='non-public "ip:port" targets ctx.http may reach (internal services)',
    )
    http_timeout_s: float = Field(default=30.0, gt=0, le=600)
    http_max_bytes: int = Field(default=10 * 1_048_576, ge=1024, le=1_073_741_824)

    # -- LLM calls from steps (ctx.llm) ------------------------------------------------------
    llm_provider: Literal["auto", "fake", "openai", "anthropic"] = Field(
        default="auto",
        description="auto: openai if OPENAI_API_KEY or an OpenAI base URL is set, else "
        "anthropic if ANTHROPIC_API_KEY is set, else the offline fake provider",
    )
    llm_model: str | None = None
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None
    llm_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    llm_prices: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="price overrides per model, USD per million tokens: "
        '{"my-model": {"input_per_mtok": 0.2, "output_per_mtok": 0.6}}',
    )

    @model_validator(mode="after")
    def _leases_can_be_renewed(self) -> Settings:
        # the heartbeat is what keeps a lease: it must beat several times per lease
        if self.heartbeat_interval_s * 2 > self.lease_ttl_s:
            raise ValueError(
                "heartbeat_interval_s must be at most half of lease_ttl_s "
                f"(got {self.heartbeat_interval_s} and {self.lease_ttl_s})"
            )
        return self
