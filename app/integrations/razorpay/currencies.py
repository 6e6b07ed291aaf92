"""Razorpay's minor units: ISO 4217 ("pass the amount in the currency subunit",
https://razorpay.com/docs/payments/international-payments/#supported-currencies), with one
documented restriction.

https://razorpay.com/docs/api/orders/create/ (``amount``): for three-decimal currencies (KWD,
BHD, OMR are its examples) 295.991 must be sent as 295990, i.e. the last digit is 0. The SDK
itself documents nothing about currencies.
"""

from __future__ import annotations

from app.integrations.base import AmountRule, iso_exponent


def minor_units(currency: str) -> int | None:
    return iso_exponent(currency)


def amount_rule(currency: str) -> AmountRule | None:
    if iso_exponent(currency) == 3:
        return AmountRule(
            10, f"Razorpay takes {currency} only to 2 decimal places (the 3rd must be 0)"
        )
    return None
