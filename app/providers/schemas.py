from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.integrations.base import ProviderName

MAX_GRACE_SECONDS = 7 * 86400

_GRACE = Field(
    default=None,
    ge=0,
    le=MAX_GRACE_SECONDS,
    description="When `webhook_secret` replaces a different one, how long (seconds, at most 7 "
    "days) the old one still verifies; 0 stops it at once. Default: the server's "
    "`CREDITD_PAYMENTS__WEBHOOK_SECRET_GRACE_SECONDS` (24 h)",
)
# Secrets are single tokens: no whitespace, so a pasted newline is refused rather than stored.
_PRINTABLE = r"[\x21-\x7e]+"
StripeSecretKey = Annotated[
    str,
    Field(
        min_length=8,
        max_length=255,
        pattern=r"^(sk|rk)_[A-Za-z0-9_]+$",
        description="Secret (`sk_…`) or restricted (`rk_…`) API key",
        examples=["sk_test_51Hx…"],
    ),
]
StripeWebhookSecret = Annotated[
    str,
    Field(
        min_length=8,
        max_length=255,
        pattern=r"^whsec_[A-Za-z0-9+/=_-]+$",
        description="The webhook endpoint's signing secret (`whsec_…`)",
    ),
]
RazorpayKeyId = Annotated[
    str,
    Field(
        min_length=8,
        max_length=255,
        pattern=r"^rzp_[A-Za-z0-9_]+$",
        description="API key id (`rzp_test_…` / `rzp_live_…`)",
    ),
]
RazorpaySecret = Annotated[str, Field(min_length=8, max_length=255, pattern=f"^{_PRINTABLE}$")]


class StripeAccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    secret_key: StripeSecretKey
    webhook_secret: StripeWebhookSecret
    webhook_secret_grace_seconds: int | None = _GRACE


class RazorpayAccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key_id: RazorpayKeyId
    key_secret: RazorpaySecret = Field(description="API key secret")
    webhook_secret: RazorpaySecret = Field(
        description="The secret set on the webhook in the Razorpay dashboard (8+ characters)"
    )
    webhook_secret_grace_seconds: int | None = _GRACE


class ProviderAccountOut(BaseModel):
    """A provider account with its secrets masked: a known prefix and the last 4 characters
    (only when at least 12 more remain), never the whole secret."""

    provider: ProviderName
    key_id: str | None = Field(description="Razorpay key id (not a secret); null for Stripe")
    secret_key: str = Field(
        description="The API secret, masked: Stripe `secret_key` or Razorpay `key_secret`",
        examples=["sk_test_…abcd"],
    )
    webhook_secret: str = Field(description="The webhook secret, masked", examples=["whsec_…wxyz"])
    previous_webhook_secret_expires_at: datetime | None = Field(
        description="Until when the replaced webhook secret still verifies; null when none does"
    )
    livemode: bool = Field(description="Live keys (`sk_live_…`, `rzp_live_…`), not test keys")
    created_at: datetime
    updated_at: datetime


class ProviderAccountList(BaseModel):
    """At most one account per provider: never paginated (``has_more`` is always false)."""

    data: list[ProviderAccountOut]
    has_more: bool = False
    next_cursor: str | None = None
