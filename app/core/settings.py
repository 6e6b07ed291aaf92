"""One typed settings tree, read from the environment (prefix ``CREDITD_``, nested with ``__``)."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "admin", "dev-admin-token"}
URL_SCHEMES = ("postgresql+asyncpg://", "postgresql://", "postgres://")


def _problem(setting: str, message: str) -> PydanticCustomError:
    """A settings error that names its environment variable and never carries the value."""
    return PydanticCustomError("setting", message, {"setting": setting})


def database_url_problem(url: str) -> str | None:
    """Why ``url`` is not a usable PostgreSQL URL, without quoting any part of it (it may hold a
    password), or None."""
    if not url.startswith(URL_SCHEMES):
        return "must start with postgresql://, postgres:// or postgresql+asyncpg://"
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and "@" in userinfo:
        return "has more than one '@' before the host: percent-encode '@' in the password as %40"
    if parts.fragment or "#" in url:
        return "contains '#': percent-encode it in the password as %23"
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        return (
            "has an invalid port (a ':', '/' or '?' in the password must be percent-encoded"
            " as %3A, %2F or %3F)"
        )
    return None


def _check_url(setting: str, url: str | None) -> str | None:
    if url is not None and (reason := database_url_problem(url)):
        raise _problem(setting, reason)
    return url


class DatabaseSettings(BaseModel):
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str | None) -> str | None:
        return _check_url("CREDITD_DATABASE__URL", url)

    pool_size: int = 20
    max_overflow: int = 10
    pool_timeout_seconds: float = 10.0
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    statement_timeout_ms: int = 15_000
    lock_timeout_ms: int = 5_000
    # How often a server process running a statement checks that its client is still there
    # (PostgreSQL's client_connection_check_interval; 0: never). A request cancelled while its
    # statement waits for a lock (a client that hung up) is then rolled back within this long,
    # even a fast-path call that would otherwise commit on its own (app/transactions/fast.py).
    client_check_interval_ms: int = Field(default=100, ge=0)
    echo: bool = False


class LogSettings(BaseModel):
    level: str = "INFO"
    json_output: bool | None = None  # default: JSON outside development


def _limit(value: str | None) -> str | None:
    """A rate limit in the `limits` notation ("100/minute", "2000 per 2 seconds")."""
    if value is None:
        return None
    import limits  # noqa: PLC0415 - only when a limit is configured: keeps `creditd --help` fast

    try:
        limits.parse(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a rate limit: write it as '100/minute' or '2000 per 2 seconds'"
        ) from None
    return value


RateLimit = Annotated[str, AfterValidator(_limit)]
_STORAGE_SCHEMES = ("memory://", "redis://", "rediss://", "redis+unix://")


class ApiSettings(BaseModel):
    # Per API key. `rate_limit` in the `limits` notation; when unset, the older pair
    # (rate_limit_per_second, rate_limit_burst) gives "burst per burst/rate seconds".
    rate_limit: RateLimit | None = None
    rate_limit_per_second: Decimal = Field(default=Decimal(1000), gt=0)
    rate_limit_burst: int = Field(default=2000, gt=0)
    # Every key of a project together, and failed authentications per client address.
    project_rate_limit: RateLimit = "10000 per 2 seconds"
    auth_failure_rate_limit: RateLimit = "20/minute"
    # memory:// (each process counts alone) or redis://host:port/db (every replica shares).
    rate_limit_storage_url: str = "memory://"
    rate_limit_key_prefix: str = Field(default="creditd", min_length=1)
    rate_limit_storage_timeout_seconds: float = Field(default=0.25, gt=0)
    # Verified keys are cached this long; revocations and project changes reach every process
    # through LISTEN/NOTIFY. While that channel is not proven alive, entries live only
    # key_cache_fallback_ttl_seconds, the bound on how long a revoked key can still work.
    key_cache_ttl_seconds: float = 5.0
    key_cache_fallback_ttl_seconds: float = Field(default=1.0, ge=0)
    idempotency_ttl_hours: int = 48
    # Larger request bodies are refused (413) before they are read, parsed or authenticated.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    # Start, complete and one-shot usage on a user's own account as one server-side call each
    # (the account lock held only inside it), check without an ORM session
    # (app/transactions/fast.py). Off: always the general path.
    fast_metering: bool = True

    @field_validator("rate_limit_storage_url")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        if not value.startswith(_STORAGE_SCHEMES):
            schemes = ", ".join(_STORAGE_SCHEMES)
            raise ValueError(f"rate limit storage must start with one of {schemes}")
        return value

    @property
    def key_rate_limit(self) -> str:
        """The per-key limit in the `limits` notation."""
        if self.rate_limit is not None:
            return self.rate_limit
        window = max(1, round(self.rate_limit_burst / self.rate_limit_per_second))
        return f"{self.rate_limit_burst} per {window} seconds"

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


class PaymentsSettings(BaseModel):
    """Stripe and Razorpay: where their APIs are, how provider secrets are kept at rest, and
    when a payment nobody heard back about is looked up (reconciliation)."""

    # Fernet keys (urlsafe base64 of 32 bytes), comma-separated: the first encrypts, every one
    # decrypts, so a new key goes first and old ones stay until `creditd rotate-secrets` ran.
    # Unset outside production: a development key is generated into ``data_dir``.
    secrets_key: SecretStr | None = None

    @field_validator("secrets_key")
    @classmethod
    def _fernet_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        from app.core.secrets import InvalidSecretsKey, parse_keys  # noqa: PLC0415 - only if set

        try:
            parse_keys(value.get_secret_value())
        except InvalidSecretsKey as bad:
            raise _problem("CREDITD_PAYMENTS__SECRETS_KEY", str(bad)) from None
        return value

    stripe_api_base: str = "https://api.stripe.com"
    razorpay_api_base: str = "https://api.razorpay.com"
    provider_timeout_seconds: float = Field(default=20.0, gt=0)
    # After a webhook secret is replaced, the old one still verifies for this long.
    webhook_secret_grace_seconds: int = Field(default=24 * 3600, ge=0)
    # A payment still created/pending this long after creation is looked up at the provider.
    reconcile_after_seconds: float = Field(default=900.0, ge=0)
    reconcile_interval_seconds: float = Field(default=60.0, gt=0)
    # A payment nobody paid is given up on (expired) after this long; providers' checkouts
    # expire well before (Stripe: 24 h at most).
    reconcile_give_up_seconds: float = Field(default=7 * 86400.0, gt=0)


class WebhookSettings(BaseModel):
    """Outbound webhooks: who may be called, how, and how failures are retried."""

    # Endpoint URLs must be https; plain http only where an operator allows it (development).
    allow_http: bool = False
    # Off: a URL whose host resolves to a loopback, private, link-local, multicast, reserved or
    # cloud-metadata address is refused, checked at every delivery. On only where an operator
    # sets it (tests, a receiver on the same private network).
    allow_private_targets: bool = False
    # Whole request (connect, send, response) at most this long; connecting at most the second.
    timeout_seconds: float = Field(default=15.0, gt=0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    # The waits after each failed attempt (Svix-like): 8 attempts over about 28 hours.
    retry_schedule_seconds: list[float] = Field(
        default=[5, 300, 1800, 7200, 18000, 36000, 36000], min_length=1
    )
    retry_jitter: float = Field(default=0.2, ge=0, le=1)  # +/- this share of each wait
    # An endpoint failing every attempt for this long is disabled (webhook_endpoint.disabled).
    disable_after_seconds: float = Field(default=5 * 86400.0, gt=0)
    # A claimed delivery is someone's for this long: a dispatcher that dies leaves it due again
    # after it. Must exceed timeout_seconds.
    lease_seconds: float = Field(default=60.0, gt=0)
    poll_interval_seconds: float = Field(default=0.5, gt=0)
    batch_size: int = Field(default=200, ge=1)
    max_in_flight: int = Field(default=64, ge=1)  # requests at once, per dispatcher
    max_in_flight_per_endpoint: int = Field(default=8, ge=1)
    # After a rotation the replaced secret keeps signing for this long.
    secret_grace_seconds: int = Field(default=24 * 3600, ge=0)
    response_excerpt_bytes: int = Field(default=1024, ge=0)
    dispatch_in_process: bool = True  # the dispatcher runs with the other background jobs

    @model_validator(mode="after")
    def _lease_outlives_request(self) -> WebhookSettings:
        if self.lease_seconds <= self.timeout_seconds:
            raise _problem(
                "CREDITD_WEBHOOKS__LEASE_SECONDS",
                "must be longer than CREDITD_WEBHOOKS__TIMEOUT_SECONDS",
            )
        return self


class EventSettings(BaseModel):
    # Events older than this whose deliveries are all finished are deleted, in batches.
    retention_days: int = Field(default=30, ge=1)
    prune_interval_seconds: float = Field(default=600.0, gt=0)
    prune_batch_size: int = Field(default=5000, ge=1)


class LedgerSettings(BaseModel):
    """The ledger export (``GET /v1/ledger/export``): how many may stream at once, per process.
    An export holds no connection while its client reads, but each one reads its batches from
    the shared pool and keeps a task, its queue and a socket busy: more are refused (429 for a
    project that already has its share, 503 when the process is full), with Retry-After."""

    max_concurrent_exports: int = Field(default=2, ge=1)
    max_concurrent_exports_per_project: int = Field(default=1, ge=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CREDITD_", env_nested_delimiter="__", extra="ignore", env_file=None
    )

    env: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path(".creditd")
    admin_token: SecretStr | None = Field(default=None, validate_default=True)
    # DATABASE_URL (unprefixed) is the conventional name; it fills ``database.url``.
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "CREDITD_DATABASE_URL")
    )
    database: DatabaseSettings = Field(default_factory=DatabaseSettings, validate_default=True)
    log: LogSettings = LogSettings()
    api: ApiSettings = ApiSettings()
    workers: WorkerSettings = WorkerSettings()
    payments: PaymentsSettings = Field(default_factory=PaymentsSettings, validate_default=True)
    webhooks: WebhookSettings = WebhookSettings()
    events: EventSettings = EventSettings()
    ledger: LedgerSettings = LedgerSettings()

    # Each check below raises its own error, so that every problem is reported at once.
    @field_validator("admin_token")
    @classmethod
    def _real_token_in_production(cls, token: SecretStr | None, info: ValidationInfo) -> Any:
        if info.data.get("env") == "production":
            value = token.get_secret_value() if token else ""
            if value.lower() in PLACEHOLDER_SECRETS or len(value) < 16:
                raise _problem(
                    "CREDITD_ADMIN_TOKEN", "must be a real secret of 16+ characters in production"
                )
        return token

    @field_validator("database_url")
    @classmethod
    def _valid_database_url(cls, url: str | None) -> str | None:
        return _check_url("DATABASE_URL", url)

    @field_validator("database")
    @classmethod
    def _url_in_production(cls, database: DatabaseSettings, info: ValidationInfo) -> Any:
        # Only when DATABASE_URL itself was valid (and so is in ``info.data``) but absent.
        if (
            info.data.get("env") == "production"
            and database.url is None
            and "database_url" in info.data
            and info.data["database_url"] is None
        ):
            raise _problem(
                "DATABASE_URL",
                "is required in production (the embedded PostgreSQL is for development only)",
            )
        return database

    @field_validator("payments")
    @classmethod
    def _secrets_key_in_production(cls, payments: PaymentsSettings, info: ValidationInfo) -> Any:
        if info.data.get("env") == "production" and payments.secrets_key is None:
            raise _problem(
                "CREDITD_PAYMENTS__SECRETS_KEY",
                "is required in production (comma-separated Fernet keys; the first encrypts)",
            )
        return payments

    @model_validator(mode="after")
    def _merge(self) -> Settings:
        if self.database.url is None and self.database_url:
            self.database.url = self.database_url
        return self

    @property
    def json_logs(self) -> bool:
        if self.log.json_output is not None:
            return self.log.json_output
        return self.env == "production"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def problems(error: ValidationError) -> list[str]:
    """One line per invalid setting: its environment variable and why, never its value."""
    lines = []
    for err in error.errors(include_url=False, include_input=False, include_context=True):
        setting = (err.get("ctx") or {}).get("setting") or env_name(err["loc"])
        lines.append(f"{setting}: {err['msg']}")
    return lines


def env_name(loc: tuple[int | str, ...]) -> str:
    """``("database", "pool_size")`` → ``CREDITD_DATABASE__POOL_SIZE``."""
    names = [str(part) for part in loc]
    if names and names[0] in {"DATABASE_URL", "CREDITD_DATABASE_URL", "database_url"}:
        return "DATABASE_URL"
    return "CREDITD_" + "__".join(name.upper() for name in names)


def to_async_url(url: str) -> str:
    """Normalise ``postgres://``/``postgresql://`` URLs to the asyncpg driver."""
    for prefix in URL_SCHEMES:
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    # Never echo the URL: it may carry a password.
    raise ValueError("unsupported database URL scheme (use postgresql://)")
