"""create_app(): lifespan, middleware, routers, error handlers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from app.admin.router import router as admin_router
from app.analytics.router import router as analytics_router
from app.api_keys.router import router as api_keys_router
from app.auth.exceptions import InsufficientScope, InvalidApiKey, ProjectMismatch
from app.auth.listener import KeyCacheListener
from app.auth.ratelimit import RateLimits
from app.auth.service import KeyCache
from app.core.errors import (
    AppError,
    InternalError,
    PayloadTooLarge,
    RateLimited,
    ValidationFailed,
    problem_responses,
)
from app.core.http import JSONResponse, ProblemResponse, problem_body, problem_from_error
from app.core.logging import configure_logging
from app.core.middleware import BodyLimitMiddleware, RequestContextMiddleware
from app.core.openapi import build_openapi
from app.core.settings import Settings, get_settings
from app.credits.gate import AccountGate
from app.credits.router import router as credits_router
from app.db.engine import create_engine
from app.db.session import Database
from app.docs.router import install_docs
from app.events import openapi as event_webhooks
from app.events.router import router as events_router
from app.health.router import expected_revision
from app.health.router import router as health_router
from app.jobs.router import router as jobs_router
from app.lane import CreditdAPI
from app.ledger.router import router as ledger_router
from app.ledger.slots import ExportSlots
from app.payments.router import router as payments_router
from app.payments.router import webhooks as webhooks_router
from app.plans.router import router as plans_router
from app.pricing.router import evaluate_router
from app.pricing.router import router as models_router
from app.projects.router import router as project_router
from app.promos.router import router as promos_router
from app.providers.router import router as providers_router
from app.routing import TRANSIENT_ERRORS
from app.spend_caps.router import router as spend_caps_router
from app.teams.router import router as teams_router
from app.tiers.router import router as tiers_router
from app.transactions.router import router as transactions_router
from app.users.router import router as users_router
from app.webhooks.router import events_router as event_redelivery_router
from app.webhooks.router import router as webhook_endpoints_router
from app.workers.runner import run_workers

VERSION = "0.1.0"


def _clean_errors(errors: Any) -> list[dict[str, Any]]:
    cleaned = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        msg = str(err.get("msg", ""))
        reason = (err.get("ctx") or {}).get("error")
        if err.get("type") == "json_invalid" and isinstance(reason, str) and reason:
            msg = f"{msg}: {reason}"  # what the parser refused (e.g. an out-of-range number)
        cleaned.append({"loc": loc, "msg": msg, "type": str(err.get("type", ""))})
    return cleaned


async def _app_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    return problem_from_error(request, exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = _clean_errors(exc.errors())
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    body = problem_body(
        request,
        slug="validation_error",
        title="Request validation failed",
        status=422,
        detail=f"{'.'.join(first['loc'])}: {first['msg']}",
        errors=errors,
    )
    return ProblemResponse(body, status_code=422)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    slugs = {
        404: "not_found",
        405: "method_not_allowed",
        400: "bad_request",
        413: "payload_too_large",
    }
    slug = slugs.get(exc.status_code, "http_error")
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
    body = problem_body(
        request,
        slug=slug,
        title=slug.replace("_", " ").capitalize(),
        status=exc.status_code,
        detail=str(exc.detail),
    )
    return ProblemResponse(body, status_code=exc.status_code, headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette's 405 names one route's only)."""
    allowed = {
        method
        for method in _METHODS
        for route in request.app.router.routes
        if route.matches({**request.scope, "method": method})[0] == Match.FULL
    }
    return ", ".join(sorted(allowed))


def serve_app() -> FastAPI:
    """The factory `creditd serve --workers N` hands to uvicorn: settings from the environment."""
    settings = get_settings()
    return create_app(settings, run_background=settings.workers.in_process)


def create_app(settings: Settings | None = None, *, run_background: bool = False) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(level=settings.log.level, json_output=settings.json_logs)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(create_engine(settings.database))
        app.state.db = db
        assert settings.database.url  # create_engine() refused an unset one
        listener = KeyCacheListener(settings.database.url, app.state.key_cache)
        listener.start()
        app.state.key_listener = listener
        background = (
            asyncio.create_task(
                run_workers(db, settings, dispatch_webhooks=settings.webhooks.dispatch_in_process)
            )
            if run_background
            else None
        )
        # Everything built so far lives as long as the process: keep it out of GC scans.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
            await listener.stop()
            await app.state.rate_limits.close()
            await db.dispose()

    app = CreditdAPI(
        title="creditd",
        version=VERSION,
        summary="Credits for AI/LLM products: holds, usage, grants and an exact ledger.",
        lifespan=lifespan,
        default_response_class=JSONResponse,
        license_info={"name": "Apache-2.0", "identifier": "Apache-2.0"},
        # Relative: "Try it out" in /docs calls the server that serves the page, on any port.
        servers=[{"url": "/", "description": "The server that serves this document"}],
        docs_url=None,
        redoc_url=None,
        # No 307 to the path without its trailing slash: `GET /v1/users/` (an empty user id)
        # would be redirected to the user list. A path no route serves is a 404 problem.
        redirect_slashes=False,
        # The OpenAPI `webhooks` section: the events creditd sends (never served).
        webhooks=event_webhooks.router(),
    )
    app.lane_max_body_bytes = settings.api.max_body_bytes
    app.fast_metering = settings.api.fast_metering
    install_docs(app)
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.key_cache = KeyCache(
        settings.api.key_cache_ttl_seconds, settings.api.key_cache_fallback_ttl_seconds
    )
    app.state.rate_limits = RateLimits(settings.api)
    app.state.account_gate = AccountGate(
        limit=settings.api.account_lock_waiters,
        stall_seconds=settings.api.account_lock_stall_seconds,
    )
    app.state.ledger_exports = ExportSlots(
        limit=settings.ledger.max_concurrent_exports,
        per_project=settings.ledger.max_concurrent_exports_per_project,
    )
    app.state.schema_head = expected_revision()
    # The secrets box is built on first use (app/core/secrets.py `Secrets` dependency), so an
    # app that never touches a provider never generates a development key file.
    app.state.secrets = None
    # Added first, so it runs inside the request context: a 413 carries a request id and is
    # logged and counted like any response.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api.max_body_bytes)
    app.add_middleware(RequestContextMiddleware)
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    transient = TRANSIENT_ERRORS
    api_errors = problem_responses(
        InvalidApiKey,
        InsufficientScope,
        ProjectMismatch,
        PayloadTooLarge,
        ValidationFailed,
        RateLimited,
        InternalError,
        *transient,
    )
    # Routes match in order: the metering hot path first.
    for router in (
        transactions_router,
        users_router,
        credits_router,
        teams_router,
        models_router,
        evaluate_router,
        jobs_router,
        tiers_router,
        plans_router,
        payments_router,
        promos_router,
        spend_caps_router,
        analytics_router,
        project_router,
        api_keys_router,
        providers_router,
        events_router,
        event_redelivery_router,
        ledger_router,
        webhook_endpoints_router,
    ):
        app.include_router(router, responses=api_errors)
    app.include_router(
        webhooks_router,
        responses=problem_responses(PayloadTooLarge, ValidationFailed, InternalError, *transient),
    )
    app.include_router(health_router)
    app.include_router(
        admin_router,
        responses=problem_responses(
            PayloadTooLarge, ValidationFailed, RateLimited, InternalError, *transient
        ),
    )
    return app
