"""Typed request shapes (TypedDicts) and response models (frozen dataclasses).

Amounts are ``Decimal`` everywhere; timestamps are timezone-aware ``datetime``; ids are ``str``.
Each response model keeps the JSON it was built from in ``raw`` (fields a newer server adds
are there).
"""

from __future__ import annotations

import dataclasses
import keyword
import types
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import (
    Any,
    Generic,
    Literal,
    TypedDict,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

T = TypeVar("T")

Amount = Decimal | int | str
"""An amount argument: a Decimal, an int, or a decimal string. Never a float."""

Scope = Literal["admin", "write", "read", "usage"]
TransactionStatus = Literal["pending", "completed", "failed", "expired", "denied"]
DenyReason = Literal["insufficient_credits", "spend_cap_reached", "concurrency_limit"]
RefillInterval = Literal["none", "day", "week", "month", "year"]
RefillMode = Literal["reset", "rollover"]
PlanInterval = Literal["day", "month", "year"]
Provider = Literal["stripe", "razorpay", "manual"]
CapPeriod = Literal["day", "month"]
CapAction = Literal["deny", "warn"]
GroupBy = Literal["user", "model", "feature", "day", "team", "member"]
TeamRole = Literal["owner", "member"]
GrantSource = Literal["adjustment", "purchase", "promo", "bonus"]
GrantCategory = Literal["paid", "promotional"]
PaymentProvider = Literal["stripe", "razorpay"]
WebhookDisabledReason = Literal["manual", "gone", "failing"]
DeliveryStatus = Literal["pending", "succeeded", "failed", "not_sent"]
PaymentStatus = Literal[
    "created",
    "pending",
    "succeeded",
    "failed",
    "expired",
    "canceled",
    "partially_refunded",
    "refunded",
    "disputed",
    "won",
    "lost",
]


# --- request shapes ---------------------------------------------------------------------------


class Tokens(TypedDict, total=False):
    """Usage counts. ``input_tokens`` excludes cached input, which is priced separately
    (``cache_read_tokens`` is another name for ``cached_input_tokens``). Per-1K prices read the
    token counts; pricing expressions read every metric."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    tool_calls: int
    search_queries: int
    search_results: int
    web_search_calls: int
    code_exec_calls: int
    images: int
    audio_seconds: Amount


class ProjectSettingsPatch(TypedDict, total=False):
    auto_create_users: bool
    default_hold_ttl_seconds: int
    low_balance_thresholds: list[Amount]
    # Credits per major unit of each currency ({"USD": 100}); replaces the whole map.
    credits_per_unit: dict[str, Amount]
    # "user" | "only_team": the account a usage call without team_id charges.
    team_usage_default: str


class MemberSpendCapIn(TypedDict):
    period: CapPeriod
    limit: Amount


class ModelOverride(TypedDict, total=False):
    """Per-model pricing for a tier: prices replace the project's, the multiplier the tier's."""

    input_price_per_1k: Amount | None
    output_price_per_1k: Amount | None
    cached_input_price_per_1k: Amount | None
    request_price: Amount | None
    price_multiplier: Amount | None


class PriceIn(TypedDict):
    amount: Amount
    currency: str


class _Sentinel:
    """A parameter that was not given (distinct from None, which sends null)."""

    _instance: _Sentinel | None = None

    def __new__(cls) -> _Sentinel:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> bool:
        return False


NOT_GIVEN: Any = _Sentinel()
"""Default of update parameters: the field is left unchanged. ``None`` sends null (clears it)."""


# --- response models --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Model:
    # The JSON the model was built from: fields a newer server adds are found here.
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a cursor-paginated list."""

    data: list[T]
    has_more: bool
    next_cursor: str | None


@dataclass(frozen=True, kw_only=True)
class ProjectSettings(_Model):
    auto_create_users: bool
    default_hold_ttl_seconds: int
    low_balance_thresholds: list[Decimal]
    # Defaulted: servers before payments do not send it.
    credits_per_unit: dict[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Project(_Model):
    id: str
    name: str
    settings: ProjectSettings
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class BootstrapKey(_Model):
    id: str
    key: str
    scopes: list[str]


@dataclass(frozen=True, kw_only=True)
class ProjectCreated(_Model):
    """An operator-created project with its first admin key (the secret is shown only here)."""

    id: str
    name: str
    settings: ProjectSettings
    created_at: datetime
    api_key: BootstrapKey


@dataclass(frozen=True, kw_only=True)
class ApiKey(_Model):
    id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    key: str | None = None  # the secret: only in the create response


@dataclass(frozen=True, kw_only=True)
class ModelPrice(_Model):
    id: str
    input_price_per_1k: Decimal | None  # None when an expression prices the model
    output_price_per_1k: Decimal | None
    cached_input_price_per_1k: Decimal | None
    request_price: Decimal
    created_at: datetime
    updated_at: datetime
    expression: str | None = None


@dataclass(frozen=True, kw_only=True)
class Job(_Model):
    name: str
    price: Decimal
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class PriceEvaluation(_Model):
    credits: Decimal
    # kind "per_1k" (prices and parts) or "expression" (expression, variables, value),
    # with multiplier and credits
    breakdown: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Balance(_Model):
    available: Decimal
    held: Decimal
    total: Decimal


@dataclass(frozen=True, kw_only=True)
class User(_Model):
    id: str
    tier_id: str | None
    features: dict[str, Any]
    metadata: dict[str, Any]
    created_at: datetime
    balance: Balance


@dataclass(frozen=True, kw_only=True)
class Grant(_Model):
    id: str
    amount: Decimal
    remaining: Decimal
    source: str
    reason: str | None
    expires_at: datetime | None
    created_at: datetime
    # Defaulted: servers before payments do not send them.
    category: str = "promotional"
    payment_id: str | None = None
    cost_basis: Decimal | None = None  # money paid per credit, in cost_currency
    cost_currency: str | None = None
    balance: Decimal | None = None  # the user's available balance: only when just created


@dataclass(frozen=True, kw_only=True)
class Debit(_Model):
    ledger_entry_id: int
    amount: Decimal
    balance: Decimal


@dataclass(frozen=True, kw_only=True)
class LedgerEntry(_Model):
    id: int
    kind: str
    amount: Decimal
    held_amount: Decimal
    balance_after: Decimal
    total_after: Decimal
    held_after: Decimal
    transaction_id: str | None
    grant_id: str | None
    reason: str | None
    created_at: datetime
    # The user whose account changed; on a team's ledger the member (None: a team-level change).
    user_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class Team(_Model):
    """A shared balance its members charge (``team_id`` on usage calls)."""

    id: str
    name: str | None
    metadata: dict[str, Any]
    created_at: datetime
    balance: Balance


@dataclass(frozen=True, kw_only=True)
class MemberSpendCap(_Model):
    period: str
    limit: Decimal


@dataclass(frozen=True, kw_only=True)
class TeamMember(_Model):
    team_id: str
    user_id: str
    role: str
    spend_caps: list[MemberSpendCap]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class StartResult(_Model):
    transaction_id: str
    continue_: bool
    balance: Decimal
    credits_used: Decimal
    hold_amount: Decimal
    status: str
    expires_at: datetime | None
    message: str
    reason: str | None

    @property
    def admitted(self) -> bool:
        """Whether the call may go ahead (``continue`` in the JSON)."""
        return self.continue_


@dataclass(frozen=True, kw_only=True)
class CompleteResult(_Model):
    transaction_id: str
    status: str
    credits_used: Decimal
    balance: Decimal
    balance_adjustment: Decimal
    late: bool


@dataclass(frozen=True, kw_only=True)
class RefundResult(_Model):
    refund_id: str
    amount: Decimal
    refunded_total: Decimal
    balance: Decimal


@dataclass(frozen=True, kw_only=True)
class Transaction(_Model):
    id: str
    user_id: str
    model: str
    feature_identifier: str | None
    status: str
    reason: str | None
    hold_amount: Decimal
    credits_used: Decimal
    refunded_total: Decimal
    provisional_tokens: dict[str, Any] | None
    finalized_tokens: dict[str, Any] | None
    metadata: dict[str, Any]
    late: bool
    expires_at: datetime | None
    completed_at: datetime | None
    created_at: datetime
    team_id: str | None = None  # the team whose account paid (None: the user's own)


@dataclass(frozen=True, kw_only=True)
class UsageResult(_Model):
    transaction_id: str
    status: str
    credits_used: Decimal
    balance: Decimal


@dataclass(frozen=True, kw_only=True)
class CheckResult(_Model):
    allowed: bool
    reason: str | None
    available: Decimal
    required: Decimal


@dataclass(frozen=True, kw_only=True)
class Tier(_Model):
    id: str
    name: str
    credits: Decimal
    refill_interval: str
    refill_mode: str
    rollover_cap: Decimal | None
    allow_overage: bool
    overage_limit: Decimal | None
    price_multiplier: Decimal
    model_overrides: dict[str, Any]
    max_concurrent_transactions: int | None
    features: dict[str, Any]
    is_default: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class Price(_Model):
    amount: Decimal
    currency: str


@dataclass(frozen=True, kw_only=True)
class Plan(_Model):
    id: str
    name: str
    price: Price
    interval: str
    credits_per_period: Decimal
    tier_id: str | None
    stripe_price_id: str | None
    razorpay_plan_id: str | None
    active: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class Subscription(_Model):
    id: str
    user_id: str
    plan_id: str
    provider: str
    status: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    ended_at: datetime | None
    provider_subscription_id: str | None
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class SubscriptionCreated(_Model):
    subscription: Subscription
    checkout_url: str | None


@dataclass(frozen=True, kw_only=True)
class Promo(_Model):
    code: str
    credits: Decimal
    description: str | None
    max_redemptions: int | None
    max_per_user: int
    starts_at: datetime | None
    expires_at: datetime | None
    eligible_tier_ids: list[str] | None
    eligible_user_ids: list[str] | None
    new_users_only: bool
    credit_expires_in_days: int | None
    active: bool
    redemptions_count: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class Eligibility(_Model):
    eligible: bool
    reason: str | None


@dataclass(frozen=True, kw_only=True)
class Claim(_Model):
    grant: Grant
    balance: Decimal


@dataclass(frozen=True, kw_only=True)
class Redemption(_Model):
    id: str
    user_id: str
    grant_id: str
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class SpendCap(_Model):
    period: str
    model: str | None
    limit: Decimal
    action: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class Event(_Model):
    id: str
    type: str
    user_id: str | None
    data: dict[str, Any]
    created_at: datetime
    # pending | succeeded | failed | not_sent. Defaulted: servers before webhooks do not send it.
    delivery_status: str | None = None


@dataclass(frozen=True, kw_only=True)
class WebhookEndpoint(_Model):
    """A URL that receives the project's events, signed per Standard Webhooks."""

    id: str
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    disabled_reason: str | None  # manual | gone | failing; None while enabled
    failing_since: datetime | None
    previous_secret_expires_at: datetime | None  # the replaced secret signs until then
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    secret: str | None = None  # the signing secret: only in the create and rotate responses


@dataclass(frozen=True, kw_only=True)
class WebhookAttempt(_Model):
    """One HTTP request of a delivery: ``status_code`` None when there was no answer."""

    id: str
    delivery_id: str
    event_id: str
    event_type: str
    attempt: int
    status_code: int | None
    latency_ms: int
    response_excerpt: str | None
    error: str | None
    succeeded: bool
    next_attempt_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class Redelivery(_Model):
    id: str
    endpoint_id: str
    status: str
    attempts: int
    next_attempt_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class RedeliverResult(_Model):
    event_id: str
    deliveries: list[Redelivery]


@dataclass(frozen=True, kw_only=True)
class SpendRow(_Model):
    key: str | None
    credits: Decimal
    transactions: int


@dataclass(frozen=True, kw_only=True)
class SpendReport(_Model):
    group_by: str
    start: datetime
    end: datetime
    data: list[SpendRow]


@dataclass(frozen=True, kw_only=True)
class Summary(_Model):
    start: datetime
    end: datetime
    credits_consumed: Decimal
    active_users: int
    transactions: int
    top_model: str | None
    top_user: str | None


@dataclass(frozen=True, kw_only=True)
class PaidLiability(_Model):
    currency: str
    credits: Decimal
    value: Decimal  # deferred revenue, in ``currency``


@dataclass(frozen=True, kw_only=True)
class Liability(_Model):
    """Credits outstanding: paid ones with their money value per currency, and the rest."""

    paid: list[PaidLiability]
    paid_unpriced_credits: Decimal
    promotional_credits: Decimal
    debt: Decimal
    as_of: datetime


@dataclass(frozen=True, kw_only=True)
class ProviderAccount(_Model):
    """A project's Stripe or Razorpay account; the secrets come back masked."""

    provider: str
    key_id: str | None
    secret_key: str
    webhook_secret: str
    previous_webhook_secret_expires_at: datetime | None
    livemode: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class Payment(_Model):
    """A top-up or subscription charge; ``amount`` is money (major units), ``credits`` credits."""

    id: str
    user_id: str
    kind: str
    provider: str
    status: str
    amount: Decimal
    currency: str
    amount_minor: int
    credits: Decimal
    checkout_url: str | None
    provider_reference: str | None
    provider_payment_id: str | None
    subscription_id: str | None
    credits_granted: Decimal
    credits_clawed_back: Decimal
    amount_refunded: Decimal
    dispute_status: str | None
    failure_reason: str | None
    metadata: dict[str, str]
    succeeded_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class Health(_Model):
    status: str
    detail: str | None = None


# --- JSON → models ----------------------------------------------------------------------------


def _field_name(key: str) -> str:
    return f"{key}_" if keyword.iskeyword(key) else key


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = get_type_hints(cls)
    return hints


def _convert(tp: Any, value: Any) -> Any:
    if value is None or tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if tp is Decimal:
        if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
            raise TypeError(f"expected a number, got {type(value).__name__}")
        return value if isinstance(value, Decimal) else Decimal(value)
    if tp is datetime:
        return datetime.fromisoformat(value) if isinstance(value, str) else value
    if tp is str:
        return str(value)
    if origin is list:
        (item,) = get_args(tp) or (Any,)
        return [_convert(item, v) for v in value]
    if origin is dict:
        _, item = get_args(tp) or (str, Any)
        return {k: _convert(item, v) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return parse(tp, value)
    return value


def parse(cls: type[T], data: Any) -> T:
    """Build a response model from parsed JSON (amounts to Decimal, timestamps to datetime)."""
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = _field_name(key)
        if name in names and name != "raw":
            kwargs[name] = _convert(hints[name], value)
    if "raw" in names:
        kwargs["raw"] = data
    return cls(**kwargs)


def parse_page(cls: type[T], data: Any) -> Page[T]:
    return Page(
        data=[parse(cls, item) for item in data["data"]],
        has_more=bool(data["has_more"]),
        next_cursor=data.get("next_cursor"),
    )


__all__ = [
    "NOT_GIVEN",
    "Amount",
    "ApiKey",
    "Balance",
    "BootstrapKey",
    "CheckResult",
    "Claim",
    "CompleteResult",
    "Debit",
    "DeliveryStatus",
    "Eligibility",
    "Event",
    "Grant",
    "GrantCategory",
    "Health",
    "LedgerEntry",
    "Liability",
    "MemberSpendCap",
    "MemberSpendCapIn",
    "ModelOverride",
    "ModelPrice",
    "Page",
    "PaidLiability",
    "Payment",
    "PaymentProvider",
    "PaymentStatus",
    "Plan",
    "Price",
    "PriceIn",
    "Project",
    "ProjectCreated",
    "ProjectSettings",
    "ProjectSettingsPatch",
    "Promo",
    "ProviderAccount",
    "RedeliverResult",
    "Redelivery",
    "Redemption",
    "RefundResult",
    "SpendCap",
    "SpendReport",
    "SpendRow",
    "StartResult",
    "Subscription",
    "SubscriptionCreated",
    "Summary",
    "Team",
    "TeamMember",
    "TeamRole",
    "Tier",
    "Tokens",
    "Transaction",
    "UsageResult",
    "User",
    "WebhookAttempt",
    "WebhookDisabledReason",
    "WebhookEndpoint",
]
