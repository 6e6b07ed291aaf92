"""Currencies from Babel's CLDR data (never a hand-written precision table).

Amounts reach providers in minor units: ``amount * 10^precision`` must be a whole number that
fits the providers' 64-bit integers.
"""

from __future__ import annotations

import functools
from decimal import Decimal

from babel.numbers import get_currency_precision, list_currencies

INT64_MAX = 2**63 - 1

# ISO 4217 codes starting with X are supranational units (gold, SDRs, test and "no currency"
# codes) except these francs and dollars that people actually pay in.
_PAYABLE_X = frozenset({"XAF", "XCD", "XCG", "XOF", "XPF"})


@functools.cache
def _iso_codes() -> frozenset[str]:
    return frozenset(list_currencies())


def normalize(code: str) -> str | None:
    """The upper-case ISO 4217 code, or None for something that is no payable currency."""
    upper = code.upper()
    if len(upper) != 3 or upper not in _iso_codes():
        return None
    if upper.startswith("X") and upper not in _PAYABLE_X:
        return None
    return upper


def precision(currency: str) -> int:
    return int(get_currency_precision(currency))


def to_minor(amount: Decimal, currency: str) -> int | None:
    """``amount`` in minor units; None when it is not a whole number of them or exceeds int64."""
    scaled = amount.scaleb(precision(currency))
    if scaled != scaled.to_integral_value():
        return None
    minor = int(scaled)
    return minor if 0 <= minor <= INT64_MAX else None


def to_major(minor: int, currency: str) -> Decimal:
    return Decimal(minor).scaleb(-precision(currency))
