"""The adapters by name: the payments and plans services reach a provider only through here."""

from __future__ import annotations

from app.integrations.base import PaymentProvider, ProviderName


def get(name: ProviderName) -> PaymentProvider:
    """The adapter for ``name``. Imported on first use: an adapter pulls in its SDK, which
    neither the metering hot path nor `creditd --help` should pay for."""
    if name == "stripe":
        from app.integrations.stripe import PROVIDER as stripe  # noqa: PLC0415

        return stripe
    if name == "razorpay":
        from app.integrations.razorpay import PROVIDER as razorpay  # noqa: PLC0415

        return razorpay
    raise ValueError(f"unknown payment provider {name!r}")
