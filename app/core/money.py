"""Exact credit amounts: ``Decimal`` in Python, ``NUMERIC`` in SQL, JSON numbers on the wire."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

SCALE = 6
QUANTUM = Decimal(1).scaleb(-SCALE)
MAX_INTEGER_DIGITS = 15
LIMIT = Decimal(10) ** MAX_INTEGER_DIGITS
ZERO = Decimal(0)


def quantize(value: Decimal) -> Decimal:
    """Round half-up to 6 fractional digits (the rule for computed costs)."""
    return value.quantize(QUANTUM, rounding=ROUND_HALF_UP)


def _as_decimal(value: Any) -> Decimal:
    # bool is an int subclass; floats only reach us as NaN/Infinity (numbers parse as Decimal).
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ValueError("must be a JSON number")
    result = Decimal(value)
    if not result.is_finite():
        raise ValueError("must be a finite number")
    if abs(result) >= LIMIT:
        raise ValueError(f"must have at most {MAX_INTEGER_DIGITS} integer digits")
    exponent = result.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -SCALE:
        raise ValueError(f"must have at most {SCALE} fractional digits")
    return result


def _positive(value: Any) -> Decimal:
    result = _as_decimal(value)
    if result <= 0:
        raise ValueError("must be greater than 0")
    return result


def _non_negative(value: Any) -> Decimal:
    result = _as_decimal(value)
    if result < 0:
        raise ValueError("must be greater than or equal to 0")
    return result


_SCHEMA = {"type": "number", "description": "Exact decimal, at most 6 fractional digits"}

Amount = Annotated[Decimal, BeforeValidator(_as_decimal), WithJsonSchema(_SCHEMA)]
PositiveAmount = Annotated[
    Decimal, BeforeValidator(_positive), WithJsonSchema({**_SCHEMA, "exclusiveMinimum": 0})
]
NonNegativeAmount = Annotated[
    Decimal, BeforeValidator(_non_negative), WithJsonSchema({**_SCHEMA, "minimum": 0})
]
# Output amounts: rendered as exact JSON numbers by app.core.http.render_json.
Money = Annotated[Decimal, WithJsonSchema({"type": "number"})]


def fmt(value: Decimal) -> str:
    """Canonical text of an amount: no exponent, no trailing zeros."""
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    return text
