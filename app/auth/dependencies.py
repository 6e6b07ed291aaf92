"""FastAPI dependencies: the caller's Principal, scope checks, the operator token."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends
from starlette.requests import Request

from app.auth.exceptions import (
    InsufficientScope,
    InvalidAdminToken,
    InvalidApiKey,
    ProjectMismatch,
)
from app.auth.ratelimit import RateLimits
from app.auth.service import KeyCache, Principal, admit, authenticate, cached_principal
from app.core.errors import RateLimited
from app.core.middleware import add_response_headers
from app.core.security import constant_time_equals
from app.core.settings import Settings
from app.db.session import Database


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


def client_address(request: Request) -> str:
    """The caller's address (uvicorn resolves X-Forwarded-For from trusted proxies)."""
    return request.client.host if request.client else "unknown"


async def _authenticate(request: Request, cache: KeyCache, raw_key: str | None) -> Principal:
    """Look the key up in the request's transaction, or, before it has one (a keyed POST
    authorises before its transaction opens with the key's lock), in a short one."""
    session = getattr(request.state, "session", None)
    if session is not None:
        return await authenticate(session, cache, raw_key)
    db: Database = request.app.state.db
    async with db.transaction(readonly=True) as own:
        return await authenticate(own, cache, raw_key)


async def get_principal(request: Request) -> Principal:
    """Authenticate once per request (the idempotency layer may already have done it)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is not None:
        return principal
    cache: KeyCache = request.app.state.key_cache
    limits: RateLimits = request.app.state.rate_limits
    raw_key = _bearer(request)
    cached = cached_principal(cache, raw_key)
    try:
        if cached is not None:
            principal = admit(cached)  # unless it expired meanwhile
        else:
            # Not a key this process verified lately: a database lookup, and maybe a guess.
            refused = await limits.auth_blocked(client_address(request))
            if refused is not None:
                raise RateLimited(
                    "Too many failed authentications from this address; retry later.",
                    headers=refused.headers(),
                )
            principal = await _authenticate(request, cache, raw_key)
    except InvalidApiKey:
        await limits.auth_failed(client_address(request))
        raise
    project_header = request.headers.get("x-project-id")
    if project_header is not None and not _same_project(project_header, principal):
        raise ProjectMismatch()
    decision = await limits.hit(principal.key_id, principal.project_id)
    if decision is not None:
        if not decision.allowed:
            raise RateLimited(
                "Rate limit exceeded for this API key or its project; "
                f"retry in {decision.reset_seconds} s.",
                headers=decision.headers(),
            )
        add_response_headers(request, decision.headers())
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
    limits: RateLimits = request.app.state.rate_limits
    address = client_address(request)
    # Before comparing: an address over its failure budget learns nothing from its guesses.
    refused = await limits.auth_blocked(address)
    if refused is not None:
        raise RateLimited(
            "Too many failed authentications from this address; retry later.",
            headers=refused.headers(),
        )
    token = _bearer(request)
    expected = settings.admin_token.get_secret_value() if settings.admin_token else ""
    if not expected or not token or not constant_time_equals(token, expected):
        await limits.auth_failed(address)
        raise InvalidAdminToken()


Operator = Depends(require_operator)
