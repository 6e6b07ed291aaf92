"""Currencies from the official ISO 4217 table (``iso4217``, never a hand-written one), and the
payment providers' documented exceptions to it (their adapters' ``minor_units`` and
``amount_rule``).

Amounts reach providers in the provider's minor units: ``amount * 10^minor_units`` must be a
whole number, a multiple of the provider's step for the currency, and fit 64-bit integers.
Everything the provider reports back (payments, refunds, disputes) is in the same units.
"""

from __future__ import annotations

import decimal
from decimal import ROUND_HALF_UP, Decimal

from app.integrations import registry
from app.integrations.base import ProviderName, iso_exponent

INT64_MAX = 2**63 - 1

# ISO 4217 codes starting with X are supranational units (gold, SDRs, test and "no currency"
# codes, accounting units) except these francs and guilders/dollars that people actually pay in.
_PAYABLE_X = frozenset({"XAF", "XCD", "XCG", "XOF", "XPF"})


class NotPayable(ValueError):
    """The amount cannot be charged as it is; the message names the rule it breaks."""


def normalize(code: str) -> str | None:
    """The upper-case ISO 4217 code, or None for something that is no payable currency."""
    upper = code.upper()
    if len(upper) != 3 or iso_exponent(upper) is None:
        return None
    if upper.startswith("X") and upper not in _PAYABLE_X:
        return None
    return upper


def minor_units(currency: str, provider: ProviderName) -> int | None:
    """Decimal places of ``currency`` in ``provider``'s amounts; None if it does not take it."""
    return registry.get(provider).minor_units(currency)


def to_minor(amount: Decimal, currency: str, provider: ProviderName) -> int:
    """``amount`` of ``currency`` as ``provider`` takes it, or ``NotPayable``."""
    adapter = registry.get(provider)
    digits = adapter.minor_units(currency)
    if digits is None:
        raise NotPayable(f"{provider} does not take {currency}.")
    scaled = amount.scaleb(digits)
    if scaled != scaled.to_integral_value():
        raise NotPayable(f"{currency} has {digits} decimal places at {provider}.")
    minor = int(scaled)
    if not 0 < minor <= INT64_MAX:
        raise NotPayable("The amount must be positive and fit 64 bits in minor units.")
    rule = adapter.amount_rule(currency)
    if rule is not None and minor % rule.step:
        raise NotPayable(f"{rule.rule}.")
    return minor


def to_major(minor: int, currency: str, provider: ProviderName) -> Decimal:
    """A ``provider`` amount (minor units) of ``currency`` in major units."""
    digits = minor_units(currency, provider)
    if digits is None:
        # Only a currency creditd never sends can get here (a plan priced at the provider in
        # one it does not take); ISO's exponent is the provider's default.
        digits = iso_exponent(currency) or 0
    return Decimal(minor).scaleb(-digits)


def round_to_minor(value: Decimal, currency: str) -> Decimal:
    """``value`` rounded half-up to ``currency``'s ISO 4217 minor units (unchanged for a code
    with none: there is nothing to round to)."""
    digits = iso_exponent(currency.upper())
    if digits is None:
        return value
    with decimal.localcontext() as ctx:
        ctx.traps[decimal.Inexact] = False  # the rounding is the point
        return value.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
