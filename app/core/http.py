"""HTTP plumbing shared by every route: exact-decimal JSON in and out, problem+json rendering."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse as StarletteJSONResponse

from app.core.errors import AppError
from app.core.freeform import INT64_MAX, INT64_MIN
from app.core.money import fmt

_ORJSON_OPTS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(fmt(value))
    if isinstance(value, uuid.UUID):  # asyncpg's own UUID subclass, which orjson does not know
        return str(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="python", by_alias=True)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def render_json(content: Any) -> bytes:
    """JSON bytes with Decimals as exact numbers (never through a float).

    Never fails on JSON that PostgreSQL gave back: integers beyond 64 bits and nesting past
    orjson's depth limit (rows stored before the free-form rules of app.core.freeform) take
    a slower path that writes them exactly.
    """
    if isinstance(content, BaseModel):
        content = content.model_dump(mode="python", by_alias=True)
    try:
        return orjson.dumps(content, default=_default, option=_ORJSON_OPTS)
    except orjson.JSONEncodeError:
        return _render_tolerant(content)


_U64_MAX = 2**64 - 1  # orjson writes integers in [-2**63, 2**64 - 1]


def _leaf(value: Any) -> bytes:
    if isinstance(value, int) and not -(2**63) <= value <= _U64_MAX:
        # Exact number text, embedded as is (bool is an int within range: never here).
        return orjson.dumps(orjson.Fragment(str(value)))
    return orjson.dumps(value, default=_default, option=_ORJSON_OPTS)


def _render_tolerant(content: Any) -> bytes:
    """Compact JSON like orjson's, built without recursion: any depth, any integer."""
    parts: list[bytes] = []
    # Open containers: (iterator over the rest, closing bracket, is a dict, first item next).
    stack: list[tuple[Any, bytes, bool, list[bool]]] = []
    value, have_value = content, True
    while True:
        if have_value:
            if isinstance(value, BaseModel):
                value = value.model_dump(mode="python", by_alias=True)
            if isinstance(value, dict):
                parts.append(b"{")
                stack.append((iter(value.items()), b"}", True, [True]))
            elif isinstance(value, list | tuple):
                parts.append(b"[")
                stack.append((iter(value), b"]", False, [True]))
            else:
                parts.append(_leaf(value))
            have_value = False
        if not stack:
            return b"".join(parts)
        items, close, is_dict, first = stack[-1]
        item: Any = next(items, _END)
        if item is _END:
            parts.append(close)
            stack.pop()
            continue
        if not first[0]:
            parts.append(b",")
        first[0] = False
        if is_dict:
            key, value = item
            if not isinstance(key, str):
                raise TypeError(f"dict key must be str, not {type(key).__name__}")
            parts.append(orjson.dumps(key) + b":")
        else:
            value = item
        have_value = True


_END = object()


class JSONResponse(StarletteJSONResponse):
    """Starlette's JSONResponse with exact-decimal rendering.

    It must stay a subclass: FastAPI publishes a route's ``response_model`` in the OpenAPI
    document only when the route's response class is a ``JSONResponse``.
    """

    def render(self, content: Any) -> bytes:
        return render_json(content)


class ProblemResponse(JSONResponse):
    media_type = "application/problem+json"


_MAX_EXPONENT = 1000


def _storable(value: Any) -> bool:
    """Whether PostgreSQL (text, jsonb, numeric) can store every value of a parsed body.

    Iterative: the parser already accepted the nesting, this walk must not be the one to fail.
    """
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node or not (node.isascii() or _encodes(node)):
                return False
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int):
            if not INT64_MIN <= node <= INT64_MAX:
                return False
        elif isinstance(node, Decimal):
            if node.is_finite() and abs(node.adjusted()) > _MAX_EXPONENT:
                return False
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        # floats: only NaN/Infinity get here; the schemas and app.core.freeform refuse them
    return True


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates ("\ud800")
        return False
    return True


# What json.loads(body, parse_float=Decimal) does, without a new decoder for every body.
_DECIMAL_JSON = json.JSONDecoder(parse_float=Decimal)


class DecimalRequest(Request):
    """A request whose JSON numbers with a fraction or exponent parse as ``Decimal``, and whose
    body is refused (422) when it holds what PostgreSQL cannot store: NUL characters, lone
    surrogates, integers outside the signed 64-bit range, exponents beyond 1000, nesting
    deeper than the parser goes."""

    validated: Any = None  # the body's model, when the metering lane validated it already

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                parsed = _DECIMAL_JSON.decode(
                    body.decode(json.detect_encoding(body), "surrogatepass")
                )
            except json.JSONDecodeError:
                raise
            except RecursionError:
                # Nested deeper than the parser goes (about 1000 levels): a malformed body for
                # this API (free-form values may nest 32 levels), not a 400 or a 500.
                raise json.JSONDecodeError("nested too deeply", "", 0) from None
            except (ValueError, ArithmeticError) as exc:
                # Numbers beyond Decimal's or int's limits, invalid UTF-8: still a malformed
                # body (FastAPI answers 422 for JSONDecodeError, a generic 400 otherwise).
                reason = f"unparseable JSON: {type(exc).__name__}"
                raise json.JSONDecodeError(reason, "", 0) from exc
            if not _storable(parsed):
                reason = "unsupported value: NUL, lone surrogate, or number out of range"
                raise json.JSONDecodeError(reason, "", 0)
            self._json = parsed
        return self._json


def problem_body(
    request: Request,
    *,
    slug: str,
    title: str,
    status: int,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"/errors/{slug}",
        "code": slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "request_id": request.scope.get("state", {}).get("request_id"),
    }
    if errors is not None:
        body["errors"] = errors
    if extra:
        body.update(extra)
    return body


def problem_from_error(request: Request, exc: AppError) -> ProblemResponse:
    body = problem_body(
        request,
        slug=exc.slug,
        title=exc.title,
        status=exc.status,
        detail=exc.detail,
        extra=exc.extra,
    )
    return ProblemResponse(body, status_code=exc.status, headers=exc.headers)
