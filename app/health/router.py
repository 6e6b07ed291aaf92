"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic.config import Config
from alembic.script import ScriptDirectory
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from app.core.http import JSONResponse
from app.core.paths import ALEMBIC_INI
from app.core.settings import Settings
from app.db.session import Database
from app.webhooks import gauges

# Probes and metrics need no credentials (an empty security list says so explicitly).
router = APIRouter(tags=["service"])
_PUBLIC: dict[str, Any] = {"security": []}


class Health(BaseModel):
    status: str
    detail: str | None = None


def expected_revision() -> str | None:
    return ScriptDirectory.from_config(Config(str(ALEMBIC_INI))).get_current_head()


@router.get(
    "/healthz",
    operation_id="service_healthz",
    summary="Liveness (no I/O)",
    response_model=Health,
    openapi_extra=_PUBLIC,
)
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    operation_id="service_readyz",
    summary="Readiness: database reachable and schema at head",
    response_model=Health,
    responses={503: {"model": Health, "description": "Not ready"}},
    openapi_extra=_PUBLIC,
)
async def readyz(request: Request) -> Response:
    """503 while the database is unreachable (a round trip on a pooled connection, bounded by
    the connect timeout) or behind the code's migrations. Container health checks use it."""
    db: Database = request.app.state.db
    settings: Settings = request.app.state.settings
    try:
        async with asyncio.timeout(settings.database.connect_timeout_seconds):
            async with db.engine.connect() as conn:
                result = await conn.execute(text("SELECT version_num FROM alembic_version"))
                current = result.scalar()
    except Exception as exc:
        detail = "TimeoutError" if isinstance(exc, TimeoutError) else type(exc).__name__
        return JSONResponse(Health(status="unavailable", detail=detail), status_code=503)
    head = request.app.state.schema_head
    if current != head:
        return JSONResponse(
            Health(status="migrations_pending", detail=f"database at {current}, code at {head}"),
            status_code=503,
        )
    return JSONResponse(Health(status="ok"))


@router.get(
    "/metrics",
    operation_id="service_metrics",
    summary="Prometheus metrics",
    response_class=Response,
    openapi_extra=_PUBLIC,
    responses={
        200: {
            "content": {
                CONTENT_TYPE_LATEST: {
                    "schema": {"type": "string", "description": "Prometheus text format 1.0.0"}
                }
            },
            "description": "Prometheus text format",
        }
    },
)
async def metrics(request: Request) -> Response:
    # The webhook queue gauges are read now, bounded by a short timeout (app/webhooks/gauges.py).
    await gauges.refresh(request.app.state.db)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
