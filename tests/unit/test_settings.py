"""Settings from ``CONVEYOR_*`` environment variables."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from conveyor.errors import ConfigurationError
from conveyor.settings import DEFAULT_DATABASE_URL, Settings
from conveyor.store.url import backend_of


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CONVEYOR_* variable of the calling shell or CI leaks into these tests."""
    for key in list(os.environ):
        if key.upper().startswith("CONVEYOR_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    settings = Settings()
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert backend_of(settings.database_url) == "sqlite"
    assert settings.app is None
    assert settings.owner == "local"
    assert settings.server is None
    assert settings.token is None
    # durable by default: fsync on every commit
    assert settings.sqlite_synchronous == "FULL"
    assert settings.pool_size >= 1
    # a lease is renewed several times before it can expire
    assert settings.heartbeat_interval_s * 2 <= settings.lease_ttl_s
    assert settings.worker_heartbeat_timeout_s > settings.heartbeat_interval_s
    assert settings.drain_timeout_s >= 0
    assert settings.cancel_grace_s >= 0


def test_reads_conveyor_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "postgresql://u@db.example:5432/conveyor")
    monkeypatch.setenv("CONVEYOR_APP", "myproj.tasks:app")
    monkeypatch.setenv("CONVEYOR_OWNER", "alice")
    monkeypatch.setenv("CONVEYOR_SQLITE_SYNCHRONOUS", "NORMAL")
    monkeypatch.setenv("CONVEYOR_POOL_SIZE", "25")
    monkeypatch.setenv("CONVEYOR_LEASE_TTL_S", "12.5")
    monkeypatch.setenv("CONVEYOR_HEARTBEAT_INTERVAL_S", "0.75")
    monkeypatch.setenv("CONVEYOR_WORKER_HEARTBEAT_TIMEOUT_S", "90")
    monkeypatch.setenv("CONVEYOR_SWEEP_INTERVAL_S", "4")
    monkeypatch.setenv("CONVEYOR_POLL_MAX_S", "0.5")
    monkeypatch.setenv("CONVEYOR_DRAIN_TIMEOUT_S", "0")
    monkeypatch.setenv("CONVEYOR_CANCEL_GRACE_S", "1.5")
    monkeypatch.setenv("CONVEYOR_SERVER", "https://conveyor.example")
    monkeypatch.setenv("CONVEYOR_TOKEN", "tok-123")
    settings = Settings()
    assert settings.database_url == "postgresql://u@db.example:5432/conveyor"
    assert settings.app == "myproj.tasks:app"
    assert settings.owner == "alice"
    assert settings.sqlite_synchronous == "NORMAL"
    assert settings.pool_size == 25
    assert isinstance(settings.pool_size, int)
    assert settings.lease_ttl_s == 12.5
    assert settings.heartbeat_interval_s == 0.75
    assert settings.worker_heartbeat_timeout_s == 90.0
    assert settings.sweep_interval_s == 4.0
    assert settings.poll_max_s == 0.5
    assert settings.drain_timeout_s == 0.0
    assert settings.cancel_grace_s == 1.5
    assert settings.server == "https://conveyor.example"
    assert settings.token is not None
    assert settings.token.get_secret_value() == "tok-123"
    assert "tok-123" not in repr(settings)  # a secret never shows up in logs or errors


def test_only_the_conveyor_prefix_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/db")
    monkeypatch.setenv("OWNER", "mallory")
    monkeypatch.setenv("POOL_SIZE", str(Settings.model_fields["pool_size"].default + 1))
    settings = Settings()
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.owner == "local"
    assert settings.pool_size == Settings.model_fields["pool_size"].default


def test_unknown_conveyor_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    # e.g. CONVEYOR_TEST_PG is read by the test-suite, not by Settings
    monkeypatch.setenv("CONVEYOR_TEST_PG", "postgresql://x/y")
    monkeypatch.setenv("CONVEYOR_NOT_A_SETTING", "1")
    assert Settings().database_url == DEFAULT_DATABASE_URL


def test_explicit_values_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "sqlite:///from-env.db")
    monkeypatch.setenv("CONVEYOR_POOL_SIZE", "7")
    settings = Settings(database_url="sqlite:///from-flag.db")
    assert settings.database_url == "sqlite:///from-flag.db"
    assert settings.pool_size == 7


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CONVEYOR_POOL_SIZE", "0"),
        ("CONVEYOR_POOL_SIZE", "201"),
        ("CONVEYOR_POOL_SIZE", "lots"),
        ("CONVEYOR_POOL_SIZE", "2.5"),
        ("CONVEYOR_SQLITE_SYNCHRONOUS", "OFF"),
        ("CONVEYOR_SQLITE_SYNCHRONOUS", "EXTRA"),
        ("CONVEYOR_LEASE_TTL_S", "0"),
        ("CONVEYOR_LEASE_TTL_S", "0.5"),
        ("CONVEYOR_LEASE_TTL_S", "3601"),
        ("CONVEYOR_LEASE_TTL_S", "soon"),
        ("CONVEYOR_HEARTBEAT_INTERVAL_S", "0"),
        ("CONVEYOR_HEARTBEAT_INTERVAL_S", "-1"),
        ("CONVEYOR_WORKER_HEARTBEAT_TIMEOUT_S", "0.5"),
        ("CONVEYOR_SWEEP_INTERVAL_S", "0"),
        ("CONVEYOR_SWEEP_INTERVAL_S", "601"),
        ("CONVEYOR_POLL_MAX_S", "0"),
        ("CONVEYOR_POLL_MAX_S", "61"),
        ("CONVEYOR_DRAIN_TIMEOUT_S", "-1"),
        ("CONVEYOR_CANCEL_GRACE_S", "-0.1"),
    ],
)
def test_bad_environment_values_are_rejected(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    field = variable.removeprefix("CONVEYOR_").lower()
    locations = {str(part) for err in info.value.errors() for part in err["loc"]}
    assert field in locations


def test_bad_explicit_values_are_rejected() -> None:
    with pytest.raises(ValidationError):
        Settings(pool_size=0)
    with pytest.raises(ValidationError):
        Settings(lease_ttl_s=-5)


def test_heartbeat_must_be_shorter_than_the_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    # leases are renewed by the heartbeat: a heartbeat no faster than the lease TTL lets
    # every running job's lease expire, so such settings cannot work and must be refused
    monkeypatch.setenv("CONVEYOR_LEASE_TTL_S", "5")
    monkeypatch.setenv("CONVEYOR_HEARTBEAT_INTERVAL_S", "10")
    with pytest.raises((ValidationError, ConfigurationError)):
        Settings()
