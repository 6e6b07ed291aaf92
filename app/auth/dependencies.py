"""FastAPI dependencies: the caller's Principal, scope checks, the operator token."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends
from starlette.requests import Request

from app.auth.exceptions import InsufficientScope, InvalidAdminToken, ProjectMismatch
from app.auth.ratelimit import RateLimiter
from app.auth.service import KeyCache, Principal, authenticate
from app.core.errors import RateLimited
from app.core.security import constant_time_equals
from app.core.settings import Settings


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or None


def _same_project(header: str, principal: Principal) -> bool:
    try:
        return uuid.UUID(header.strip()) == principal.project_id
    except ValueError:
        return False


async def get_principal(request: Request) -> Principal:
    """Authenticate once per request (the idempotency layer may already have done it)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is not None:
        return principal
    cache: KeyCache = request.app.state.key_cache
    principal = await authenticate(request.state.session, cache, _bearer(request))
    project_header = request.headers.get("x-project-id")
    if project_header is not None and not _same_project(project_header, principal):
        raise ProjectMismatch()
    limiter: RateLimiter = request.app.state.rate_limiter
    decision = limiter.hit(principal.key_id)
    if not decision.allowed:
        raise RateLimited(
            "Rate limit exceeded for this API key.",
            headers={
                "Retry-After": str(max(decision.reset_seconds, 1)),
                "RateLimit-Limit": str(decision.limit),
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": str(max(decision.reset_seconds, 1)),
            },
        )
    request.state.principal = principal
    return principal


def require_scopes(*scopes: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency admitting keys with ``admin`` or any of ``scopes``."""
    wanted = frozenset(scopes)

    async def dependency(request: Request) -> Principal:
        principal = await get_principal(request)
        check_scopes(principal, wanted)
        return principal

    dependency.__name__ = f"require_{'_'.join(sorted(wanted)) or 'admin'}"
    dependency.required_scopes = wanted  # type: ignore[attr-defined]  # read by the route class
    return dependency


def check_scopes(principal: Principal, wanted: frozenset[str]) -> None:
    if not principal.has_any(wanted):
        needed = " or ".join(sorted({"admin", *wanted}))
        raise InsufficientScope(f"This operation needs a key with scope {needed}.")


# Scope groups of API.md: `write` includes reading; `usage` is the metering subset.
AdminKey = Annotated[Principal, Depends(require_scopes())]
WriteKey = Annotated[Principal, Depends(require_scopes("write"))]
ReadKey = Annotated[Principal, Depends(require_scopes("write", "read"))]
UsageKey = Annotated[Principal, Depends(require_scopes("write", "usage"))]
UserReadKey = Annotated[Principal, Depends(require_scopes("write", "read", "usage"))]


async def require_operator(request: Request) -> None:
    settings: Settings = request.app.state.settings
    token = _bearer(request)
    expected = settings.admin_token.get_secret_value() if settings.admin_token else ""
    if not expected or not token or not constant_time_equals(token, expected):
        raise InvalidAdminToken()


Operator = Depends(require_operator)
