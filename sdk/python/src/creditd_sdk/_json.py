"""Exact JSON: ``Decimal`` amounts go out as JSON numbers with their exact text and come back as
``Decimal`` (never through a binary float)."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

_string = json.JSONEncoder(ensure_ascii=True).encode


def decimal_text(value: Decimal) -> str:
    """The exact text of a finite Decimal as a JSON number (no exponent)."""
    if not value.is_finite():
        raise ValueError(f"amounts must be finite, got {value}")
    return format(value, "f")


def to_amount(value: Decimal | int | str) -> Decimal:
    """An amount argument as a Decimal: Decimal, int or decimal string. Floats are refused."""
    if isinstance(value, bool | float):
        raise TypeError(
            "amounts must be Decimal, int or str (a float cannot hold 0.1 exactly); "
            f"got {type(value).__name__}"
        )
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except ArithmeticError:
            raise ValueError(f"not a decimal amount: {value!r}") from None
    else:
        raise TypeError(f"amounts must be Decimal, int or str, got {type(value).__name__}")
    if not result.is_finite():
        raise ValueError(f"amounts must be finite, got {value!r}")
    return result


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, int):
        out.append(str(int(value)))
    elif isinstance(value, Decimal):
        out.append(decimal_text(value))
    elif isinstance(value, float):
        # Only free-form data (metadata) gets here: amount arguments went through to_amount,
        # which refuses floats. repr() is the shortest text that reads back as the same float.
        if not math.isfinite(value):
            raise ValueError(f"JSON has no {value}")
        out.append(repr(value))
    elif isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware (e.g. datetime.now(UTC))")
        out.append(_string(value.isoformat()))
    elif isinstance(value, uuid.UUID):
        out.append(_string(str(value)))
    elif isinstance(value, Mapping):
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, got {type(key).__name__}")
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(value: Any) -> str:
    """Compact, deterministic JSON text; Decimals as exact numbers."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out)


def loads(text: str | bytes) -> Any:
    """Parse JSON with every fractional number as a Decimal (integers stay ints)."""
    return json.loads(text, parse_float=Decimal)
