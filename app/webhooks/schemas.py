"""Outbound webhooks I/O: endpoints, their attempts, redelivery."""

from __future__ import annotations

import difflib
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from typing_extensions import TypeAliasType

from app.events import catalogue
from app.users.schemas import Metadata

MAX_URL_LENGTH = 2048
MAX_PATTERNS = 100
MAX_GRACE_SECONDS = 7 * 86400

# Named (schema components) so generated clients share one type for each.
WebhookDisabledReason = TypeAliasType("WebhookDisabledReason", Literal["manual", "gone", "failing"])
WebhookDeliveryState = TypeAliasType(
    "WebhookDeliveryState", Literal["pending", "succeeded", "failed", "canceled"]
)


def _known_pattern(pattern: str) -> str:
    if not catalogue.valid_pattern(pattern):
        close = difflib.get_close_matches(pattern, catalogue.TYPES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(
            f"'{pattern}' is not an event type creditd emits, a family of them such as"
            f" 'payment.*', or '*'{hint}"
        )
    return pattern


def _distinct(patterns: list[str]) -> list[str]:
    return list(dict.fromkeys(patterns))  # first occurrence kept, order kept


EventPattern = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_known_pattern)]
EventPatterns = Annotated[
    list[EventPattern],
    Field(
        min_length=1,
        max_length=MAX_PATTERNS,
        description="The event types sent to this endpoint: `*` (all), exact types"
        " (`payment.succeeded`) or families (`payment.*`). Every entry must match a type"
        f" creditd emits; duplicates are dropped; at most {MAX_PATTERNS}",
        examples=[["*"], ["payment.*", "balance.low"]],
    ),
    AfterValidator(_distinct),
]
WebhookUrl = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="Absolute `https` URL (plain `http` only where the server allows it) with a"
        " host and no user name or password. Loopback, private, link-local and other"
        " non-public addresses are refused, written literally here or resolved at delivery"
        " time, unless the server allows private targets",
        examples=["https://example.com/hooks/creditd"],
    ),
]
Description = Annotated[str, Field(max_length=500)]


class WebhookEndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: WebhookUrl
    events: EventPatterns = Field(default_factory=lambda: ["*"])
    description: Description | None = None
    enabled: bool = Field(default=True, description="A disabled endpoint is sent nothing")
    metadata: Metadata = Field(default_factory=dict)


_NOT_NULLABLE = ("url", "events", "enabled")


def _not_nullable(schema: dict[str, Any]) -> None:
    """Publish the fields a patch may omit but not null as their plain type (no null branch)."""
    for name in _NOT_NULLABLE:
        prop = schema["properties"][name]
        (plain,) = [b for b in prop.pop("anyOf") if b.get("type") != "null"]
        prop.update(plain)


class WebhookEndpointPatch(BaseModel):
    """Only the fields sent change."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_not_nullable)

    url: WebhookUrl | None = None
    events: EventPatterns | None = None
    description: Description | None = Field(default=None, description="null removes it")
    enabled: bool | None = Field(
        default=None,
        description="true re-enables (clears `disabled_reason` and the failure run; deliveries"
        " canceled meanwhile stay canceled: redeliver them); false disables it (reason"
        " `manual`) and cancels its pending deliveries",
    )
    metadata: Metadata | None = Field(
        default=None, description="Merged into the existing metadata; a null value removes a key"
    )

    @model_validator(mode="after")
    def _required_not_null(self) -> Any:
        for name in _NOT_NULLABLE:
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class WebhookEndpointOut(BaseModel):
    id: uuid.UUID
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    disabled_reason: WebhookDisabledReason | None = Field(
        description="Why it is disabled: `manual` (by a PATCH), `gone` (it answered 410),"
        " `failing` (every attempt failed for too long); null while enabled"
    )
    failing_since: datetime | None = Field(
        description="Start of the current run of failed attempts; null after any success"
    )
    previous_secret_expires_at: datetime | None = Field(
        description="After a rotation, until when the replaced secret still signs (a second"
        " `v1,` signature); null when only the current secret signs"
    )
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class WebhookEndpointWithSecret(WebhookEndpointOut):
    secret: str = Field(
        description="The signing secret (`whsec_` + base64 of 32 random bytes, Standard"
        " Webhooks). Shown only when it is created or rotated: store it",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )


class RotateSecretIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: int | None = Field(
        default=None,
        ge=0,
        le=MAX_GRACE_SECONDS,
        description="How long (seconds, at most 7 days) the replaced secret keeps signing; 0"
        " retires it at once (a leaked secret). Default: the server's"
        " `CREDITD_WEBHOOKS__SECRET_GRACE_SECONDS` (24 h)",
    )


class WebhookAttemptOut(BaseModel):
    """One HTTP request of a delivery and what came back."""

    id: uuid.UUID
    delivery_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    attempt: int = Field(description="1 for the first try of the delivery")
    status_code: int | None = Field(description="null: no HTTP answer (see `error`)")
    latency_ms: int
    response_excerpt: str | None = Field(description="The start of the response body")
    error: str | None = Field(description="Why there was no answer (timeout, refused target)")
    succeeded: bool = Field(description="A 2xx answer")
    next_attempt_at: datetime | None = Field(
        description="The retry this failure scheduled; null when none was (success, or final)"
    )
    created_at: datetime


class RedeliverIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint_id: uuid.UUID | None = Field(
        default=None,
        description="Only this endpoint (whatever its subscriptions); default: every enabled"
        " endpoint subscribed to the event's type",
    )


class RedeliveryOut(BaseModel):
    id: uuid.UUID
    endpoint_id: uuid.UUID
    status: WebhookDeliveryState
    attempts: int = Field(description="Attempts made since the last (re)delivery: 0 here")
    next_attempt_at: datetime | None


class RedeliverOut(BaseModel):
    event_id: uuid.UUID
    deliveries: list[RedeliveryOut] = Field(
        description="The deliveries made pending, one per endpoint (empty when no endpoint"
        " wants the event)"
    )
