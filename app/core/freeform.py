"""Free-form JSON (metadata, tier features): the one rule for what may be stored and read back.

A free-form value goes into a ``jsonb`` column and comes back out through every read endpoint,
so it is accepted only when that round trip is exact and cheap:

- at most ``MAX_BYTES`` as compact JSON and at most ``MAX_DEPTH`` containers deep (the object
  itself is level 1), so no list page grows without bound and no encoder hits its depth limit;
- numbers finite (``NaN``/``Infinity`` are not JSON, and jsonb would store ``null``);
- a number without a fraction, however it is written (``7``, ``1e5``, ``100.0``), inside the
  signed 64-bit range. ``render_json`` writes such a number as an integer (it drops trailing
  zeros) and jsonb gives it back as one: ``1e20`` or ``100000000000000000000.0`` would come
  back as ``100000000000000000000``, an integer that JSON encoders need not accept. A number
  with a fraction is stored and read back with its digits, so it reads back equal.

The body parser (``app.core.http.DecimalRequest``) has already refused what PostgreSQL cannot
store at all (NUL, lone surrogates, exponents beyond 1000, integers beyond 64 bits).
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import orjson
from pydantic import AfterValidator, Field

from app.core.errors import InvalidRequest
from app.core.money import fmt

MAX_BYTES = 16 * 1024
MAX_DEPTH = 32
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

LIMITS = (
    f"At most {MAX_BYTES} bytes as compact UTF-8 JSON and {MAX_DEPTH} levels of nesting (the "
    "object itself is level 1); numbers must be finite, and numbers without a fraction "
    f"(however written: 7, 1e5, 100.0) within the signed 64-bit range [{INT64_MIN}, "
    f"{INT64_MAX}]."
)


def _pointer(path: list[str | int]) -> str:
    """RFC 6901 JSON pointer of a place inside the value."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path) or "the top"


def _integral(value: Decimal) -> bool:
    """Whether a finite Decimal has no fraction (exact, whatever its digits or exponent)."""
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    return exponent >= 0 or not any(digits[exponent:])


def _number_problem(value: Any) -> str | None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    if isinstance(value, int):
        integral: int | Decimal = value
    elif isinstance(value, float):  # JSON parsing yields floats only for NaN and Infinity
        if not math.isfinite(value):
            return "is not a finite number"
        return _number_problem(Decimal(repr(value)))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            return "is not a finite number"
        if not _integral(value):
            return None  # a fraction: written, stored and read back with its digits
        integral = value
    else:
        return None  # not JSON: pydantic or the encoder reports it
    # Exact comparisons (Decimal against int never rounds).
    if not INT64_MIN <= integral <= INT64_MAX:
        return "is an integer outside the signed 64-bit range"
    return None


def _leaf_size(value: Any) -> int:
    """Bytes of a leaf as ``render_json`` writes it."""
    if isinstance(value, str):
        return len(orjson.dumps(value))
    if value is None or value is True:
        return 4
    if value is False:
        return 5
    if isinstance(value, int):
        return len(str(value))
    if isinstance(value, Decimal):
        return len(fmt(value))
    return len(orjson.dumps(value, default=str))


def freeform_problem(value: Any) -> str | None:
    """Why ``value`` cannot be stored as free-form JSON, or None when it can.

    One pass without recursion that stops at the first problem, so any nesting is measured
    safely and an oversized value costs no more than the limit to reject.
    """
    size = 0
    stack: list[tuple[Any, int, list[str | int]]] = [(value, 1, [])]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict | list):
            if depth > MAX_DEPTH:
                return f"is nested deeper than {MAX_DEPTH} levels (at {_pointer(path)})"
            size += 1 + max(len(node), 1)  # brackets and separators
            if isinstance(node, dict):
                for key, item in node.items():
                    size += _leaf_size(key) + 1  # the key and its colon
                    stack.append((item, depth + 1, [*path, key]))
            else:
                stack.extend((item, depth + 1, [*path, i]) for i, item in enumerate(node))
        else:
            problem = _number_problem(node)
            if problem is not None:
                return f"the number at {_pointer(path)} {problem}"
            size += _leaf_size(node)
        if size > MAX_BYTES:
            return f"is larger than {MAX_BYTES} bytes as JSON"
    return None


def check_freeform(value: Any) -> Any:
    """Pydantic validator: ``value`` unchanged, or a ValueError that names the problem."""
    if not value:  # {} and [] are the common case on the hot path
        return value
    problem = freeform_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


class FreeformOverLimits(InvalidRequest):
    title = "Free-form JSON over its limits"


def require_freeform(value: Any, *, what: str, loc: tuple[str, ...]) -> None:
    """The same rule for a value the service builds from accepted parts (a merge): 422 naming
    ``loc`` when the result breaks it."""
    problem = freeform_problem(value)
    if problem is not None:
        raise FreeformOverLimits(f"{what} {problem}", loc=loc)


# The rule and its documentation, for ``Annotated`` types of free-form objects. A key limit,
# if any, goes before them (``Field(max_length=...)``), so that the published schema says
# ``maxProperties``: Metadata in app/users/schemas.py, features in app/tiers/schemas.py.
FREEFORM_RULE = AfterValidator(check_freeform)
FREEFORM_DOC = Field(
    description=f"Free-form JSON object. {LIMITS}",
    json_schema_extra={"x-max-bytes": MAX_BYTES, "x-max-depth": MAX_DEPTH},
)
