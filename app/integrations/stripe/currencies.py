"""Stripe's minor units: ISO 4217 except the cases its docs list.

https://docs.stripe.com/currencies#minor-units (zero-decimal, three-decimal and special cases).
Stripe treats every currency it does not list as two-decimal, so a currency whose ISO exponent
is neither 2 nor covered by a list below (IQD, LYD, CLF, UYI, UYW) is refused rather than
guessed: sending it would charge a multiple of the intended amount.
"""

from __future__ import annotations

from app.integrations.base import AmountRule, iso_exponent

# https://docs.stripe.com/currencies#zero-decimal. MGA is 2 in ISO 4217 but 0 here.
ZERO_DECIMAL = frozenset(
    {
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "JPY",
        "KMF",
        "KRW",
        "MGA",
        "PYG",
        "RWF",
        "UGX",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    }
)
# https://docs.stripe.com/currencies#three-decimal: the last digit must be 0.
THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})
# https://docs.stripe.com/currencies#special-cases: ISK and UGX (zero-decimal) go on the wire as
# two-decimal amounts whose decimals are 00.
TWO_DECIMAL_ON_THE_WIRE = frozenset({"ISK", "UGX"})
# Same page: HUF and TWD are two-decimal, but Stripe takes (and pays out) whole units only.
WHOLE_UNITS = frozenset({"HUF", "TWD"}) | TWO_DECIMAL_ON_THE_WIRE


def minor_units(currency: str) -> int | None:
    if iso_exponent(currency) is None:
        return None
    if currency in TWO_DECIMAL_ON_THE_WIRE:
        return 2
    if currency in ZERO_DECIMAL:
        return 0
    if currency in THREE_DECIMAL:
        return 3
    return 2 if iso_exponent(currency) == 2 else None


def amount_rule(currency: str) -> AmountRule | None:
    if currency in WHOLE_UNITS:
        return AmountRule(100, f"Stripe takes {currency} only in whole units (no decimals)")
    if currency in THREE_DECIMAL:
        return AmountRule(
            10, f"Stripe takes {currency} only to 2 decimal places (the 3rd must be 0)"
        )
    return None
