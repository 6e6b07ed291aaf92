"""Razorpay behind ``PaymentProvider``: Payment Links (top-ups) and Subscriptions, through the
official ``razorpay`` SDK; webhooks verified over the raw body with HMAC-SHA256."""

from app.integrations.base import PaymentProvider
from app.integrations.razorpay.provider import NotesTooLarge, RazorpayProvider

PROVIDER: PaymentProvider = RazorpayProvider()

__all__ = ["PROVIDER", "NotesTooLarge", "RazorpayProvider"]
