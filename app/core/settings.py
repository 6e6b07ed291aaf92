"""One typed settings tree, read from the environment (prefix ``CREDITD_``, nested with ``__``)."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "admin", "dev-admin-token"}


class DatabaseSettings(BaseModel):
    url: str | None = None
    pool_size: int = 20
    max_overflow: int = 10
    pool_timeout_seconds: float = 10.0
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    statement_timeout_ms: int = 15_000
    lock_timeout_ms: int = 5_000
    echo: bool = False


class LogSettings(BaseModel):
    level: str = "INFO"
    json_output: bool | None = None  # default: JSON outside development


class ApiSettings(BaseModel):
    rate_limit_per_second: Decimal = Field(default=Decimal(1000), gt=0)
    rate_limit_burst: int = 2000
    key_cache_ttl_seconds: float = 5.0
    idempotency_ttl_hours: int = 48
    # A request for an account that already has this many requests waiting for its lock, and
    # saw none of them get it for ``account_lock_stall_seconds`` (longer when this process's
    # holds are slow), fails fast with 503 account_busy: a locked account cannot take the pool.
    account_lock_waiters: int = Field(default=4, ge=1)
    account_lock_stall_seconds: float = Field(default=0.25, gt=0)


class WorkerSettings(BaseModel):
    in_process: bool = True  # `creditd serve` also runs the background jobs
    sweep_interval_seconds: float = 1.0
    # A failing job waits its interval doubled per consecutive failure, capped at the larger
    # of this and its interval; the first success resets it.
    max_backoff_seconds: float = Field(default=5.0, gt=0)
    batch_size: int = 100
    idempotency_cleanup_interval_seconds: float = 300.0
    # Closing finished UTC days into the analytics day tables (app/analytics/rollup.py).
    rollup_interval_seconds: float = 60.0
    rollup_grace_seconds: float = Field(default=900.0, ge=120)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CREDITD_", env_nested_delimiter="__", extra="ignore", env_file=None
    )

    env: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path(".creditd")
    admin_token: SecretStr | None = None
    # DATABASE_URL (unprefixed) is the conventional name; it fills ``database.url``.
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "CREDITD_DATABASE_URL")
    )
    database: DatabaseSettings = DatabaseSettings()
    log: LogSettings = LogSettings()
    api: ApiSettings = ApiSettings()
    workers: WorkerSettings = WorkerSettings()

    @model_validator(mode="after")
    def _merge_and_check(self) -> Settings:
        if self.database.url is None and self.database_url:
            self.database.url = self.database_url
        if self.env == "production":
            token = self.admin_token.get_secret_value() if self.admin_token else ""
            if token.lower() in PLACEHOLDER_SECRETS or len(token) < 16:
                raise ValueError(
                    "CREDITD_ADMIN_TOKEN must be a real secret (>= 16 chars) in production"
                )
        return self

    @property
    def json_logs(self) -> bool:
        if self.log.json_output is not None:
            return self.log.json_output
        return self.env == "production"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def to_async_url(url: str) -> str:
    """Normalise ``postgres://``/``postgresql://`` URLs to the asyncpg driver."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]}")
