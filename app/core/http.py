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
    """JSON bytes with Decimals as exact numbers (never through a float)."""
    if isinstance(content, BaseModel):
        content = content.model_dump(mode="python", by_alias=True)
    return orjson.dumps(content, default=_default, option=_ORJSON_OPTS)


class JSONResponse(StarletteJSONResponse):
    """Starlette's JSONResponse with exact-decimal rendering.

    It must stay a subclass: FastAPI publishes a route's ``response_model`` in the OpenAPI
    document only when the route's response class is a ``JSONResponse``.
    """

    def render(self, content: Any) -> bytes:
        return render_json(content)


class ProblemResponse(JSONResponse):
    media_type = "application/problem+json"


_MAX_INT = 2**63 - 1
_MAX_EXPONENT = 1000


def _storable(value: Any) -> bool:
    """Whether PostgreSQL (text, jsonb, numeric) can store every value of a parsed body."""
    if isinstance(value, str):
        return "\x00" not in value and (value.isascii() or _encodes(value))
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return -_MAX_INT <= value <= _MAX_INT
    if isinstance(value, Decimal):
        return not value.is_finite() or abs(value.adjusted()) <= _MAX_EXPONENT
    if isinstance(value, list):
        return all(_storable(v) for v in value)
    if isinstance(value, dict):
        return all(_storable(k) and _storable(v) for k, v in value.items())
    return True  # floats: only NaN/Infinity get here; the schemas refuse them


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates ("\ud800")
        return False
    return True


class DecimalRequest(Request):
    """A request whose JSON numbers with a fraction or exponent parse as ``Decimal``, and whose
    body is refused (422) when it holds what PostgreSQL cannot store: NUL characters, lone
    surrogates, integers beyond 64 bits, exponents beyond 1000."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                parsed = json.loads(body, parse_float=Decimal)
            except json.JSONDecodeError:
                raise
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
