"""Exact credit amounts: ``Decimal`` in Python, ``NUMERIC`` in SQL, JSON numbers on the wire."""

from __future__ import annotations

import decimal
import re
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, WithJsonSchema

# Amount arithmetic never rounds silently: 60 significant digits hold any sum of NUMERIC(38, 6)
# values exactly, and a result that would not fit raises instead of losing digits. Set on the
# default context (new threads and tasks) and on this one.
_CONTEXT = decimal.Context(
    prec=60, rounding=decimal.ROUND_HALF_EVEN,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow, decimal.Inexact],
)  # fmt: skip
decimal.DefaultContext.prec = _CONTEXT.prec
decimal.DefaultContext.traps = dict(_CONTEXT.traps)
decimal.setcontext(_CONTEXT.copy())

SCALE = 6
QUANTUM = Decimal(1).scaleb(-SCALE)
MAX_INTEGER_DIGITS = 15
LIMIT = Decimal(10) ** MAX_INTEGER_DIGITS
ZERO = Decimal(0)


def quantize(value: Decimal) -> Decimal:
    """Round half-up to 6 fractional digits (the rule for computed costs)."""
    with decimal.localcontext() as ctx:
        ctx.traps[decimal.Inexact] = False  # this rounding is the intended one
        return value.quantize(QUANTUM, rounding=ROUND_HALF_UP)


# A decimal string: plain digits, no exponent, no spaces, within the amount limits.
DECIMAL_STRING_PATTERN = rf"^-?[0-9]{{1,{MAX_INTEGER_DIGITS}}}(\.[0-9]{{1,{SCALE}}})?$"
_DECIMAL_STRING = re.compile(DECIMAL_STRING_PATTERN)
_ZERO_STRING_PATTERN = r"^0+(\.0+)?$"


def _as_decimal(value: Any) -> Decimal:
    # bool is an int subclass; floats only reach us as NaN/Infinity (numbers parse as Decimal).
    if isinstance(value, str):
        if not _DECIMAL_STRING.match(value):
            raise ValueError(
                f'must be a decimal string like "12.5" (at most {MAX_INTEGER_DIGITS} integer'
                f" and {SCALE} fractional digits, no exponent)"
            )
        value = Decimal(value)
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ValueError("must be a JSON number or a decimal string")
    result = Decimal(value)
    if not result.is_finite():
        raise ValueError("must be a finite number")
    if result.copy_abs() >= LIMIT:  # copy_abs: exact (abs() would round to the context)
        raise ValueError(f"must have at most {MAX_INTEGER_DIGITS} integer digits")
    # Exact test, independent of the context's precision (an input may carry more digits).
    with decimal.localcontext() as ctx:
        ctx.traps[decimal.Inexact] = False
        if result != result.quantize(QUANTUM):
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


_DESCRIPTION = (
    f'Exact decimal amount: a JSON number or a decimal string ("0.1"), at most'
    f" {MAX_INTEGER_DIGITS} integer and {SCALE} fractional digits. Send a string from"
    " languages whose numbers are binary floats."
)


def _amount_schema(*, minimum: int | None = None, exclusive: bool = False) -> dict[str, Any]:
    """One schema for amount inputs: an exact number, or the same value as a decimal string."""
    number: dict[str, Any] = {
        "type": "number",
        "exclusiveMaximum": int(LIMIT),
        "multipleOf": 0.000001,  # the schema's number; values are checked as Decimal
    }
    string: dict[str, Any] = {"type": "string", "pattern": DECIMAL_STRING_PATTERN}
    if minimum is None:
        number["exclusiveMinimum"] = -int(LIMIT)
    else:
        number["exclusiveMinimum" if exclusive else "minimum"] = minimum
        string["pattern"] = DECIMAL_STRING_PATTERN.replace("^-?", "^")
        if exclusive:  # "0" and "0.000" match the digits but are not positive
            string["not"] = {"pattern": _ZERO_STRING_PATTERN}
    return {"anyOf": [number, string], "description": _DESCRIPTION}


def _bounded_utc(value: datetime) -> datetime:
    utc = value.astimezone(UTC)  # raises OverflowError past year 9999 → validation error
    if not 1 <= utc.year <= 9999:
        raise ValueError("must be between years 1 and 9999 in UTC")
    return utc


def _checked_utc(value: datetime) -> datetime:
    try:
        return _bounded_utc(value)
    except OverflowError:
        raise ValueError("must be between years 1 and 9999 in UTC") from None


# A timestamp with a zone, normalised to UTC and storable by PostgreSQL.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_checked_utc)]

Amount = Annotated[Decimal, BeforeValidator(_as_decimal), WithJsonSchema(_amount_schema())]
PositiveAmount = Annotated[
    Decimal,
    BeforeValidator(_positive),
    WithJsonSchema(_amount_schema(minimum=0, exclusive=True)),
]
NonNegativeAmount = Annotated[
    Decimal, BeforeValidator(_non_negative), WithJsonSchema(_amount_schema(minimum=0))
]
# Output amounts: rendered as exact JSON numbers (never through a float) by
# app.core.http.render_json; "format: decimal" tells clients to parse them without rounding.
Money = Annotated[
    Decimal,
    WithJsonSchema(
        {
            "type": "number",
            "format": "decimal",
            "description": f"Exact decimal amount (at most {SCALE} fractional digits)",
        }
    ),
]


def fmt(value: Decimal) -> str:
    """Canonical text of an amount: no exponent, no trailing zeros."""
    if value == 0:
        return "0"
    # Exact whatever the digits (normalize() would round to the context's precision).
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
