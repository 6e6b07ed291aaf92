"""Every event type creditd emits: when, and the schema of its ``data``; and the matching of
endpoint subscriptions against the types.

An endpoint subscribes to ``["*"]`` (everything), exact types (``"payment.succeeded"``) or
families (``"payment.*"``: every type starting with ``payment.``).

Each model below describes the ``data`` its emitters write (grep the type's name in app/).
``tests/events/test_catalogue.py`` runs the flows that emit every type and validates each
stored event against its model with extra keys forbidden, so an emitter that drifts from its
model fails there. Receivers should ignore keys they do not know: later versions may add some
(the published schemas do not forbid them).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from app.core.money import Money
from app.transactions.schemas import DenyReason

# --- shared fields -----------------------------------------------------------------------------

Balance = Annotated[
    Money,
    Field(description="The user's available balance (total - held) right after the change"),
]
PreviousBalance = Annotated[
    Money, Field(description="The user's available balance right before the change")
]
GrantId = Annotated[uuid.UUID, Field(description="The grant the credits came in (or left)")]
LedgerEntryId = Annotated[int, Field(description="The ledger entry of the change")]
TransactionId = Annotated[uuid.UUID, Field(description="The usage transaction")]
ModelName = Annotated[str, Field(description="The transaction's model id")]
PaymentId = Annotated[uuid.UUID, Field(description="The payment (`GET /v1/payments/{id}`)")]
SubscriptionId = Annotated[uuid.UUID, Field(description="The subscription")]
Thresholds = Annotated[
    list[Money],
    Field(description="The project's `low_balance_thresholds` this change crossed, highest first"),
]


class EventData(BaseModel):
    """The ``data`` of an event. Later versions may add keys: ignore those you do not know."""


TeamKey = Annotated[
    str | None,
    Field(
        default=None,
        description="Present when the account is a team's (`/v1/teams/{id}`): the balance is "
        "the team's and the event's user_id is the member (null for team-level changes)",
    ),
]


class _TeamAccount(EventData):
    team_id: TeamKey


# --- transactions ------------------------------------------------------------------------------


class _StartData(_TeamAccount):
    """The response of the start, and the model."""

    transaction_id: TransactionId
    continue_: bool = Field(alias="continue", description="Whether the call may go ahead")
    balance: Balance
    credits_used: Money = Field(description="The credits held (= hold_amount)")
    hold_amount: Money = Field(description="The credits held for this transaction")
    status: str
    expires_at: datetime | None = Field(description="When the hold is released if not completed")
    message: str = Field(description="A human-readable explanation")
    reason: DenyReason | None
    model: ModelName


class TransactionStartedData(_StartData):
    status: Literal["pending"]
    reason: None = Field(description="Always null for an admitted start")


class TransactionDeniedData(_StartData):
    status: Literal["denied"]
    reason: DenyReason = Field(description="Why the start was refused")


class _SettledData(_TeamAccount):
    """The response of the completion, the model and the hold."""

    transaction_id: TransactionId
    status: str
    credits_used: Money = Field(description="The credits charged (0 for a failed transaction)")
    balance: Balance
    balance_adjustment: Money = Field(
        description="hold_amount - credits_used: positive = returned to the user"
    )
    late: bool = Field(description="Completed after the sweeper had released its expired hold")
    model: ModelName
    hold_amount: Money = Field(description="The credits that were held (0 for `POST /v1/usage`)")


class TransactionCompletedData(_SettledData):
    status: Literal["completed"]
    pricing_error: str | None = Field(
        default=None,
        description="Present when the usage could not be priced at completion (its expression"
        " failed for these counts, or the cost was too large): the hold was charged instead",
    )


class TransactionFailedData(_SettledData):
    status: Literal["failed"]


class TransactionExpiredData(_TeamAccount):
    transaction_id: TransactionId
    model: ModelName
    hold_amount: Money = Field(description="The credits held, now released")
    balance: Balance


class TransactionRefundedData(_TeamAccount):
    refund_id: uuid.UUID = Field(description="This refund")
    transaction_id: TransactionId
    amount: Money = Field(description="Credits given back by this refund")
    refunded_total: Money = Field(description="Credits refunded on the transaction so far")
    balance: Balance


class SpendCapExceededData(EventData):
    transaction_id: TransactionId = Field(description="The start that went over the cap")
    period: str = Field(description="`day` or `month` (UTC windows)")
    model: str | None = Field(description="The model the cap is for; null: every model")
    limit: Money = Field(description="The cap")
    spent: Money = Field(description="Credits charged in the window before this start")
    held: Money = Field(description="Credits held by pending transactions before this start")
    requested: Money = Field(description="The hold this start asked for")
    action: Literal["warn"] = Field(
        description="Always `warn`: a `deny` cap refuses the start instead (transaction.denied)"
    )


# --- credits -----------------------------------------------------------------------------------


class CreditsGrantedData(_TeamAccount):
    grant_id: GrantId
    amount: Money = Field(description="Credits granted")
    source: str = Field(
        description="`adjustment`, `purchase`, `promo` or `bonus` (the API, payments), `tier` "
        "(tier allocations and refills), `subscription` (plan periods)"
    )
    category: str = Field(description="`paid` (burns last) or `promotional`")
    ledger_entry_id: LedgerEntryId
    balance: Balance
    tier_id: str | None = Field(default=None, description="Present for `tier` grants")
    subscription_id: SubscriptionId | None = Field(
        default=None, description="Present for `subscription` grants"
    )
    plan_id: str | None = Field(default=None, description="Present for `subscription` grants")
    payment_id: PaymentId | None = Field(
        default=None, description="Present when a payment bought the credits"
    )


class CreditsDebitedData(_TeamAccount):
    amount: Money = Field(description="Credits removed")
    ledger_entry_id: LedgerEntryId
    balance: Balance


class CreditsExpiredData(_TeamAccount):
    grant_id: GrantId
    amount: Money = Field(description="The unspent remainder removed (may be 0)")
    expires_at: datetime = Field(description="The grant's expiry")
    balance: Balance


class CreditsExpiringData(_TeamAccount):
    grant_id: GrantId
    remaining: Money = Field(description="Credits left on the grant")
    expires_at: datetime = Field(description="When the remainder expires")


class CreditsClawedBackData(EventData):
    payment_id: PaymentId
    grant_id: GrantId = Field(description="The grant the payment bought")
    amount: Money = Field(description="Credits taken back by this change")
    credits_clawed_back: Money = Field(description="Credits taken back for the payment so far")
    from_grant: Money = Field(description="The part taken from the grant's remainder")
    debt: Money = Field(description="The part the grant no longer had: it became debt")
    balance: Balance


class CreditsRestoredData(EventData):
    payment_id: PaymentId
    grant_id: GrantId = Field(description="The grant the payment bought")
    amount: Money = Field(description="Credits given back by this change")
    credits_clawed_back: Money = Field(description="Credits still taken back for the payment")
    balance: Balance


# --- balance -----------------------------------------------------------------------------------


class BalanceLowData(_TeamAccount):
    thresholds: Thresholds
    previous_balance: PreviousBalance
    balance: Balance


class BalanceDepletedData(_TeamAccount):
    previous_balance: PreviousBalance
    balance: Balance


class BalanceRecoveredData(_TeamAccount):
    thresholds: Annotated[
        list[Money],
        Field(
            description="The `low_balance_thresholds` this change rose to or above, highest "
            "first; empty when it only crossed zero"
        ),
    ]
    previous_balance: PreviousBalance
    balance: Balance


# --- teams -------------------------------------------------------------------------------------


class TeamData(EventData):
    team_id: str = Field(description="The team")
    name: str | None = Field(description="Its name")


class TeamDeletedData(EventData):
    team_id: str = Field(description="The team")
    balance: Balance


class MemberCap(BaseModel):
    period: Literal["day", "month"]
    limit: Money


class TeamMemberData(EventData):
    team_id: str = Field(description="The team")
    user_id: str = Field(description="The member")
    role: Literal["owner", "member"]
    spend_caps: list[MemberCap] = Field(description="The member's caps on the team's account")


class TeamMemberRemovedData(EventData):
    team_id: str = Field(description="The team")
    user_id: str = Field(description="The former member")
    reason: Literal["removed", "user_deleted"] = Field(
        description="`removed` (the API) or `user_deleted` (a deleted user leaves every team)"
    )


# --- promos, tiers -----------------------------------------------------------------------------


class PromoClaimedData(EventData):
    code: str = Field(description="The promo code")
    redemption_id: uuid.UUID = Field(description="This redemption")
    grant_id: GrantId
    amount: Money = Field(description="Credits granted")
    ledger_entry_id: LedgerEntryId
    balance: Balance


class UserTierChangedData(EventData):
    tier_id: str | None = Field(description="The new tier; null: none (no tier to go back to)")
    reset_balance: bool = Field(description="Whether earlier tier allocations were removed")
    balance: Balance


# --- subscriptions -----------------------------------------------------------------------------


class _SubscriptionData(EventData):
    """The subscription after the change."""

    subscription_id: SubscriptionId
    plan_id: str
    provider: str = Field(description="`manual`, `stripe` or `razorpay`")
    status: str = Field(description="`incomplete`, `active`, `past_due` or `canceled`")
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    ended_at: datetime | None


class SubscriptionCreatedData(_SubscriptionData):
    credits_granted: Money | None = Field(
        description="Credits granted for the first period (manual); 0 for a provider "
        "subscription, which grants when its first period is paid"
    )
    balance: Money | None = Field(default=None, description="Present for manual subscriptions")
    checkout_url: str | None = Field(
        default=None, description="Present for provider subscriptions: where the user pays"
    )


class SubscriptionActivatedData(_SubscriptionData):
    credits_granted: Money = Field(description="Credits granted for the first paid period")
    balance: Balance
    payment_id: PaymentId | None = Field(
        default=None, description="The period's payment; absent for a zero charge (a trial)"
    )


class SubscriptionRenewedData(_SubscriptionData):
    credits_granted: Money = Field(description="Credits granted for the new period")
    balance: Balance
    payment_id: PaymentId | None = Field(
        default=None, description="Provider subscriptions: the period's payment, if any"
    )


class SubscriptionCanceledData(_SubscriptionData):
    at_period_end: bool = Field(description="Ends at the period end (else it ended now)")


class SubscriptionPastDueData(_SubscriptionData):
    pass


class SubscriptionEndedData(_SubscriptionData):
    reason: str = Field(
        description="The provider's status that ended it (`halted`, `ended`, `canceled`); "
        "manual subscriptions: `canceled` (set to cancel at the period end) or `plan_deleted`"
    )


class SubscriptionChargeNotGrantedData(_SubscriptionData):
    reason: str = Field(
        description="`not_a_period_invoice`, `currency_mismatch`, `period_already_granted`, "
        "`user_deleted` or `plan_deleted`: the money was taken, refund it or grant by hand"
    )
    payment_id: PaymentId = Field(description="The recorded payment of the charge")
    charge_id: str = Field(description="The provider's charge (Stripe invoice, Razorpay payment)")
    amount: Money = Field(description="The amount charged, in major units")
    currency: str = Field(description="ISO 4217")
    period_start: datetime = Field(description="The period the charge was for")


# --- payments ----------------------------------------------------------------------------------


class _PaymentData(EventData):
    """The payment after the change."""

    payment_id: PaymentId
    provider: str = Field(description="`stripe` or `razorpay`")
    status: str = Field(description="The payment's status after this change")
    amount: Money = Field(description="The amount to pay, in major units of currency")
    currency: str = Field(description="ISO 4217")
    credits: Money = Field(description="Credits the payment buys")


class PaymentSucceededData(_PaymentData):
    provider_payment_id: str | None = Field(description="The provider's payment id, if known")


class PaymentFailedData(_PaymentData):
    reason: str | None = Field(description="The provider's failure reason, if any")
    checkout_open: bool = Field(
        description="An attempt failed but the checkout can still be paid: the payment stays "
        "open (a later success still credits it)"
    )


class PaymentExpiredData(_PaymentData):
    pass


class PaymentCanceledData(_PaymentData):
    pass


class PaymentRefundedData(_PaymentData):
    amount_refunded: Money = Field(description="Refunded so far, in major units")
    amount_refunded_minor: int = Field(description="Refunded so far, in minor units")


class PaymentDisputedData(_PaymentData):
    dispute_status: str = Field(
        description="`inquiry`, `open`, `withdrawn`, `reinstated`, `won` or `lost`"
    )
    dispute_id: str | None = Field(description="The provider's dispute id")
    dispute_amount: Money = Field(description="The disputed amount, in major units")


class PaymentAmountSeen(BaseModel):
    """An amount as recorded or as the provider reported it (only the keys known)."""

    currency: str = Field(description="ISO 4217")
    amount_minor: int | None = Field(default=None, description="In minor units")
    amount_refunded_minor: int | None = Field(
        default=None, description="Refunded, in minor units (a refund in another currency)"
    )


class PaymentAmountMismatchData(_PaymentData):
    expected: PaymentAmountSeen = Field(description="What the payment was created for")
    got: PaymentAmountSeen = Field(description="What the provider reported")
    provider_payment_id: str | None = Field(
        default=None, description="Present for a paid checkout: the provider's payment id"
    )


class PaymentConflictData(_PaymentData):
    provider_payment_id: str = Field(description="The provider payment the fact was about")
    recorded_provider_payment_id: str | None = Field(
        description="The provider payment already tied to this payment"
    )
    held_by_payment_id: uuid.UUID | None = Field(
        description="Another payment of the project that holds that provider payment"
    )


class PaymentUnclaimableData(_PaymentData):
    reason: str = Field(description="`user_deleted`: the user was deleted after paying")


class PaymentReconciliationFailedData(_PaymentData):
    reason: str = Field(description="Why reconciliation gave up")


# --- webhook endpoints -------------------------------------------------------------------------


class WebhookTestData(EventData):
    endpoint_id: uuid.UUID = Field(description="The endpoint the test was sent to (only it)")
    message: str = Field(description="A fixed sentence saying this is a test")


class WebhookEndpointDisabledData(EventData):
    endpoint_id: uuid.UUID = Field(description="The endpoint disabled")
    url: str = Field(description="Its URL")
    reason: str = Field(
        description="`gone` (it answered 410) or `failing` (every attempt failed for "
        "`CREDITD_WEBHOOKS__DISABLE_AFTER_SECONDS`)"
    )
    failing_since: datetime | None = Field(
        description="Since when every attempt to it failed (null when it answered 410 after a"
        " success)"
    )
    last_status_code: int | None = Field(
        description="The status of the last attempt (null when it got no HTTP response)"
    )


# --- the catalogue -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EventType:
    name: str
    model: type[EventData]
    when: str  # one sentence: what happened


_ENTRIES = (
    EventType(
        "transaction.started",
        TransactionStartedData,
        "A usage transaction was admitted and its hold placed (`POST /v1/transactions/start`).",
    ),
    EventType(
        "transaction.denied",
        TransactionDeniedData,
        "A start was refused: insufficient credits, a deny spend cap, or the concurrency limit.",
    ),
    EventType(
        "transaction.completed",
        TransactionCompletedData,
        "Usage was charged: a completion with `success: true`, or `POST /v1/usage`.",
    ),
    EventType(
        "transaction.failed",
        TransactionFailedData,
        "A completion with `success: false` released the hold and charged nothing.",
    ),
    EventType(
        "transaction.expired",
        TransactionExpiredData,
        "The sweeper released the hold of a transaction not completed before `expires_at`.",
    ),
    EventType(
        "transaction.refunded",
        TransactionRefundedData,
        "Credits of a completed transaction were refunded.",
    ),
    EventType(
        "spend_cap.exceeded",
        SpendCapExceededData,
        "An admitted start went over a `warn` spend cap.",
    ),
    EventType(
        "credits.granted",
        CreditsGrantedData,
        "Credits were granted: by the API, a tier allocation or refill, a plan period, or a "
        "payment.",
    ),
    EventType("credits.debited", CreditsDebitedData, "Credits were debited through the API."),
    EventType(
        "credits.expired",
        CreditsExpiredData,
        "The unspent remainder of a grant past its expiry was removed.",
    ),
    EventType(
        "credits.expiring",
        CreditsExpiringData,
        "A grant with credits left expires within 7 days (once per grant).",
    ),
    EventType(
        "credits.clawed_back",
        CreditsClawedBackData,
        "A refund or lost dispute of a payment took its credits back.",
    ),
    EventType(
        "credits.restored",
        CreditsRestoredData,
        "Clawed-back credits of a payment were given back (a dispute won or reinstated).",
    ),
    EventType(
        "balance.low",
        BalanceLowData,
        "The available balance fell from at or above a low-balance threshold to below it.",
    ),
    EventType(
        "balance.depleted",
        BalanceDepletedData,
        "The available balance fell from above 0 to 0 or below.",
    ),
    EventType(
        "balance.recovered",
        BalanceRecoveredData,
        "The available balance rose from below a low-balance threshold to at or above it, or "
        "from 0 or below to above 0.",
    ),
    EventType("team.created", TeamData, "A team was created (`POST /v1/teams`)."),
    EventType("team.updated", TeamData, "A team's name or metadata changed."),
    EventType(
        "team.deleted",
        TeamDeletedData,
        "A team was deleted: its account is closed and its members left.",
    ),
    EventType("team.member_added", TeamMemberData, "A user joined a team."),
    EventType("team.member_updated", TeamMemberData, "A member's role or team caps changed."),
    EventType(
        "team.member_removed",
        TeamMemberRemovedData,
        "A user left a team (removed, or deleted as a user).",
    ),
    EventType("promo.claimed", PromoClaimedData, "A user redeemed a promo code."),
    EventType(
        "user.tier_changed",
        UserTierChangedData,
        "A user moved to another tier (the API, or a plan's tier given or taken back).",
    ),
    EventType(
        "subscription.created",
        SubscriptionCreatedData,
        "A subscription was created: manual (first period granted) or at a provider "
        "(`incomplete` until paid).",
    ),
    EventType(
        "subscription.activated",
        SubscriptionActivatedData,
        "A provider subscription's first period was paid and granted.",
    ),
    EventType(
        "subscription.renewed",
        SubscriptionRenewedData,
        "A new period started and its credits were granted.",
    ),
    EventType(
        "subscription.canceled",
        SubscriptionCanceledData,
        "A subscription was canceled, now or at the period end.",
    ),
    EventType(
        "subscription.past_due",
        SubscriptionPastDueData,
        "The provider could not collect a renewal.",
    ),
    EventType(
        "subscription.ended",
        SubscriptionEndedData,
        "A subscription ended (at its period end after a cancel, or by the provider).",
    ),
    EventType(
        "subscription.charge_not_granted",
        SubscriptionChargeNotGrantedData,
        "Money was charged on a subscription but granted no credits: the operator must act.",
    ),
    EventType(
        "payment.succeeded",
        PaymentSucceededData,
        "A payment was paid; its credits were granted (see credits.granted).",
    ),
    EventType(
        "payment.failed",
        PaymentFailedData,
        "A payment failed (or one attempt failed while the checkout stays open).",
    ),
    EventType("payment.expired", PaymentExpiredData, "A checkout expired unpaid."),
    EventType("payment.canceled", PaymentCanceledData, "A checkout was canceled."),
    EventType(
        "payment.refunded",
        PaymentRefundedData,
        "A payment was refunded, in part or in full (credits are clawed back in proportion).",
    ),
    EventType(
        "payment.disputed",
        PaymentDisputedData,
        "A payment's dispute (chargeback) opened or changed state.",
    ),
    EventType(
        "payment.amount_mismatch",
        PaymentAmountMismatchData,
        "The provider reported another amount or currency than recorded: nothing was applied.",
    ),
    EventType(
        "payment.conflict",
        PaymentConflictData,
        "A provider payment could not be tied to the payment (another payment holds it): "
        "the operator must refund it.",
    ),
    EventType(
        "payment.unclaimable",
        PaymentUnclaimableData,
        "A payment succeeded for a user who no longer exists: nothing credited, refund it.",
    ),
    EventType(
        "payment.reconciliation_failed",
        PaymentReconciliationFailedData,
        "Reconciliation gave up on a payment the provider never reported on.",
    ),
    EventType(
        "webhook.test",
        WebhookTestData,
        "Sent by `POST /v1/webhook-endpoints/{id}/test`, to that endpoint only.",
    ),
    EventType(
        "webhook_endpoint.disabled",
        WebhookEndpointDisabledData,
        "An endpoint was disabled by delivery: it answered 410, or failed for too long.",
    ),
)

CATALOGUE: dict[str, EventType] = {entry.name: entry for entry in _ENTRIES}
TYPES: tuple[str, ...] = tuple(sorted(CATALOGUE))

_PATTERN = re.compile(r"^(\*|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?)$")


def data_model(name: str) -> type[EventData]:
    """The model of event type ``name``'s data (KeyError for a type creditd does not emit)."""
    return CATALOGUE[name].model


# Fields many types share, abbreviated in the README's table.
_SHARED: dict[type[EventData], str] = {
    _PaymentData: "*payment*",
    _SubscriptionData: "*subscription*",
}


def _fields(model: type[BaseModel]) -> str:
    names: list[str] = []
    skip: set[str] = set()
    for base, label in _SHARED.items():
        if issubclass(model, base):
            names.append(label)
            skip = set(base.model_fields)
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        shown = f"`{field.alias or name}`"
        names.append(shown if field.is_required() else f"{shown}?")
    return ", ".join(names) or "(none)"


def shared_fields() -> str:
    """What the table's abbreviations stand for."""
    return "\n".join(
        f"- {label}: " + ", ".join(f"`{name}`" for name in base.model_fields)
        for base, label in _SHARED.items()
    )


def markdown_table() -> str:
    """The catalogue as the README's table (``?``: a key that may be absent)."""
    rows = ["| type | when | data |", "|---|---|---|"]
    for name in TYPES:
        entry = CATALOGUE[name]
        rows.append(f"| `{name}` | {entry.when} | {_fields(entry.model)} |")
    return "\n".join(rows) + "\n"


def valid_pattern(pattern: str) -> bool:
    """Well formed, and matching at least one type creditd emits."""
    if not _PATTERN.match(pattern):
        return False
    return any(matches(pattern, t) for t in TYPES)


def matches(pattern: str, type: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return type.startswith(pattern[:-1])
    return pattern == type


def subscribed(patterns: list[str], type: str) -> bool:
    return any(matches(p, type) for p in patterns)


# The same rule in SQL, for the dispatcher's fan-out (``p`` a pattern, ``t`` a type).
SQL_MATCH = "(p = '*' OR p = t OR (right(p, 2) = '.*' AND left(t, length(p) - 1) = left(p, -1)))"
