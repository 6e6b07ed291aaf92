"""HTTP plumbing shared by every route: exact-decimal JSON in and out, problem+json rendering."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

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


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return render_json(content)


class ProblemResponse(JSONResponse):
    media_type = "application/problem+json"


class DecimalRequest(Request):
    """A request whose JSON numbers with a fraction or exponent parse as ``Decimal``."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(body, parse_float=Decimal)
            except json.JSONDecodeError:
                raise
            except (ValueError, ArithmeticError) as exc:
                # Numbers beyond Decimal's or int's limits, invalid UTF-8: still a malformed
                # body (FastAPI answers 422 for JSONDecodeError, a generic 400 otherwise).
                reason = f"unparseable JSON: {type(exc).__name__}"
                raise json.JSONDecodeError(reason, "", 0) from exc
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
