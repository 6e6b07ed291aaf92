from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from typing_extensions import TypeAliasType

from app.core.money import Money, NonNegativeAmount, PositiveAmount, UtcDatetime
from app.jobs.schemas import JobName
from app.pricing.schemas import TokenUsage
from app.teams.schemas import TeamId
from app.users.schemas import Metadata, UserId

ModelName = Annotated[str, Field(min_length=1, max_length=200, examples=["gpt-4o"])]
Feature = Annotated[str, Field(min_length=1, max_length=200, examples=["chat"])]
HoldTtl = Annotated[int, Field(ge=1, le=7 * 86400, strict=True)]
# Named (schema components) so generated clients share one type for each.
TransactionStatus = TypeAliasType(
    "TransactionStatus", Literal["pending", "completed", "failed", "expired", "denied"]
)
DenyReason = TypeAliasType(
    "DenyReason", Literal["insufficient_credits", "spend_cap_reached", "concurrency_limit"]
)
# Token counts as stored: TokenUsage.model_dump(), returned as they are (no re-validation of
# stored rows); published as TokenUsage so generated clients type the counts.
# Metrics stored as 0 are left out of the row (TokenUsage.dump); they are shown as 0.
_NO_TOKENS = TokenUsage().model_dump()
StoredTokens = Annotated[
    dict[str, Any],
    AfterValidator(lambda stored: {**_NO_TOKENS, **stored}),
    WithJsonSchema({"$ref": f"#/components/schemas/{TokenUsage.__name__}"}),
]


TEAM_USAGE_DOC = (
    "Charge this team's account (the user must be a member; the member's tier, spend caps and "
    "team spend caps apply). Absent: the user's own account, or with the project setting "
    "`team_usage_default: only_team` the user's only team when they belong to exactly one."
)


class StartIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: UserId
    model: ModelName
    team_id: TeamId | None = Field(default=None, description=TEAM_USAGE_DOC)
    provisional_tokens: TokenUsage | None = Field(
        default=None, description="Expected usage; its price is held. Absent: nothing is held."
    )
    feature_identifier: Feature | None = None
    metadata: Metadata = Field(default_factory=dict)
    hold_ttl_seconds: HoldTtl | None = Field(
        default=None, description="Defaults to the project's default_hold_ttl_seconds"
    )


class StartOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    transaction_id: uuid.UUID
    continue_: bool = Field(alias="continue")
    balance: Money
    credits_used: Money
    hold_amount: Money
    status: Literal["pending", "denied"]
    expires_at: datetime | None
    message: str
    reason: DenyReason | None


class CompleteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    success: bool = Field(strict=True)
    finalized_tokens: TokenUsage | None = Field(
        default=None, description="Actual usage; absent with success=true: the provisional tokens"
    )
    metadata: Metadata = Field(default_factory=dict)


class CompleteOut(BaseModel):
    transaction_id: uuid.UUID
    status: Literal["completed", "failed"]
    credits_used: Money
    balance: Money
    balance_adjustment: Money = Field(
        description="Hold released by this completion minus the charge (positive = returned)"
    )
    late: bool


class ExtendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hold_ttl_seconds: HoldTtl


class RefundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: PositiveAmount | None = Field(
        default=None, description="Defaults to everything not yet refunded"
    )
    reason: str | None = Field(default=None, max_length=500)


class RefundOut(BaseModel):
    refund_id: uuid.UUID
    amount: Money
    refunded_total: Money
    balance: Money


class TransactionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    user_id: str
    team_id: str | None = Field(description="The team whose account paid; null: the user's own")
    model: str
    feature_identifier: str | None
    status: TransactionStatus
    reason: str | None
    hold_amount: Money
    credits_used: Money
    refunded_total: Money
    provisional_tokens: StoredTokens | None
    finalized_tokens: StoredTokens | None
    metadata: dict[str, Any] = Field(validation_alias="metadata_")
    late: bool
    job: bool = Field(description="A fixed-cost job's charge: model holds the job's name")
    expires_at: datetime | None
    completed_at: datetime | None
    created_at: datetime


class UsageIn(BaseModel):
    """Either ``model`` with ``tokens``, or a fixed-cost ``job`` (``quantity`` runs)."""

    model_config = ConfigDict(extra="forbid")

    user_id: UserId
    model: ModelName | None = None
    team_id: TeamId | None = Field(default=None, description=TEAM_USAGE_DOC)
    tokens: TokenUsage | None = Field(default=None, description="Required with model")
    job: JobName | None = Field(
        default=None, description="A job priced by PUT /v1/jobs/{name}, instead of model"
    )
    quantity: int | None = Field(
        default=None, ge=1, le=1_000_000, strict=True, description="With job: runs; 1"
    )
    feature_identifier: Feature | None = None
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _model_or_job(self) -> UsageIn:
        if (self.model is None) == (self.job is None):
            raise ValueError("give exactly one of model and job")
        if self.model is not None and self.tokens is None:
            raise ValueError("tokens are required with model")
        if self.job is not None and self.tokens is not None:
            raise ValueError("a job has a fixed price: send quantity, not tokens")
        if self.model is not None and self.quantity is not None:
            raise ValueError("quantity goes with job")
        return self


class UsageOut(BaseModel):
    transaction_id: uuid.UUID
    status: Literal["completed"]
    credits_used: Money
    balance: Money


class CheckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: UserId
    model: ModelName | None = None
    team_id: TeamId | None = Field(default=None, description=TEAM_USAGE_DOC)
    provisional_tokens: TokenUsage | None = None
    amount: NonNegativeAmount | None = Field(
        default=None, description="Credits needed; instead of model + provisional_tokens"
    )


class CheckOut(BaseModel):
    allowed: bool
    reason: DenyReason | None
    available: Money
    required: Money


class TransactionFilters(BaseModel):
    user_id: str | None = None
    team_id: str | None = None
    status: TransactionStatus | None = None
    model: str | None = None
    feature_identifier: str | None = None
    created_after: UtcDatetime | None = None
    created_before: UtcDatetime | None = None
