"""Settings from flags or ``CONVEYOR_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
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

    lease_ttl_s: float = Field(default=30.0, gt=0.5, le=3600)
    heartbeat_interval_s: float = Field(default=2.0, gt=0.05, le=600)
    worker_heartbeat_timeout_s: float = Field(default=30.0, gt=0.5)
    sweep_interval_s: float = Field(default=2.0, gt=0.05, le=600)
    poll_max_s: float = Field(default=1.0, gt=0.01, le=60)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    cancel_grace_s: float = Field(default=5.0, ge=0)

    server: str | None = Field(default=None, description="URL of a remote Conveyor server")
    token: str | None = Field(default=None, description="bearer token for the remote server")
