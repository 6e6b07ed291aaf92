"""Stripe behind the ``PaymentProvider`` seam (official ``stripe`` SDK, asynchronous calls)."""

from app.integrations.base import PaymentProvider
from app.integrations.stripe.provider import StripeProvider

PROVIDER: PaymentProvider = StripeProvider()

__all__ = ["PROVIDER", "StripeProvider"]
