"""Every table, imported so that ``Base.metadata`` is complete (Alembic and tests rely on it)."""

from app.db.models.account import Account
from app.db.models.allocation import Allocation
from app.db.models.api_key import ApiKey
from app.db.models.event import Event
from app.db.models.grant import Grant
from app.db.models.idempotency_key import IdempotencyKey
from app.db.models.job import Job
from app.db.models.ledger_entry import LedgerEntry
from app.db.models.model_price import ModelPrice
from app.db.models.payment import Payment
from app.db.models.plan import Plan
from app.db.models.project import Project
from app.db.models.promo import Promo, PromoRedemption
from app.db.models.provider_account import ProviderAccount
from app.db.models.provider_event import ProviderEvent
from app.db.models.refund import Refund
from app.db.models.spend_cap import SpendCap
from app.db.models.subscription import Subscription
from app.db.models.team import Team, TeamMember, TeamMemberSpendCap, UsageTeamDaily
from app.db.models.tier import Tier
from app.db.models.transaction import Transaction
from app.db.models.usage_daily import (
    UsageDaily,
    UsageModelDay,
    UsageRollup,
    UsageUserDay,
    UsageUserWeek,
)
from app.db.models.user import User
from app.db.models.webhook import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookFanoutCursor,
)

__all__ = [
    "Account",
    "Allocation",
    "ApiKey",
    "Event",
    "Grant",
    "IdempotencyKey",
    "Job",
    "LedgerEntry",
    "ModelPrice",
    "Payment",
    "Plan",
    "Project",
    "Promo",
    "PromoRedemption",
    "ProviderAccount",
    "ProviderEvent",
    "Refund",
    "SpendCap",
    "Subscription",
    "Team",
    "TeamMember",
    "TeamMemberSpendCap",
    "Tier",
    "Transaction",
    "UsageDaily",
    "UsageModelDay",
    "UsageRollup",
    "UsageTeamDaily",
    "UsageUserDay",
    "UsageUserWeek",
    "User",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookFanoutCursor",
]
